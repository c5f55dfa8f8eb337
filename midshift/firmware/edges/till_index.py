"""The till API's idempotency index: Idempotency-Key -> the answer it was given.

A SQLite file beside the journal (``till-keys.sqlite``), written after the transaction is
durable in the journal and before the 201 leaves, ``synchronous=FULL``: a retry after a
power cut finds its key. The journal is the truth, the index a lookup: at start every
transaction record still in the journal (not yet reclaimed) is put back in, which
covers a power cut between the journal's sync and the index's.

Retention is bounded: rows older than ``retention_s`` whose transaction is in the ledger
are deleted (a till retries within minutes, a day at most), and never more than
``max_rows`` are kept.

Nothing that failed the card-data check ever reaches this file: only keys, digests,
identities and amounts of accepted transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY, till TEXT NOT NULL, sha TEXT NOT NULL, epoch TEXT NOT NULL,
    seq INTEGER NOT NULL, receipt TEXT NOT NULL, accepted_ms INTEGER NOT NULL,
    amount INTEGER NOT NULL, offline INTEGER NOT NULL)
"""
RETENTION_S = 7 * 86400
MAX_ROWS = 500_000
PRUNE_EVERY = 1000  # puts between prunes


class Entry:
    """An accepted transaction as the index keeps it."""

    __slots__ = ("key", "till", "sha", "epoch", "seq", "receipt", "accepted_ms", "amount",
                 "offline")

    def __init__(self, key: str, till: str, sha: str, epoch: str, seq: int, receipt: str,
                 accepted_ms: int, amount: int, offline: bool) -> None:
        self.key = key
        self.till = till
        self.sha = sha
        self.epoch = epoch
        self.seq = seq
        self.receipt = receipt
        self.accepted_ms = accepted_ms
        self.amount = amount
        self.offline = bool(offline)

    def row(self) -> tuple[Any, ...]:
        return (self.key, self.till, self.sha, self.epoch, self.seq, self.receipt,
                self.accepted_ms, self.amount, int(self.offline))


class IdempotencyIndex:
    def __init__(self, path: str | Path, retention_s: int = RETENTION_S,
                 max_rows: int = MAX_ROWS) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # on disk before the 201
        self._db.execute(SCHEMA)
        self._puts = 0

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM keys WHERE key = ?", (key,)).fetchone()
        return Entry(*row) if row else None

    def put(self, e: Entry) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO keys VALUES (?,?,?,?,?,?,?,?,?)", e.row())
            self._puts += 1

    def prune_due(self) -> bool:
        """Every ``PRUNE_EVERY`` puts: time for the caller to ``prune``."""
        return self._puts % PRUNE_EVERY == 0

    def put_missing(self, entries: list[Entry]) -> int:
        """Rebuild: the journal's transactions the index does not have; returns how many."""
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO keys VALUES (?,?,?,?,?,?,?,?,?)",
                                 [e.row() for e in entries])
            self._db.execute("COMMIT")
            return self._db.total_changes - before

    def prune(self, now_ms: int, epoch: str, committed_seq: int | None) -> None:
        """Drop what no till will retry: old and in the ledger (or from an older epoch);
        then the oldest beyond ``max_rows``."""
        cutoff = now_ms - self.retention_s * 1000
        with self._lock:
            self._db.execute("DELETE FROM keys WHERE accepted_ms < ? AND (epoch <> ? OR seq <= ?)",
                             (cutoff, epoch, committed_seq if committed_seq is not None
                              else -1))
            self._db.execute("DELETE FROM keys WHERE key IN (SELECT key FROM keys ORDER BY "
                             "accepted_ms DESC LIMIT -1 OFFSET ?)", (self.max_rows,))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM keys").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
