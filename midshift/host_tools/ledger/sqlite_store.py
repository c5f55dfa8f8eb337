"""The ledger's SQLite store: the embedded default, one file, one writer process.

A group of batches is stored in one transaction with ``INSERT OR IGNORE``: a resent batch
(the gateway did not see the ack, or failed over) costs nothing but a duplicate count.
Each batch received leaves a receipt row (range, records, duplicates, the gateway's send
time and the ledger's commit time), which the reconciliation report reads for latency,
late arrivals and duplicates.

WAL mode with ``synchronous=FULL``: ``store_many`` returns after the commit has been
synced, and the ack is published only then, so an acknowledged event survives a ledger
power cut. The store migrates itself when opened (``migrations.SQLITE``).

Checkpoints (copying the WAL into the database file and syncing it) run on a thread of
their own once a second, but not while a backlog drains (more than ``BURST_EVENTS``
stored in the last second), for ``MAX_DEFER_S`` at most: copying and syncing the WAL of
a 90,000-transaction drain took about a tenth of the ledger's CPU and competed with the
commits for the disk. The WAL is synced at every commit whatever the checkpointer does,
so durability does not depend on it; a deferred checkpoint only makes the WAL longer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from itertools import repeat
from typing import Any

from midshift.firmware.core.wire import Batch
from midshift.host_tools.ledger.migrations import SCHEMA_VERSION_TABLE, SQLITE
from midshift.host_tools.ledger.store import (
    REJECTION_RETAIN_MS,
    EventRow,
    LedgerStore,
    RejectionRow,
    sqlite_path,
)
from midshift.host_tools.ledger.transactions import Booker, Candidate, candidate_seqs

BURST_EVENTS = 5000  # events stored within a second that make it a drain: no checkpoint yet
MAX_DEFER_S = 10.0  # a checkpoint is put off this long at most (the WAL grows meanwhile)


class SqliteStore(LedgerStore):
    backend = "sqlite"

    def __init__(self, url: str, migrate: bool = True) -> None:
        # ``migrate`` is accepted for the common signature: an embedded file is always
        # brought to the latest schema (one process owns it, nothing can race).
        self.path = sqlite_path(url)
        self.description = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.migrate()
        # Checkpoints copy the WAL into the database and sync it: tens of milliseconds that
        # would stall the writer (and every ack) when SQLite runs them inline. A separate
        # connection runs them passively once a second instead.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.stored = 0  # events stored by this connection so far (the checkpointer reads it)
        self.checkpoints = 0  # checkpoints run by the checkpointer
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="ledger-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        seen, deferred_since = self.stored, None
        try:
            while not self._stop.wait(1.0):
                stored = self.stored
                if stored - seen > BURST_EVENTS:  # a drain: after it, unless it lasts
                    now = time.monotonic()
                    deferred_since = deferred_since or now
                    if now - deferred_since < MAX_DEFER_S:
                        seen = stored
                        continue
                seen, deferred_since = stored, None
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    self.checkpoints += 1
                except sqlite3.OperationalError:
                    pass  # busy: the next second's turn
        finally:
            db.close()

    def schema_version(self) -> int:
        self.db.execute(SCHEMA_VERSION_TABLE)
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version"
                               ).fetchone()[0]

    def migrate(self) -> list[int]:
        applied = []
        current = self.schema_version()
        for version, sql in SQLITE:
            if version <= current:
                continue
            # executescript commits first; the script and its record share a transaction.
            self.db.executescript(f"BEGIN IMMEDIATE;\n{sql}\nINSERT INTO schema_version "
                                  f"VALUES ({version}, {int(time.time() * 1000)});\nCOMMIT;")
            applied.append(version)
        return applied

    def store_many(self, batches: list[Batch], ledger_ms: int) -> list[tuple[int, int]]:
        cur = self.db.cursor()
        out = []
        booked: list[Candidate] = []
        cur.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                epoch = f"{batch.epoch:016x}"
                gw, sent = batch.gateway, batch.sent_ms
                # Bodies are stored as sent; fields are read with json_extract (view
                # event_fields) when a report needs them: no JSON work per event at ingest,
                # except for till transactions (``transactions.py``): only the newly stored
                # ones are booked, so the batch's seqs already held are read first (this
                # connection is the only writer, inside BEGIN IMMEDIATE).
                txns = candidate_seqs(batch)
                held = {s for (s,) in cur.execute(
                    "SELECT seq FROM events WHERE gateway = ? AND epoch = ? AND seq BETWEEN "
                    "? AND ?", (gw, epoch, batch.first_seq, batch.last_seq))} if txns else ()
                seqs, classes, hlcs, bodies = zip(*batch.records, strict=True) \
                    if batch.records else ((), (), (), ())
                # str(body, ...) takes any buffer, bytes or memoryview, without a copy first.
                texts = [str(body, "utf-8", "replace") for body in bodies]
                before = self.db.total_changes
                cur.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?)",
                                zip(repeat(gw), repeat(epoch), seqs, classes, hlcs, texts,
                                    repeat(sent), repeat(ledger_ms)))
                # Booked from the text just stored (``unstorable``: exact UTF-8); records
                # come in ascending seq order (``decode_batch`` refuses others).
                if len(txns) == len(seqs) and not held:  # a batch of new transactions
                    booked += zip(repeat(gw), repeat(epoch), seqs, texts)
                elif txns:
                    booked += [(gw, epoch, seq, text) for seq, text in zip(seqs, texts, strict=True)
                               if seq in txns and seq not in held]
                new = self.db.total_changes - before
                n = len(batch.records)
                cur.execute("INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?)",
                            (gw, epoch, batch.first_seq, batch.last_seq, n, n - new, sent,
                             ledger_ms))
                out.append((new, len(batch.records) - new))
            if booked:
                Booker(cur, "?").book(booked, ledger_ms)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self.stored += sum(new for new, _ in out)
        return out

    def record_rejections(self, rows: list[RejectionRow], ledger_ms: int) -> None:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.executemany(
                "INSERT INTO rejections VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (gateway, reason, interval_ms) DO UPDATE SET "
                "count = count + excluded.count, first_ms = MIN(first_ms, excluded.first_ms), "
                "last_ms = MAX(last_ms, excluded.last_ms), detail = excluded.detail", rows)
            cur.execute("DELETE FROM rejections WHERE interval_ms < ?",
                        (ledger_ms - REJECTION_RETAIN_MS,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError)  # locked, I/O error, disk full

    def count(self, gateway: str | None = None) -> int:
        if gateway is None:
            return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM events WHERE gateway=?",
                               (gateway,)).fetchone()[0]

    def event_rows(self) -> Iterator[EventRow]:
        yield from self.db.execute(
            "SELECT gateway, epoch, seq, ledger_ms, body FROM events "
            "ORDER BY gateway, epoch, seq")

    def duplicates_by_epoch(self) -> dict[tuple[str, str], int]:
        return {(g, e): n or 0 for g, e, n in self.db.execute(
            "SELECT gateway, epoch, SUM(duplicates) FROM receipts GROUP BY gateway, epoch")}

    def rejection_count(self) -> int:
        return self.db.execute("SELECT COALESCE(SUM(count), 0) FROM rejections").fetchone()[0]

    def keys(self) -> list[tuple[str, str, int]]:
        return self.db.execute("SELECT gateway, epoch, seq FROM events "
                               "ORDER BY gateway, epoch, seq").fetchall()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return self.db.execute(sql, args).rowcount  # autocommit: its own transaction

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(5)
        self.db.close()
