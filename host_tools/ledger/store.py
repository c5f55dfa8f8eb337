"""The ledger's store: what the worker and the reconciliation report need from a database.

Two backends behind one interface:

- ``sqlite:///PATH`` (or a bare path): ``sqlite_store.SqliteStore``, the embedded default,
  one file, one writer process. It migrates itself when opened.
- ``postgresql://...`` (or ``postgres://``): ``pg_store.PgStore`` on psycopg 3, for several
  workers on several machines. It never changes a schema on its own: ``python -m host_tools
  ledger migrate --db URL`` does, once, so that N workers starting together do not race
  each other's DDL; a worker on an unmigrated database stops with one line saying so.

This module is the interface only; ``opener.open_store(url)`` picks the backend from the
URL. The backends import this module, never the reverse.

Every event is stored once under the unique key ``(gateway, epoch, seq)``; a batch is
stored in one transaction and ``store_many`` returns only after it has committed, so the
caller acknowledges only what is durable. Epochs are stored as 16 hex digits on both
backends, so reports are byte-identical.

What a store can hold is checked before anything is written (``unstorable``): seqs, HLCs
and send times in a signed 64-bit INTEGER/BIGINT (``MAX_INT``; the wire carries unsigned
64-bit), bodies as text byte for byte (UTF-8 without NUL, which a PostgreSQL text value
cannot hold): a body the store would alter is refused, never stored altered.

Rejections are kept aggregated: one row per (gateway, reason, minute) with a count, the
first and last time and the last detail (``REJECTION_INTERVAL_MS``), rows older than
``REJECTION_RETAIN_MS`` pruned, so a flood of forged batches costs a counter, not a row
each, and the table stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firmware.core.wire import Batch

# One row of ``event_rows``: gateway, epoch (hex), seq, ledger_ms, body (JSON text as sent).
# Bodies are parsed by the one caller that needs their fields (the reconciliation report),
# in Python, so both backends give it exactly the same input.
EventRow = tuple[str, str, int, int, str]
# One row of ``record_rejections``: gateway ('' when it is not a registered one), reason,
# interval start, count, first ms, last ms, last detail.
RejectionRow = tuple[str, str, int, int, int, int, str]

MAX_INT = (1 << 63) - 1  # INTEGER (SQLite) and BIGINT (PostgreSQL) are signed 64-bit
REJECTION_INTERVAL_MS = 60_000
REJECTION_RETAIN_MS = 7 * 24 * 3600 * 1000


def unstorable(batch: Batch) -> tuple[str, str] | None:
    """(reason, detail) when ``batch`` cannot be stored exactly as sent, else None. Seqs,
    HLCs and ``sent_ms`` are checked by ``decode_batch(max_int=MAX_INT)``; the bodies here,
    once per batch over all of them (C speed)."""
    joined = b"".join([bytes(r[3]) for r in batch.records])
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "bad_body", f"a body is not UTF-8 ({exc.reason} at byte {exc.start} of the bodies)"
    if b"\x00" in joined:
        return "bad_body", "a body holds a NUL byte, which the store cannot hold as text"
    return None


class StoreError(RuntimeError):
    """The store cannot be used as asked (bad URL, unreachable, not migrated); one line."""


def sqlite_path(url: str) -> Path:
    """``sqlite:///PATH`` (or a bare path) to a path."""
    if url.startswith("sqlite:///"):  # sqlite:///rel.db, sqlite:////abs/path.db
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        raise ValueError(f"--db {url!r}: expected sqlite:///PATH or postgresql://...")
    return Path(url)


def backend_of(url: str) -> str:
    """``sqlite`` or ``postgresql``; ValueError with the accepted forms otherwise."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    sqlite_path(url)  # raises for any other scheme (mysql://, ...)
    return "sqlite"


class LedgerStore:
    """The interface of a ledger store; ``opener.open_store(url)`` opens one."""

    backend = ""
    description = ""  # where the data lives, for people (a path, or a URL without password)

    # -- ingest ------------------------------------------------------------------------
    def store(self, batch: Batch, ledger_ms: int) -> tuple[int, int]:
        """Insert one batch's events; returns (new, duplicates)."""
        return self.store_many([batch], ledger_ms)[0]

    def store_many(self, batches: list[Batch], ledger_ms: int) -> list[tuple[int, int]]:
        """Insert several batches in one transaction; (new, duplicates) for each, returned
        only after the commit."""
        raise NotImplementedError

    def reject(self, gateway: str | None, reason: str, detail: str, ledger_ms: int) -> None:
        """Record one rejection (the service aggregates many into ``record_rejections``)."""
        start = ledger_ms - ledger_ms % REJECTION_INTERVAL_MS
        self.record_rejections([(gateway or "", reason, start, 1, ledger_ms, ledger_ms,
                                 detail)], ledger_ms)

    def record_rejections(self, rows: list[RejectionRow], ledger_ms: int) -> None:
        """Add aggregated rejections (counts summed per gateway, reason and interval) in one
        transaction; rows older than ``REJECTION_RETAIN_MS`` go."""
        raise NotImplementedError

    def transient(self, exc: BaseException) -> bool:
        """True when ``exc`` from ``store_many`` says the database is unavailable (the
        batches may succeed later), False when it is about the batches themselves."""
        raise NotImplementedError

    # -- reading -------------------------------------------------------------------------
    def count(self, gateway: str | None = None) -> int:
        raise NotImplementedError

    def event_rows(self) -> Iterator[EventRow]:
        """Every event, ordered by gateway, epoch, seq (see ``EventRow``)."""
        raise NotImplementedError

    def duplicates_by_epoch(self) -> dict[tuple[str, str], int]:
        """Duplicates discarded per (gateway, epoch), from the receipts."""
        raise NotImplementedError

    def rejection_count(self) -> int:
        raise NotImplementedError

    def keys(self) -> list[tuple[str, str, int]]:
        """Every stored (gateway, epoch, seq), sorted: for tests that compare stores."""
        raise NotImplementedError

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Raw SQL in the backend's dialect and placeholder style (``?`` / ``%s``)."""
        raise NotImplementedError

    # -- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        raise NotImplementedError

    def migrate(self) -> list[int]:
        """Apply every migration not yet applied; returns the versions applied now."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
