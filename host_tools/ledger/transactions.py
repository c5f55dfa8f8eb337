"""Till transactions in the ledger: a stored ``txn`` event becomes a ``transactions`` row and
the review flags it raises, in the transaction that stores the event (issue 17).

Both backends call ``book`` with their cursor and placeholder, and only for events they
have just inserted, so a resent batch books nothing twice (exactly once rides on the
events' unique key). Per event the cost of a non-transaction is one substring test on a
batch's joined bodies (``candidates``); a transaction costs a handful of indexed lookups.

Flags (one per row and kind; ``flags_once`` makes a second raise a no-op):

- ``conflict_till_seq``: another row of the same store claims the same till and till_seq
  with another key or other contents (split brain: two tills or two gateways); both rows.
- ``conflict_key``: another row has the same idempotency key (other contents, or the same
  contents stored twice, e.g. by two gateways); both rows.
- ``unknown_original``: a refund or void whose original is not in the ledger yet. An
  original arriving later clears nothing: a person does, with ``review``.
- ``card_declined``, ``card_offline_pending``: a card tender with that authorization.
- ``unbalanced``: the lines do not add up to the tenders.
- ``late``: its business day was already closed for the store; booked all the same.
- ``invalid``: the ledger cannot read it as a transaction (the gateway validates before
  journaling, so this means a gateway older or newer than the ledger); no row, the event
  is kept.

Nothing is rejected or dropped here: the event is already stored; a flag is a question
for a person, not a refusal.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from firmware.core import till_txn
from firmware.core.event import decode_body
from firmware.core.wire import Batch
from host_tools.money import money

log = logging.getLogger(__name__)

MARK = b'"k":"txn"'  # as encode_body writes it; a hit is checked by decoding the body
FLAG_KINDS = ("conflict_till_seq", "conflict_key", "unknown_original", "card_declined",
              "card_offline_pending", "unbalanced", "late", "invalid")
TENDER_KINDS = ("cash", "card", "voucher")
COLUMNS = ("gateway", "epoch", "seq", "store", "till", "till_seq", "business_day", "type",
           "currency", "idem_key", "sha", "receipt", "offline", "accepted_ms", "ledger_ms",
           "total", "cash", "card", "voucher", "lines", "tenders", "original", "tz",
           "cashier", "till_time")
# One candidate: gateway, epoch (hex), seq, body bytes.
Candidate = tuple[str, str, int, bytes]


def candidates(batch: Batch) -> dict[int, bytes]:
    """Seq -> body of the records in ``batch`` that may be transactions."""
    if MARK not in b"".join([r[3] for r in batch.records]):  # one C-speed scan per batch
        return {}
    return {r[0]: bytes(r[3]) for r in batch.records if MARK in bytes(r[3])}


def row_of(gateway: str, epoch: str, seq: int, body: bytes, ledger_ms: int) -> dict[str, Any] | None:
    """The ``transactions`` row for a body, None when it is not a transaction event;
    ValueError saying why when it is one the ledger cannot read."""
    try:
        ev = decode_body(body)
    except ValueError:
        return None
    if ev["kind"] != "txn":
        return None
    d = ev["data"]
    try:
        txn = d["txn"]
        tenders = txn.get("tenders", [])
        per_kind = {k: sum(t["amount"] for t in tenders if t.get("kind") == k)
                    for k in TENDER_KINDS}
        original = txn.get("original")
        row = {"gateway": gateway, "epoch": epoch, "seq": seq, "store": str(d["store"]),
               "till": str(txn["till"]), "till_seq": int(txn["till_seq"]),
               "business_day": str(txn["business_day"]), "type": str(txn["type"]),
               "currency": str(txn["currency"]), "idem_key": str(d["key"]),
               "sha": str(d["sha"]), "receipt": str(d.get("receipt", "")),
               "offline": 1 if d.get("offline") else 0, "accepted_ms": int(ev["read_ms"]),
               "ledger_ms": ledger_ms, "total": int(till_txn.lines_total(txn)), **per_kind,
               "lines": json.dumps(txn.get("lines", []), separators=(",", ":")),
               "tenders": json.dumps(tenders, separators=(",", ":")),
               "original": None if original is None else json.dumps(
                   original, separators=(",", ":"), sort_keys=True),
               "tz": str(d.get("tz") or "UTC"), "cashier": str(txn.get("cashier", "")),
               "till_time": txn.get("till_time")}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a readable transaction ({type(exc).__name__}: {exc})") from None
    if row["type"] not in ("sale", "refund", "void"):
        raise ValueError(f"type {row['type']!r} is not sale, refund or void")
    return row


class Booker:
    """Books new transaction events through one cursor; ``ph`` is the backend's
    placeholder (``?`` or ``%s``). Used inside the caller's open transaction."""

    def __init__(self, cur: Any, ph: str) -> None:
        self.cur, self.ph = cur, ph

    def _q(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.cur.execute(sql.replace("?", self.ph), args)
        return self.cur.fetchall()

    def _x(self, sql: str, args: tuple[Any, ...]) -> None:
        self.cur.execute(sql.replace("?", self.ph), args)

    def flag(self, key: tuple[str, str, int], kind: str, detail: str, now: int) -> None:
        self._x("INSERT INTO flags (gateway, epoch, seq, kind, detail, raised_ms) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (gateway, epoch, seq, kind) DO NOTHING",
                (*key, kind, detail, now))

    def book(self, items: list[Candidate], ledger_ms: int) -> int:
        """Rows and flags for the newly stored events ``items``; returns rows written."""
        n = 0
        for gw, epoch, seq, body in items:
            try:
                row = row_of(gw, epoch, seq, body, ledger_ms)
            except ValueError as exc:
                log.warning("ledger: %s/%s/%d: %s", gw, epoch, seq, exc)
                self.flag((gw, epoch, seq), "invalid", str(exc), ledger_ms)
                continue
            if row is not None:
                self._one(row, ledger_ms)
                n += 1
        return n

    def _one(self, r: dict[str, Any], now: int) -> None:
        me = (r["gateway"], r["epoch"], r["seq"])
        who = f"{r['till']} #{r['till_seq']} (key {r['idem_key']}, {r['gateway']} seq {r['seq']})"
        for gw, ep, sq, key, sha in self._q(
                "SELECT gateway, epoch, seq, idem_key, sha FROM transactions "
                "WHERE store = ? AND till = ? AND till_seq = ?",
                (r["store"], r["till"], r["till_seq"])):
            if key != r["idem_key"] or sha != r["sha"]:
                what = "other contents" if sha != r["sha"] else "the same contents"
                self.flag(me, "conflict_till_seq", f"{r['till']} #{r['till_seq']} also "
                          f"claimed by key {key} ({gw} seq {sq}) with {what}", now)
                self.flag((gw, ep, sq), "conflict_till_seq", f"{r['till']} #{r['till_seq']} "
                          f"also claimed by {who} with {what}", now)
        for gw, ep, sq, sha in self._q(
                "SELECT gateway, epoch, seq, sha FROM transactions WHERE idem_key = ?",
                (r["idem_key"],)):
            what = ("other contents" if sha != r["sha"] else
                    "the same contents, stored twice" + (" by two gateways"
                                                         if gw != r["gateway"] else ""))
            self.flag(me, "conflict_key", f"key {r['idem_key']} also at {gw} seq {sq} "
                      f"with {what}", now)
            self.flag((gw, ep, sq), "conflict_key", f"key {r['idem_key']} also at "
                      f"{r['gateway']} seq {r['seq']} with {what}", now)
        if r["type"] in ("refund", "void"):
            self._original(me, r, now)
        for t in json.loads(r["tenders"]):
            auth = t.get("auth") if t.get("kind") == "card" else None
            if auth in ("declined", "offline_pending"):
                self.flag(me, f"card_{auth}", f"card {t.get('scheme', '')} "
                          f"{t.get('pan', '')} {self._money(t.get('amount'), r)}: "
                          f"{auth.replace('_', ' ')}".replace("  ", " "), now)
        tendered = r["cash"] + r["card"] + r["voucher"]
        if tendered != r["total"]:
            self.flag(me, "unbalanced", f"items {money(r['total'], r['currency'])}, paid "
                      f"{money(tendered, r['currency'])}", now)
        if self._q("SELECT 1 FROM closed_days WHERE store = ? AND business_day = ?",
                   (r["store"], r["business_day"])):
            self.flag(me, "late", f"business day {r['business_day']} of {r['store']} was "
                      "already closed when this arrived", now)
        cols = ", ".join(COLUMNS)
        self._x(f"INSERT INTO transactions ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})",
                tuple(r[c] for c in COLUMNS))

    @staticmethod
    def _money(amount: Any, r: dict[str, Any]) -> str:
        return money(amount, r["currency"]) if isinstance(amount, int) else repr(amount)

    def _original(self, me: tuple[str, str, int], r: dict[str, Any], now: int) -> None:
        ref = json.loads(r["original"]) if r["original"] else None
        if isinstance(ref, dict) and "till" in ref and "till_seq" in ref:
            found = self._q("SELECT 1 FROM transactions WHERE store = ? AND till = ? AND "
                            "till_seq = ?", (r["store"], str(ref["till"]), int(ref["till_seq"])))
            what = f"{ref['till']} #{ref['till_seq']}"
        elif isinstance(ref, str):
            found = self._q("SELECT 1 FROM transactions WHERE idem_key = ?", (ref,))
            what = f"key {ref}"
        else:
            found, what = [], "none given"
        if not found:
            self.flag(me, "unknown_original", f"{r['type']} of {what}: not in the ledger when "
                      "this arrived", now)
