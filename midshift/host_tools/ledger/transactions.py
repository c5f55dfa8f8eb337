"""Till transactions in the ledger: a stored ``txn`` event becomes a ``transactions`` row and
the review flags it raises, in the transaction that stores the event (issue 17).

Both backends call ``book`` with their cursor and placeholder, and only for events they
have just inserted, so a resent batch books nothing twice (exactly once rides on the
events' unique key). Per event the cost of a non-transaction is one substring test on a
batch's joined bodies (``candidates``); transactions are judged set-wise, a few indexed
queries per batch (``Booker``).

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
import re
from collections import namedtuple
from itertools import groupby
from operator import itemgetter
from typing import Any

from midshift.firmware.core import till_txn
from midshift.firmware.core.event import decode_body
from midshift.firmware.core.wire import Batch
from midshift.host_tools.money import money

log = logging.getLogger(__name__)

MARK = b'"k":"txn"'  # as encode_body writes it; a hit is checked by decoding the body
FLAG_KINDS = ("conflict_till_seq", "conflict_key", "unknown_original", "card_declined",
              "card_offline_pending", "unbalanced", "late", "invalid")
TENDER_KINDS = ("cash", "card", "voucher")
# The row's columns (migrations version 4). Lines and tenders stay in the event's body,
# where ``LedgerStore.transactions`` reads them: re-encoding and storing them again cost
# more than a third of booking a drained outage. The two that are mostly NULL come last
# (``Booker._insert``).
COLUMNS = ("gateway", "epoch", "seq", "store", "till", "till_seq", "business_day", "type",
           "currency", "idem_key", "sha", "receipt", "offline", "accepted_ms", "ledger_ms",
           "total", "cash", "card", "voucher", "tz", "cashier", "original", "till_time")
# One candidate: gateway, epoch (hex), seq, body (bytes, or the text already decoded).
Candidate = tuple[str, str, int, bytes | str]
# A row in COLUMNS order (``row[:len(COLUMNS)]`` is what is inserted), then the parsed
# tenders, which the card flags read.
Row = namedtuple("Row", (*COLUMNS, "tenders"))  # type: ignore[misc]
_N = len(COLUMNS)
_SHORT = _N - 2  # the columns before ``original`` and ``till_time``
_TILL = itemgetter(3, 4, 5)  # store, till, till_seq
_TYPE = itemgetter(7)
_KEY = itemgetter(9)
_scan = json.JSONDecoder().scan_once  # json.loads without its per-call checks
_new_row = tuple.__new__  # Row's own __new__ binds 24 arguments in Python, per row


def candidate_seqs(batch: Batch) -> set[int]:
    """The seqs of the records in ``batch`` that may be transactions."""
    if MARK not in b"".join([r[3] for r in batch.records]):  # one C-speed scan per batch
        return set()
    return {r[0] for r in batch.records if MARK in r[3]}


def candidates(batch: Batch) -> dict[int, bytes]:
    """Seq -> body of the records in ``batch`` that may be transactions."""
    seqs = candidate_seqs(batch)
    return {r[0]: bytes(r[3]) for r in batch.records if r[0] in seqs} if seqs else {}


def _body(body: bytes) -> Any:
    """``body`` as JSON, None when ``decode_body`` would refuse it. The common case (a
    compact body, as gateways write them) is parsed by the scanner alone, about a fifth
    cheaper than ``json.loads``; anything else goes through ``decode_body``."""
    try:
        text = body.decode()
        doc, end = _scan(text, 0)
        if end == len(text) and type(doc) is dict and doc.get("v") == 1:
            return doc
    except (ValueError, StopIteration):
        pass
    try:
        ev = decode_body(body)
    except ValueError:
        return None
    return {"v": 1, "k": ev["kind"], "t": ev["read_ms"], "d": ev["data"]}


# A string without escapes, quotes or anything but printable ASCII: its JSON text is its
# value, character for character. A JSON integer as ``json`` reads one.
_S = r'"([ !#-\[\]-~]*)"'
_NUM = r'(0|[1-9][0-9]*)'
_I = r'(?:0|[1-9][0-9]*)'
_LINE = (r'\{"sku":"[ !#-\[\]-~]*","qty_milli":' + _I + ',"unit_price":' + _I + ',"discount":'
         + _I + r'\}')
_TENDER = (r'(?:\{"kind":"(?:cash|voucher)","amount":' + _I + r'\}|\{"kind":"card","amount":'
           + _I + r',"pan":"[ !#-\[\]-~]*","scheme":"[ !#-\[\]-~]*","auth":"[a-z_]*"\})')
# The first line and the first tender with their figures captured (the rest, if any, are
# read by ``_AMOUNTS`` and ``_TENDERS``): most transactions pay with one tender.
_FIRST_LINE = (r'\{"sku":"[ !#-\[\]-~]*","qty_milli":' + _NUM + ',"unit_price":' + _NUM
               + ',"discount":' + _NUM + r'\}')
_FIRST_TENDER = (r'(?:\{"kind":"(cash|voucher)","amount":' + _NUM + r'\}|\{"kind":"card",'
                 r'"amount":' + _NUM + r',"pan":"[ !#-\[\]-~]*","scheme":"[ !#-\[\]-~]*",'
                 r'"auth":"[a-z_]*"\})')
# The body as the till API writes it (``till_api._journal``: ``encode_body`` of the
# validated transaction), whole: keys in that order, no whitespace. A body that matches
# means exactly what ``json`` would read from it; any other goes the general way.
_GATEWAY_BODY = re.compile(
    r'\{"v":1,"src":"[ !#-\[\]-~]*","k":"txn","t":(-?' + _I + r'),"d":\{"key":' + _S
    + ',"sha":' + _S + ',"store":' + _S + ',"tz":' + _S + ',"receipt":' + _S
    + r',"offline":(true|false),"txn":\{"type":"(sale|refund|void)","till":' + _S
    + ',"till_seq":' + _NUM + ',"business_day":' + _S + ',"cashier":' + _S + ',"currency":' + _S
    + r'(?:,"till_time":' + _S + r')?,"lines":\[' + _FIRST_LINE + '((?:,' + _LINE + r')*)\]'
    + r',"tenders":\[(' + _FIRST_TENDER + '((?:,' + _TENDER + r')*))\]'
    + r'(?:,"original":("[ !#-\[\]-~]*"|\{"till":"[ !#-\[\]-~]*","till_seq":' + _I + r'\}))?'
    + r'\}\}\}')
_TENDERS = re.compile(r'"kind":"([a-z]+)","amount":([0-9]+)')
_AMOUNTS = re.compile(r'"qty_milli":([0-9]+),"unit_price":([0-9]+),"discount":([0-9]+)')


def _gateway_row(gateway: str, epoch: str, seq: int, text: str, ledger_ms: int) -> Row | None:
    """The row of a body exactly as the till API writes it, read with one regular
    expression instead of a JSON parse of the whole body (a drained outage is 90,000 of
    them); None for any other body. Only the tenders are parsed, for the card flags."""
    m = _GATEWAY_BODY.fullmatch(text)  # only ASCII matches: every class in it is ASCII
    if m is None:
        return None
    (t, key, sha, store, tz, receipt, offline, kind, till, till_seq, day, cashier, currency,
     till_time, qty, price, discount, more_lines, tenders_text, first, amount, card_amount,
     more_tenders, original) = m.groups()
    cash = card = voucher = 0
    if first is None:
        card = int(card_amount)
    elif first == "cash":
        cash = int(amount)
    else:
        voucher = int(amount)
    if more_tenders:
        for k, amount in _TENDERS.findall(more_tenders):
            if k == "cash":
                cash += int(amount)
            elif k == "card":
                card += int(amount)
            else:
                voucher += int(amount)
    # The tenders themselves only when a card flag reads them (strings here hold no '"').
    tenders = (_scan(f"[{tenders_text}]", 0)[0] if '"auth":"declined"' in tenders_text
               or '"auth":"offline_pending"' in tenders_text else ())
    total = till_txn.amount_of(int(qty), int(price), int(discount))
    if more_lines:
        for qty, price, discount in _AMOUNTS.findall(more_lines):
            total += till_txn.amount_of(int(qty), int(price), int(discount))
    return _new_row(Row, (
        gateway, epoch, seq, store, till, int(till_seq), day, kind, currency, key, sha,
        receipt, 1 if offline == "true" else 0, int(t), ledger_ms, total, cash, card, voucher,
        tz or "UTC", cashier, original, till_time, tenders))


def row_of(gateway: str, epoch: str, seq: int, body: bytes | str,
           ledger_ms: int) -> Row | None:
    """The ``transactions`` row for a body (bytes, or its text), None when it is not a
    transaction event; ValueError saying why when it is one the ledger cannot read."""
    if type(body) is str:
        row = _gateway_row(gateway, epoch, seq, body, ledger_ms)
        if row is not None:
            return row
        body = body.encode()
    else:
        try:
            row = _gateway_row(gateway, epoch, seq, body.decode(), ledger_ms)
        except UnicodeDecodeError:
            row = None
        if row is not None:
            return row
    return _row_of_doc(gateway, epoch, seq, body, ledger_ms)


def _row_of_doc(gateway: str, epoch: str, seq: int, body: bytes, ledger_ms: int) -> Row | None:
    """``row_of`` for any body: parsed as JSON whole."""
    doc = _body(body)
    if doc is None or doc.get("k") != "txn":
        return None
    d = doc.get("d")
    try:
        txn = d["txn"]
        tenders = txn.get("tenders", [])
        try:  # one pass; on a bad tender, the passes that always named the error
            cash = card = voucher = 0
            for t in tenders:
                kind = t.get("kind")
                if kind == "cash":
                    cash += t["amount"]
                elif kind == "card":
                    card += t["amount"]
                elif kind == "voucher":
                    voucher += t["amount"]
        except (KeyError, TypeError, AttributeError):
            cash, card, voucher = (sum(t["amount"] for t in tenders if t.get("kind") == k)
                                   for k in TENDER_KINDS)
        original = txn.get("original")
        # In the order of the columns: the first field that fails names the error.
        row = _new_row(Row, (
            gateway, epoch, seq, str(d["store"]), str(txn["till"]), int(txn["till_seq"]),
            str(txn["business_day"]), str(txn["type"]), str(txn["currency"]), str(d["key"]),
            str(d["sha"]), str(d.get("receipt", "")), 1 if d.get("offline") else 0,
            int(doc.get("t")), ledger_ms, int(till_txn.lines_total(txn)), cash, card, voucher,
            str(d.get("tz") or "UTC"), str(txn.get("cashier", "")),
            None if original is None else json.dumps(
                original, separators=(",", ":"), sort_keys=True),
            txn.get("till_time"), tenders))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a readable transaction ({type(exc).__name__}: {exc})") from None
    if row.type not in ("sale", "refund", "void"):
        raise ValueError(f"type {row.type!r} is not sale, refund or void")
    return row


class Booker:
    """Books new transaction events through one cursor; ``ph`` is the backend's
    placeholder (``?`` or ``%s``). Used inside the caller's open transaction.

    Set-wise: what the ledger already holds for the rows' tills, keys and days is read in a
    few queries per call, then each row is judged against that plus the rows before it in
    the same call (what a row-by-row insert would have seen), and the rows and flags are
    written with ``executemany``. Row by row cost five statements per sale, and a drained
    outage is 90,000 sales."""

    CHUNK = 400  # parameters per IN (...) list, well under SQLite's and PostgreSQL's limits

    def __init__(self, cur: Any, ph: str) -> None:
        self.cur, self.ph = cur, ph
        self._flags: list[tuple[Any, ...]] = []

    def _q(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.cur.execute(sql.replace("?", self.ph), args)
        return self.cur.fetchall()

    def flag(self, key: tuple[str, str, int], kind: str, detail: str, now: int) -> None:
        self._flags.append((*key, kind, detail, now))

    def _in(self, sql: str, head: tuple[Any, ...], values: list[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (ending in ``IN``) for ``values``: on SQLite one statement, the
        values one JSON array (a drained group's 2,000 keys bound one by one, five
        statements, cost more than their lookups); on PostgreSQL chunked lists."""
        if self.ph == "?":
            return self._q(f"{sql} (SELECT value FROM json_each(?))",
                           (*head, json.dumps(values)))
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(values), self.CHUNK):
            part = values[i:i + self.CHUNK]
            out += self._q(f"{sql} ({', '.join('?' * len(part))})", (*head, *part))
        return out

    def book(self, items: list[Candidate], ledger_ms: int) -> int:
        """Rows and flags for the newly stored events ``items``; returns rows written."""
        rows = []
        for gw, epoch, seq, body in items:
            try:
                row = row_of(gw, epoch, seq, body, ledger_ms)
            except ValueError as exc:
                log.warning("ledger: %s/%s/%d: %s", gw, epoch, seq, exc)
                self.flag((gw, epoch, seq), "invalid", str(exc), ledger_ms)
                continue
            if row is not None:
                rows.append(row)
        if rows:
            held = _Held(self, rows)
            if held.plain(rows):  # the common case, a drained outage: own flags only
                own = self._own
                for r in rows:
                    own((r[0], r[1], r[2]), r, held, ledger_ms)
            else:
                for r in rows:
                    self._one(r, held, ledger_ms)
                    held.add(r)
            self._insert(rows)
        if self._flags:
            self.cur.executemany(
                "INSERT INTO flags (gateway, epoch, seq, kind, detail, raised_ms) VALUES "
                f"({', '.join([self.ph] * 6)}) ON CONFLICT (gateway, epoch, seq, kind) DO NOTHING",
                self._flags)
            self._flags = []
        return len(rows)

    def _insert(self, rows: list[Row]) -> None:
        """The rows, in their order. Rows whose ``original`` and ``till_time`` are both
        NULL (most are) go in by a statement that writes the NULLs itself: binding None
        costs the sqlite3 module an adapter lookup, ten times binding an integer (two a
        row were a twentieth of booking a drained outage)."""
        cols = ", ".join(COLUMNS)
        full = f"INSERT INTO transactions ({cols}) VALUES ({', '.join([self.ph] * _N)})"
        nulls = f"INSERT INTO transactions ({cols}) VALUES ({', '.join([self.ph] * _SHORT)}, " \
            "NULL, NULL)"
        plain = [r[:_SHORT] for r in rows if r[_SHORT] is None and r[_SHORT + 1] is None]
        if len(plain) == len(rows):
            self.cur.executemany(nulls, plain)
            return
        # Runs in the rows' order, so that row ids (and the outbox's order) follow them.
        for short, run in groupby(rows, key=lambda r: r[_SHORT] is None and r[_SHORT + 1] is None):
            if short:
                self.cur.executemany(nulls, [r[:_SHORT] for r in run])
            else:
                self.cur.executemany(full, [r[:_N] for r in run])

    def _one(self, r: Row, held: _Held, now: int) -> None:
        me = (r.gateway, r.epoch, r.seq)
        for gw, ep, sq, key, sha in held.by_till.get((r.store, r.till, r.till_seq), ()):
            if key != r.idem_key or sha != r.sha:
                who = (f"{r.till} #{r.till_seq} (key {r.idem_key}, {r.gateway} seq {r.seq})")
                what = "other contents" if sha != r.sha else "the same contents"
                self.flag(me, "conflict_till_seq", f"{r.till} #{r.till_seq} also "
                          f"claimed by key {key} ({gw} seq {sq}) with {what}", now)
                self.flag((gw, ep, sq), "conflict_till_seq", f"{r.till} #{r.till_seq} "
                          f"also claimed by {who} with {what}", now)
        for gw, ep, sq, _, sha in held.by_key.get(r.idem_key, ()):
            what = ("other contents" if sha != r.sha else
                    "the same contents, stored twice" + (" by two gateways"
                                                         if gw != r.gateway else ""))
            self.flag(me, "conflict_key", f"key {r.idem_key} also at {gw} seq {sq} "
                      f"with {what}", now)
            self.flag((gw, ep, sq), "conflict_key", f"key {r.idem_key} also at "
                      f"{r.gateway} seq {r.seq} with {what}", now)
        if r.type != "sale":
            self._original(me, r, held, now)
        self._own(me, r, held, now)

    def _own(self, me: tuple[str, str, int], r: Row, held: _Held, now: int) -> None:
        """The flags a row raises by itself: card authorizations, balance, late."""
        for t in r.tenders:
            auth = t.get("auth") if t.get("kind") == "card" else None
            if auth in ("declined", "offline_pending"):
                self.flag(me, f"card_{auth}", f"card {t.get('scheme', '')} "
                          f"{t.get('pan', '')} {self._money(t.get('amount'), r)}: "
                          f"{auth.replace('_', ' ')}".replace("  ", " "), now)
        tendered = r.cash + r.card + r.voucher
        if tendered != r.total:
            self.flag(me, "unbalanced", f"items {money(r.total, r.currency)}, paid "
                      f"{money(tendered, r.currency)}", now)
        if held.closed and (r.store, r.business_day) in held.closed:
            self.flag(me, "late", f"business day {r.business_day} of {r.store} was "
                      "already closed when this arrived", now)

    @staticmethod
    def _money(amount: Any, r: Row) -> str:
        return money(amount, r.currency) if isinstance(amount, int) else repr(amount)

    def _original(self, me: tuple[str, str, int], r: Row, held: _Held, now: int) -> None:
        ref = json.loads(r.original) if r.original else None
        if isinstance(ref, dict) and "till" in ref and "till_seq" in ref:
            at = (r.store, str(ref["till"]), int(ref["till_seq"]))
            found = at in held.by_till or bool(self._q(
                "SELECT 1 FROM transactions WHERE store = ? AND till = ? AND till_seq = ?", at))
            what = f"{ref['till']} #{ref['till_seq']}"
        elif isinstance(ref, str):
            found = ref in held.by_key or bool(self._q(
                "SELECT 1 FROM transactions WHERE idem_key = ?", (ref,)))
            what = f"key {ref}"
        else:
            found, what = False, "none given"
        if not found:
            self.flag(me, "unknown_original", f"{r.type} of {what}: not in the ledger when "
                      "this arrived", now)


