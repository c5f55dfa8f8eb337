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

Both carry the identity (``idempotency_key`` = ``gateway/epoch/seq``, the same one the
``Idempotency-Key`` header has), the store, till, till number, business day, type,
currency, total, receipt, whether it was taken offline, the acceptance and ledger times.
"""

from __future__ import annotations

import json
from typing import Any

from firmware.core.till_txn import masked_pan_ok

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


def _tender(t: Any) -> dict[str, Any] | None:
    if not isinstance(t, dict):
        return None
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
    doc["lines"] = [{k: line[k] for k in LINE_FIELDS if k in line}
                    if isinstance(line, dict) else {} for line in txn.get("lines", ())]
    doc["tenders"] = [t for t in map(_tender, txn.get("tenders", ())) if t is not None]
    return doc
