"""The ledger's outbox (issue 20): the booked transactions still to go out to a sink.

There is no outbox table: each ``transactions`` row carries its delivery state per sink
(``migrations`` version 5: ``<sink>_ms``, ``<sink>_lease_ms``, ``<sink>_tries``), so the
insert that books a transaction is also its outbox entry, in the same database
transaction, at the cost of one entry in a partial index (``WHERE <sink>_ms IS NULL``).
A committed transaction is therefore never missed; one that is not yet marked delivered
is offered again, under the same identity, so a crash between the ERP's 2xx and the mark
costs a retry the ERP deduplicates, never a loss.

Sinks: ``erp`` (the ERP webhook, ``erp_delivery.py``) and ``feed`` (plain JSON on MQTT,
``ledger_feed.py``). Several workers share a sink through leases: ``claim`` takes up to
N due rows whose lease is free or expired and leases them for ``lease_s``; on PostgreSQL
the rows are chosen with ``FOR UPDATE SKIP LOCKED``, so two workers claiming together get
disjoint rows, and on SQLite ``BEGIN IMMEDIATE`` serialises the claims. A worker that dies
leaves its lease to expire; the rows then go to whoever claims next (a retry with the same
identity). A live worker renews its lease while it retries.

Each ``Outbox`` has a connection of its own (a SQLite one with ``synchronous=NORMAL``:
a lost lease or delivery mark after a power cut only means a retry with the same key).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import nullcontext
from typing import Any

from host_tools.ledger.erp_payload import LEVELS, payload, sqlite_doc
from host_tools.ledger.store import backend_of, sqlite_path

SINKS = ("erp", "feed")
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
# One per SQLite file: the threads of this process take turns at its write lock here,
# where a waiter wakes the moment it is free, instead of in SQLite's busy handler, which
# sleeps 1, 2, 5, 10 ... 100 ms between tries (and made three threads slower than one).
_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()
Key = tuple[str, str, int]
# What a delivery needs of a row, in this order, then the event's body.
FIELDS = ("gateway", "epoch", "seq", "store", "till", "till_seq", "business_day", "type",
          "currency", "receipt", "offline", "accepted_ms", "ledger_ms", "total", "cash",
          "card", "voucher", "original", "tz", "cashier", "tries")


class Outbox:
    """One sink's view of the outbox over a connection of its own."""

    def __init__(self, url: str, sink: str, lease_s: float = 30.0) -> None:
        if sink not in SINKS:
            raise ValueError(f"outbox sink {sink!r}: expected one of {', '.join(SINKS)}")
        self.sink, self.lease_ms = sink, int(lease_s * 1000)
        self.backend = backend_of(url)
        cols = ", ".join(f"t.{c}" for c in FIELDS[:-1]) + f", t.{sink}_tries, e.body"
        join = "e.gateway = t.gateway AND e.epoch = t.epoch AND e.seq = t.seq"
        due = f"t.{sink}_ms IS NULL AND (t.{sink}_lease_ms IS NULL OR t.{sink}_lease_ms < %s)"
        if self.backend == "postgresql":
            import psycopg
            self.ph = "%s"
            self.url = url
            self.db: Any = psycopg.connect(url, autocommit=True, connect_timeout=5)
            self._turn = nullcontext()  # row locks, not a file lock
            self._claim_sql = (
                f"WITH c AS (SELECT gateway, epoch, seq FROM transactions t WHERE {due} "
                "ORDER BY ledger_ms LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE transactions t SET {sink}_lease_ms = %s FROM c, events e "
                "WHERE t.gateway = c.gateway AND t.epoch = c.epoch AND t.seq = c.seq AND "
                f"{join} RETURNING {cols}")
        else:
            self.ph = "?"
            with _file_locks_guard:
                self._turn: Any = _file_locks.setdefault(str(sqlite_path(url).resolve()),
                                                         threading.Lock())
            self.db = sqlite3.connect(sqlite_path(url), isolation_level=None, timeout=30,
                                      check_same_thread=False)
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: a drain reads 100,000s of rows
            self.db.execute("PRAGMA mmap_size=268435456")
            # Select, then lease the same rows by the same subquery, in one BEGIN
            # IMMEDIATE transaction: nothing else writes meanwhile. (One UPDATE ...
            # RETURNING with the body as a correlated subquery took twice as long, and
            # needs SQLite 3.35.)
            self._select_sql = (f"SELECT {cols} FROM transactions t JOIN events e ON {join} "
                                f"WHERE {due.replace('%s', '?')} ORDER BY t.ledger_ms LIMIT ?")
            self._keys_sql = (f"SELECT gateway, epoch, seq, {sink}_tries FROM transactions t "
                              f"WHERE {due.replace('%s', '?')} ORDER BY ledger_ms LIMIT ?")
            # The documents of the leased keys, given as one JSON array of [g, e, seq].
            # CROSS JOIN: SQLite keeps that order, one primary-key lookup per key (as an
            # IN list it scanned every event of the gateway's epoch).
            self._docs_sql = {level: (
                f"SELECT t.gateway, t.epoch, t.seq, {sqlite_doc(level)} FROM json_each(?) k "
                "CROSS JOIN transactions t ON t.gateway = json_extract(k.value, '$[0]') AND "
                "t.epoch = json_extract(k.value, '$[1]') AND t.seq = json_extract(k.value, "
                f"'$[2]') CROSS JOIN events e ON {join}") for level in LEVELS}
            self._claim_sql = (
                f"UPDATE transactions SET {sink}_lease_ms = ? WHERE (gateway, epoch, seq) "
                f"IN (SELECT gateway, epoch, seq FROM transactions t WHERE "
                f"{due.replace('%s', '?')} ORDER BY ledger_ms LIMIT ?)")

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """``sql`` (``?`` placeholders, the key last) for each row, in one transaction."""
        sql = sql.replace("?", self.ph)
        if self.backend == "postgresql":
            with self.db.transaction(), self.db.cursor() as cur:
                cur.executemany(sql, rows)
            return
        with self._turn:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(sql, rows)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def claim(self, n: int, now_ms: int) -> list[dict[str, Any]]:
        """Lease up to ``n`` due rows (oldest booked first); each a dict of ``FIELDS`` and
        ``body`` (the event as stored)."""
        until = now_ms + self.lease_ms
        if self.backend == "postgresql" and (self.db.closed or self.db.broken):
            # The server restarted or the link broke: the next claim opens it again.
            import psycopg
            self.db = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        if self.backend == "postgresql":
            rows = self.db.execute(self._claim_sql, (now_ms, n, until)).fetchall()
        else:
            with self._turn:
                cur = self.db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    rows = cur.execute(self._select_sql, (now_ms, n)).fetchall()
                    if rows:
                        cur.execute(self._claim_sql, (until, now_ms, n))
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        if self.backend == "postgresql":
            rows.sort(key=lambda r: (r[12], r[0], r[1], r[2]))  # RETURNING has no order
        return [dict(zip((*FIELDS, "body"), r, strict=True)) for r in rows]

    def claim_docs(self, n: int, now_ms: int, level: str) -> list[tuple[Key, int, str]]:
        """Lease up to ``n`` due rows like ``claim``; each as (key, tries, the sanitized
        document as JSON text, ``erp_payload``). On SQLite the documents are built by
        SQLite (``erp_payload.sqlite_doc``) after the lease is committed, outside the write
        lock; on PostgreSQL by ``erp_payload.payload``."""
        if self.backend == "postgresql":
            return [((r["gateway"], r["epoch"], r["seq"]), int(r["tries"]),
                     _encode(payload(r, level))) for r in self.claim(n, now_ms)]
        until = now_ms + self.lease_ms
        with self._turn:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                keys = cur.execute(self._keys_sql, (now_ms, n)).fetchall()
                if keys:
                    cur.execute(self._claim_sql, (until, now_ms, n))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        if not keys:
            return []
        docs = {(g, e, q): doc for g, e, q, doc in self.db.execute(
            self._docs_sql[level], (json.dumps([k[:3] for k in keys]),))}
        return [((g, e, q), int(tries), docs[(g, e, q)]) for g, e, q, tries in keys]

    def renew(self, keys: list[Key], now_ms: int) -> None:
        """Hold the lease on ``keys`` for another ``lease_s`` (a worker still retrying)."""
        self._many(f"UPDATE transactions SET {self.sink}_lease_ms = ? WHERE gateway = ? "
                   "AND epoch = ? AND seq = ?", [(now_ms + self.lease_ms, *k) for k in keys])

    def release(self, keys: list[Key]) -> None:
        """Give ``keys`` back undelivered (a worker stopping): due again at once."""
        self._many(f"UPDATE transactions SET {self.sink}_lease_ms = NULL WHERE gateway = ? "
                   "AND epoch = ? AND seq = ?", list(keys))

    def done(self, keys: list[Key], now_ms: int) -> None:
        """``keys`` delivered at ``now_ms``: out of the due index for good."""
        self._many(f"UPDATE transactions SET {self.sink}_ms = ?, {self.sink}_lease_ms = NULL "
                   "WHERE gateway = ? AND epoch = ? AND seq = ?",
                   [(now_ms, *k) for k in keys])

    def refused(self, keys: list[Key]) -> None:
        """One more refusal for each of ``keys`` (``tries``); they stay leased."""
        self._many(f"UPDATE transactions SET {self.sink}_tries = {self.sink}_tries + 1 "
                   "WHERE gateway = ? AND epoch = ? AND seq = ?", list(keys))

    def park(self, parked: list[tuple[Key, str]], now_ms: int) -> None:
        """Dead letter: each key leaves the due index and gets an open review flag
        ``<sink>_refused`` with the far end's answer (``host_tools review``, the morning
        report), in one transaction."""
        if not parked:
            return
        flag = (f"INSERT INTO flags (gateway, epoch, seq, kind, detail, raised_ms) VALUES "
                f"(?, ?, ?, '{self.sink}_refused', ?, ?) ON CONFLICT (gateway, epoch, seq, "
                "kind) DO NOTHING").replace("?", self.ph)
        mark = (f"UPDATE transactions SET {self.sink}_ms = ?, {self.sink}_lease_ms = NULL "
                "WHERE gateway = ? AND epoch = ? AND seq = ?").replace("?", self.ph)
        rows = [(*k, detail[:500], now_ms) for k, detail in parked]
        if self.backend == "postgresql":
            with self.db.transaction(), self.db.cursor() as cur:
                cur.executemany(flag, rows)
                cur.executemany(mark, [(now_ms, *k) for k, _ in parked])
            return
        with self._turn:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(flag, rows)
                cur.executemany(mark, [(now_ms, *k) for k, _ in parked])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def due(self) -> int:
        """Rows not yet delivered nor parked (the backlog)."""
        return int(self.db.execute(f"SELECT COUNT(*) FROM transactions WHERE {self.sink}_ms "
                                   "IS NULL").fetchone()[0])

    def close(self) -> None:
        self.db.close()