class _Held:
    """What the ledger held before this call for the rows' tills, keys and days, plus
    the rows judged so far: (gateway, epoch, seq, key, sha) by (store, till, till_seq)
    and by key, and the closed (store, day) pairs."""

    def __init__(self, b: Booker, rows: list[Row]) -> None:
        self.by_till: dict[tuple[str, str, int], list[tuple[Any, ...]]] = {}
        self.by_key: dict[str, list[tuple[Any, ...]]] = {}
        tills: dict[tuple[str, str], list[int]] = {}
        for store, till, till_seq in map(_TILL, rows):
            seqs = tills.get((store, till))
            if seqs is None:
                tills[store, till] = seqs = []
            seqs.append(till_seq)
        for (store, till), seqs in tills.items():
            lo, hi = min(seqs), max(seqs)
            sql = ("SELECT gateway, epoch, seq, idem_key, sha, till_seq FROM transactions "
                   "WHERE store = ? AND till = ? AND till_seq")
            # A till's seqs in a drained backlog are a run: one range instead of a seek
            # each (rows in the range that no row here claims are held but never asked for).
            found = (b._q(f"{sql} BETWEEN ? AND ?", (store, till, lo, hi))
                     if hi - lo < 2 * len(seqs) + b.CHUNK else
                     b._in(f"{sql} IN", (store, till), sorted(set(seqs))))
            for gw, ep, sq, key, sha, ts in found:
                self.by_till.setdefault((store, till, ts), []).append((gw, ep, sq, key, sha))
        self.keys = set(map(_KEY, rows))
        for gw, ep, sq, key, sha in b._in(
                "SELECT gateway, epoch, seq, idem_key, sha FROM transactions WHERE idem_key IN",
                (), sorted(self.keys)):
            self.by_key.setdefault(key, []).append((gw, ep, sq, key, sha))
        self.closed = {(s, d) for s, d in b._in(
            "SELECT store, business_day FROM closed_days WHERE store IN", (),
            sorted({r.store for r in rows}))}

    def plain(self, rows: list[Row]) -> bool:
        """True when no row can conflict with another or with what is held, and none
        refers to an original: then each row raises only its own flags."""
        if self.by_till or self.by_key:
            return False
        return (len(self.keys) == len(rows) and set(map(_TYPE, rows)) == {"sale"}
                and len(set(map(_TILL, rows))) == len(rows))

    def add(self, r: Row) -> None:
        held = (r.gateway, r.epoch, r.seq, r.idem_key, r.sha)
        self.by_till.setdefault((r.store, r.till, r.till_seq), []).append(held)
        self.by_key.setdefault(r.idem_key, []).append(held)
