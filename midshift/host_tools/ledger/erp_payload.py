"""What of a booked transaction leaves the ledger (issue 20): the ERP's and the feed's JSON.

Built from an allow-list, never by removing fields from the event: a field the gateway
adds tomorrow stays home until someone adds it here. Card data never leaves: a tender's
``pan`` goes out only when ``till_txn.masked_pan_ok`` accepts it as masked (first six
and last four at most), otherwise it is dropped; nothing else of a card goes but the
scheme and the authorization state.

Levels (``--erp-sanitize``):

- ``lines``: the transaction with its lines (sku, quantity, prices) and its tenders
  (kind, amount, and for a card the scheme, the masked PAN and the authorization).
- ``totals``: no lines and no tender details, only the total per tender kind
  (``cash``, ``card``, ``voucher``).

The same document is built twice, once here in Python (``payload``: PostgreSQL, and the
reference) and once in SQLite's SQL (``sqlite_doc``: a drain of 100,000 transactions at
the ERP's pace cannot afford parsing and encoding each in Python, and SQLite does it
without holding the interpreter's lock); ``tests/unit/test_erp_payload.py`` holds the two
to the same output.

Both carry the identity (``idempotency_key`` = ``gateway/epoch/seq``, the same one the
``Idempotency-Key`` header has), the store, till, till number, business day, type,
currency, total, receipt, whether it was taken offline, the acceptance and ledger times.
"""

from __future__ import annotations

import json
from typing import Any

from midshift.firmware.core.till_txn import masked_pan_ok

LEVELS = ("lines", "totals")
_scan = json.JSONDecoder().scan_once  # json.loads without its per-call checks (a drain
# parses 25,000 bodies a second; the body was parsed once already, at booking)
LINE_FIELDS = ("sku", "qty_milli", "unit_price", "discount")


def identity(gateway: str, epoch: str, seq: int) -> str:
    """The transaction's identity in the ledger, as the ERP's idempotency key."""
    return f"{gateway}/{epoch}/{seq}"


_masked: dict[str, bool] = {}  # masked_pan_ok per PAN seen: a drain sees the same ones


def _masked_ok(pan: str) -> bool:
    ok = _masked.get(pan)
    if ok is None:
        if len(_masked) > 50_000:
            _masked.clear()
        ok = _masked[pan] = masked_pan_ok(pan)
    return ok


def _tender(t: Any) -> dict[str, Any]:
    if not isinstance(t, dict):
        return {"kind": None, "amount": None}
    kind = t.get("kind")
    if kind != "card":
        return {"kind": kind, "amount": t.get("amount")}
    out = {"kind": kind, "amount": t.get("amount"), "scheme": t.get("scheme"),
           "auth": t.get("auth")}
    pan = t.get("pan")
    if isinstance(pan, str) and _masked_ok(pan):
        out["pan"] = pan
    return out


def payload(row: dict[str, Any], level: str = "lines") -> dict[str, Any]:
    """The sanitized document of an ``outbox.Outbox.claim`` row at ``level``."""
    doc: dict[str, Any] = {
        "idempotency_key": identity(row["gateway"], row["epoch"], row["seq"]),
        "store": row["store"], "till": row["till"], "till_seq": row["till_seq"],
        "business_day": row["business_day"], "type": row["type"],
        "currency": row["currency"], "total": row["total"], "receipt": row["receipt"],
        "offline": bool(row["offline"]), "accepted_ms": row["accepted_ms"],
        "ledger_ms": row["ledger_ms"], "tz": row["tz"],
        "original": None if row["original"] is None else json.loads(row["original"])}
    if level == "totals":
        doc["tenders"] = {"cash": row["cash"], "card": row["card"], "voucher": row["voucher"]}
        return doc
    txn = _scan(row["body"], 0)[0]["d"]["txn"]  # booked, so it parsed as a transaction once
    doc["lines"] = [{k: line.get(k) for k in LINE_FIELDS} if isinstance(line, dict)
                    else dict.fromkeys(LINE_FIELDS) for line in txn.get("lines", ())]
    doc["tenders"] = [_tender(t) for t in txn.get("tenders", ())]
    return doc


# masked_pan_ok in SQL: 13 to 19 characters, only digits and '*', at least four '*', at
# most ten digits shown, the last four digits.
_MASKED_SQL = ("(typeof(p) = 'text' AND length(p) BETWEEN 13 AND 19 AND p NOT GLOB "
               "'*[^0-9*]*' AND length(p) - length(replace(p, '*', '')) >= 4 AND "
               "length(replace(p, '*', '')) <= 10 AND substr(p, -4) GLOB '[0-9][0-9][0-9][0-9]')")


def sqlite_doc(level: str = "lines") -> str:
    """A SQLite expression over ``transactions t`` joined with ``events e``: ``payload``'s
    document as JSON text (keys in the same order). The tenders' ``LIMIT -1`` keeps their
    subquery from being flattened into ``json_group_array``, which read each field again
    for every mention in the masked-PAN test (a seventh of a drain's document cost)."""
    head = ("'idempotency_key', t.gateway || '/' || t.epoch || '/' || t.seq, "
            "'store', t.store, 'till', t.till, 'till_seq', t.till_seq, "
            "'business_day', t.business_day, 'type', t.type, 'currency', t.currency, "
            "'total', t.total, 'receipt', t.receipt, "
            "'offline', json(CASE WHEN t.offline THEN 'true' ELSE 'false' END), "
            "'accepted_ms', t.accepted_ms, 'ledger_ms', t.ledger_ms, 'tz', t.tz, "
            "'original', json(t.original)")
    if level == "totals":
        return (f"json_object({head}, 'tenders', json_object('cash', t.cash, 'card', t.card, "
                "'voucher', t.voucher))")
    line = ", ".join(f"'{k}', CASE WHEN l.type = 'object' THEN json_extract(l.value, '$.{k}') "
                     "END" for k in LINE_FIELDS)
    card = ("'kind', x.kind, 'amount', x.amount, 'scheme', x.scheme, 'auth', x.auth")
    return (f"json_object({head}, "
            f"'lines', (SELECT json_group_array(json_object({line})) "
            "FROM json_each(e.body, '$.d.txn.lines') l), "
            "'tenders', (SELECT json_group_array(CASE WHEN x.kind = 'card' THEN CASE WHEN "
            f"{_MASKED_SQL} THEN json_object({card}, 'pan', p) ELSE json_object({card}) END "
            "ELSE json_object('kind', x.kind, 'amount', x.amount) END) FROM (SELECT "
            + ", ".join(f"CASE WHEN v.type = 'object' THEN json_extract(v.value, '$.{k}') END "
                        f"AS {a}" for k, a in (("kind", "kind"), ("amount", "amount"),
                                               ("scheme", "scheme"), ("auth", "auth"),
                                               ("pan", "p")))
            + " FROM json_each(e.body, '$.d.txn.tenders') v LIMIT -1) x))")
