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

from midshift.host_tools.ledger.erp_payload import LEVELS, payload, sqlite_doc
from midshift.host_tools.ledger.store import backend_of, sqlite_path

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
            # Select, then lease the selected rows by key (``_update``), in one BEGIN
            # IMMEDIATE transaction: nothing else writes meanwhile. (One UPDATE ...
            # RETURNING with the body as a correlated subquery took twice as long, and
            # needs SQLite 3.35.)
            self._select_sql = (f"SELECT {cols} FROM transactions t JOIN events e ON {join} "
                                f"WHERE {due.replace('%s', '?')} ORDER BY t.ledger_ms LIMIT ?")
            # The due keys as one row, a JSON array of [g, e, seq, tries]: the sqlite3
            # module lets go of the interpreter's lock for every row it steps, and each
            # taking it back waits out a thread running Python (up to 5 ms, the switch
            # interval): 500 rows a batch cost the drain a third of its pace that way.
            self._keys_sql = (f"SELECT json_group_array(json_array(gateway, epoch, seq, "
                              f"{sink}_tries)) FROM (SELECT gateway, epoch, seq, {sink}_tries "
                              f"FROM transactions t WHERE {due.replace('%s', '?')} "
                              "ORDER BY ledger_ms LIMIT ?)")
            # The documents of the leased keys, given as one JSON array of [g, e, seq].
            # CROSS JOIN: SQLite keeps that order, one primary-key lookup per key (as an
            # IN list it scanned every event of the gateway's epoch).
            src = ("FROM json_each(?) k CROSS JOIN transactions t ON t.gateway = "
                   "json_extract(k.value, '$[0]') AND t.epoch = json_extract(k.value, '$[1]') "
                   f"AND t.seq = json_extract(k.value, '$[2]') CROSS JOIN events e ON {join}")
            self._docs_sql = {level: f"SELECT t.gateway, t.epoch, t.seq, {sqlite_doc(level)} "
                              f"{src}" for level in LEVELS}
            # All of them as one JSON array text, in the keys' order: one row (above).
            self._joined_sql = {level: f"SELECT '[' || group_concat({sqlite_doc(level)}, ',') "
                                f"|| ']' {src}" for level in LEVELS}

    def _write(self, pg_sql: str, pg_rows: list[tuple[Any, ...]], assign: str,
               args: tuple[Any, ...], keys: list[Key]) -> None:
        """One transaction setting ``assign`` on ``keys``. PostgreSQL: ``pg_sql`` for each
        of ``pg_rows``. SQLite: one ``UPDATE`` per (gateway, epoch) naming its sequence
        numbers as a JSON array, ``args`` for ``assign``'s placeholders (a statement per
        row released the interpreter's lock 500 times a batch: see ``_keys_sql``)."""
        if self.backend == "postgresql":
            with self.db.transaction(), self.db.cursor() as cur:
                cur.executemany(pg_sql, pg_rows)
            return
        with self._turn:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._update(cur, assign, args, keys)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _update(self, cur: Any, assign: str, args: tuple[Any, ...], keys: list[Key]) -> None:
        """SQLite, in the caller's transaction: ``SET assign`` on ``keys``."""
        seqs: dict[tuple[str, str], list[int]] = {}
        for g, e, q in keys:
            seqs.setdefault((g, e), []).append(q)
        sql = (f"UPDATE transactions SET {assign} WHERE gateway = ? AND epoch = ? AND seq IN "
               "(SELECT value FROM json_each(?))")
        for (g, e), qs in seqs.items():
            cur.execute(sql, (*args, g, e, json.dumps(qs)))

    def _lease_keys(self, n: int, now_ms: int) -> list[tuple[Key, int]]:
        """SQLite: lease up to ``n`` due rows, oldest booked first; (key, tries) each."""
        with self._turn:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                got = json.loads(cur.execute(self._keys_sql, (now_ms, n)).fetchone()[0])
                keys = [((g, e, q), t) for g, e, q, t in got]
                if keys:
                    self._update(cur, f"{self.sink}_lease_ms = ?", (now_ms + self.lease_ms,),
                                 [k for k, _ in keys])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return keys

    def claim(self, n: int, now_ms: int) -> list[dict[str, Any]]:
        """Lease up to ``n`` due rows (oldest booked first); each a dict of ``FIELDS`` and
        ``body`` (the event as stored)."""
        if self.backend == "postgresql" and (self.db.closed or self.db.broken):
            # The server restarted or the link broke: the next claim opens it again.
            import psycopg
            self.db = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        if self.backend == "postgresql":
            rows = self.db.execute(self._claim_sql, (now_ms, n, now_ms + self.lease_ms)
                                   ).fetchall()
            rows.sort(key=lambda r: (r[12], r[0], r[1], r[2]))  # RETURNING has no order
        else:
            with self._turn:
                cur = self.db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    rows = cur.execute(self._select_sql, (now_ms, n)).fetchall()
                    self._update(cur, f"{self.sink}_lease_ms = ?", (now_ms + self.lease_ms,),
                                 [(r[0], r[1], r[2]) for r in rows])
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        return [dict(zip((*FIELDS, "body"), r, strict=True)) for r in rows]

    def claim_docs(self, n: int, now_ms: int, level: str) -> list[tuple[Key, int, str]]:
        """Lease up to ``n`` due rows like ``claim``; each as (key, tries, the sanitized
        document as JSON text, ``erp_payload``). On SQLite the documents are built by
        SQLite (``erp_payload.sqlite_doc``) after the lease is committed, outside the write
        lock; on PostgreSQL by ``erp_payload.payload``."""
        if self.backend == "postgresql":
            return [((r["gateway"], r["epoch"], r["seq"]), int(r["tries"]),
                     _encode(payload(r, level))) for r in self.claim(n, now_ms)]
        keys = self._lease_keys(n, now_ms)
        docs = self.docs([k for k, _ in keys], level)
        return [(k, int(tries), docs[k]) for k, tries in keys]

    def claim_batch(self, n: int, now_ms: int, level: str
                    ) -> tuple[list[tuple[Key, int]], dict[Key, str], str | None]:
        """Lease up to ``n`` due rows like ``claim_docs``: ((key, tries) each, documents
        by key, their documents as one JSON array text in the keys' order or None). On
        SQLite only that array is built (in one row: see ``_keys_sql``), the documents by
        key being left empty for ``docs`` to fetch when a request must be split; on
        PostgreSQL the documents by key and no array."""
        if self.backend == "postgresql":
            rows = self.claim_docs(n, now_ms, level)
            return [(k, tries) for k, tries, _ in rows], {k: doc for k, _, doc in rows}, None
        keys = self._lease_keys(n, now_ms)
        if not keys:
            return [], {}, None
        arg = json.dumps([k for k, _ in keys])
        return keys, {}, self.db.execute(self._joined_sql[level], (arg,)).fetchone()[0]

    def docs(self, keys: list[Key], level: str) -> dict[Key, str]:
        """The sanitized documents of ``keys`` (SQLite) by key."""
        if not keys:
            return {}
        return {(g, e, q): doc for g, e, q, doc in self.db.execute(
            self._docs_sql[level], (json.dumps(keys),))}

    def renew(self, keys: list[Key], now_ms: int) -> None:
        """Hold the lease on ``keys`` for another ``lease_s`` (a worker still retrying)."""
        until = now_ms + self.lease_ms
        self._write(f"UPDATE transactions SET {self.sink}_lease_ms = %s WHERE gateway = %s "
                    "AND epoch = %s AND seq = %s", [(until, *k) for k in keys],
                    f"{self.sink}_lease_ms = ?", (until,), keys)

    def release(self, keys: list[Key]) -> None:
        """Give ``keys`` back undelivered (a worker stopping): due again at once."""
        self._write(f"UPDATE transactions SET {self.sink}_lease_ms = NULL WHERE gateway = %s "
                    "AND epoch = %s AND seq = %s", list(keys),
                    f"{self.sink}_lease_ms = NULL", (), keys)

    def done(self, keys: list[Key], now_ms: int) -> None:
        """``keys`` delivered at ``now_ms``: out of the due index for good."""
        self._write(f"UPDATE transactions SET {self.sink}_ms = %s, {self.sink}_lease_ms = NULL "
                    "WHERE gateway = %s AND epoch = %s AND seq = %s",
                    [(now_ms, *k) for k in keys],
                    f"{self.sink}_ms = ?, {self.sink}_lease_ms = NULL", (now_ms,), keys)

    def refused(self, keys: list[Key]) -> None:
        """One more refusal for each of ``keys`` (``tries``); they stay leased."""
        self._write(f"UPDATE transactions SET {self.sink}_tries = {self.sink}_tries + 1 "
                    "WHERE gateway = %s AND epoch = %s AND seq = %s", list(keys),
                    f"{self.sink}_tries = {self.sink}_tries + 1", (), keys)

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
