"""The ledger's SQLite store: each event once, keyed by (gateway, epoch, seq).

A batch is stored in one transaction with ``INSERT OR IGNORE``: a resent batch (the
gateway did not see the ack, or failed over) costs nothing but a duplicate count. Each
batch received leaves a receipt row (range, records, duplicates, the gateway's send time
and the ledger's commit time), which the reconciliation report reads for latency, late
arrivals and duplicates. Epochs are 64-bit unsigned, so they are stored as 16 hex digits.

SQLite in WAL mode with ``synchronous=FULL``: an ack is published only after the commit
returns, so an acknowledged event survives a ledger power cut.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from firmware.core.wire import Batch

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    cls INTEGER NOT NULL, hlc INTEGER NOT NULL, body TEXT NOT NULL,
    sent_ms INTEGER NOT NULL, ledger_ms INTEGER NOT NULL,
    PRIMARY KEY (gateway, epoch, seq)) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS event_fields AS
    SELECT gateway, epoch, seq, cls, hlc, sent_ms, ledger_ms,
           json_extract(body, '$.src') AS source, json_extract(body, '$.k') AS kind,
           json_extract(body, '$.t') AS read_ms, json_extract(body, '$.d') AS data
    FROM events WHERE json_valid(body);
CREATE TABLE IF NOT EXISTS receipts (
    gateway TEXT NOT NULL, epoch TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
    records INTEGER NOT NULL, duplicates INTEGER NOT NULL, sent_ms INTEGER NOT NULL,
    ledger_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejections (
    ledger_ms INTEGER NOT NULL, gateway TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL);
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:///PATH`` (or a bare path) to a path."""
    if url.startswith("sqlite:///"):  # sqlite:///rel.db, sqlite:////abs/path.db
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        raise ValueError(f"--db {url!r}: only sqlite:///PATH is supported by this store")
    return Path(url)


class LedgerStore:
    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # Checkpoints copy the WAL into the database and sync it: tens of milliseconds that
        # would stall the writer (and every ack) when SQLite runs them inline. A separate
        # connection runs them passively once a second instead.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="ledger-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(1.0):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError:
                    pass  # busy: the next second's turn
        finally:
            db.close()

    def store(self, batch: Batch, ledger_ms: int) -> tuple[int, int]:
        """Insert the batch's events; returns (new, duplicates)."""
        return self.store_many([batch], ledger_ms)[0]

    def store_many(self, batches: list[Batch], ledger_ms: int) -> list[tuple[int, int]]:
        """Insert several batches in one transaction (one sync); (new, duplicates) each."""
        cur = self.db.cursor()
        out = []
        cur.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                epoch = f"{batch.epoch:016x}"
                gw, sent = batch.gateway, batch.sent_ms
                # Bodies are stored as sent; fields are read with json_extract (view
                # event_fields) when a report needs them: no JSON work per event at ingest.
                rows = [(gw, epoch, seq, cls, hlc, bytes(body).decode("utf-8", "replace"),
                         sent, ledger_ms) for seq, cls, hlc, body in batch.records]
                before = self.db.total_changes
                cur.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
                new = self.db.total_changes - before
                cur.execute("INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?)",
                            (gw, epoch, batch.first_seq, batch.last_seq, len(rows),
                             len(rows) - new, sent, ledger_ms))
                out.append((new, len(rows) - new))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return out

    def reject(self, gateway: str | None, reason: str, detail: str, ledger_ms: int) -> None:
        self.db.execute("INSERT INTO rejections VALUES (?,?,?,?)",
                        (ledger_ms, gateway, reason, detail))

    def count(self, gateway: str | None = None) -> int:
        if gateway is None:
            return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM events WHERE gateway=?",
                               (gateway,)).fetchone()[0]

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(5)
        self.db.close()
