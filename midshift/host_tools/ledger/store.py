"""The ledger's store: what the worker and the reconciliation report need from a database.

Two backends behind one interface:

- ``sqlite:///PATH`` (or a bare path): ``sqlite_store.SqliteStore``, the embedded default,
  one file, one writer process. It migrates itself when opened.
- ``postgresql://...`` (or ``postgres://``): ``pg_store.PgStore`` on psycopg 3, for several
  workers on several machines. It never changes a schema on its own: ``python -m midshift.host_tools
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

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midshift.firmware.core.wire import Batch

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
    joined = b"".join([r[3] for r in batch.records])  # join takes any buffer as it is
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

    def write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """One statement in its own transaction (backend placeholders); the rows changed."""
        raise NotImplementedError

    # -- till transactions and review (issue 17; ``transactions.py`` books them) ------------
    placeholder = "?"

    def _select(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """``sql`` with ``?`` placeholders; rows as dicts."""
        cols = [c.strip().split(".")[-1].split(" ")[-1]
                for c in sql.split("SELECT", 1)[1].split("FROM", 1)[0].split(",")]
        return [dict(zip(cols, row, strict=True))
                for row in self.query(sql.replace("?", self.placeholder), args)]

    def transactions(self, store: str | None = None, day: str | None = None,
                     ) -> list[dict[str, Any]]:
        """Transaction rows (``migrations`` version 4 columns), by store, business day,
        till and till_seq; ``lines`` and ``tenders`` as lists, read from the event's body
        (as booking read them: absent is an empty list), ``offline`` as bool."""
        from midshift.host_tools.ledger.transactions import COLUMNS
        where, args = [], []
        for col, val in (("store", store), ("business_day", day)):
            if val is not None:
                where.append(f"t.{col} = ?")
                args.append(val)
        rows = self._select(f"SELECT {', '.join('t.' + c for c in COLUMNS)}, e.body "
                            "FROM transactions t JOIN events e ON e.gateway = t.gateway "
                            "AND e.epoch = t.epoch AND e.seq = t.seq"
                            + (f" WHERE {' AND '.join(where)}" if where else "")
                            + " ORDER BY t.store, t.business_day, t.till, t.till_seq, "
                            "t.accepted_ms", tuple(args))
        for r in rows:
            txn = json.loads(r.pop("body"))["d"]["txn"]
            r["lines"], r["tenders"] = txn.get("lines", []), txn.get("tenders", [])
            r["original"] = None if r["original"] is None else json.loads(r["original"])
            r["offline"] = bool(r["offline"])
        return rows

    def flags(self, open_only: bool = False) -> list[dict[str, Any]]:
        """Review flags, oldest first, with the flagged transaction's store, till,
        till_seq, business day and key (None for an ``invalid`` event, which has no row)."""
        return self._select(
            "SELECT f.id, f.gateway, f.epoch, f.seq, f.kind, f.detail, f.raised_ms, "
            "f.resolved_ms, f.resolved_by, f.resolution, t.store, t.till, t.till_seq, "
            "t.business_day, t.idem_key FROM flags f LEFT JOIN transactions t ON "
            "t.gateway = f.gateway AND t.epoch = f.epoch AND t.seq = f.seq"
            + (" WHERE f.resolved_ms IS NULL" if open_only else "") + " ORDER BY f.id")

    def resolve_flag(self, id: int, by: str, why: str) -> dict[str, Any]:
        """Resolve an open flag; ValueError when there is no such flag or it is already
        resolved (a resolution is never overwritten). Returns the resolved flag."""
        if not by.strip() or not why.strip():
            raise ValueError("a resolution needs who (--by) and why (--why)")
        changed = self.write("UPDATE flags SET resolved_ms = ?, resolved_by = ?, resolution = ? "
                             "WHERE id = ? AND resolved_ms IS NULL".replace("?", self.placeholder),
                             (int(time.time() * 1000), by, why, int(id)))
        flag = next((f for f in self.flags() if f["id"] == int(id)), None)
        if flag is None:
            raise ValueError(f"no flag {id}")
        if not changed:
            raise ValueError(f"flag {id} was already resolved by {flag['resolved_by']}: "
                             f"{flag['resolution']}")
        return flag

    def close_day(self, store: str, day: str, by: str) -> dict[str, Any]:
        """Close a store's business day; ValueError when it is closed already. Later
        arrivals for it are booked and flagged ``late``."""
        if not by.strip():
            raise ValueError("closing a day needs who (--by)")
        now = int(time.time() * 1000)
        changed = self.write("INSERT INTO closed_days VALUES (?, ?, ?, ?) ON CONFLICT "
                             "(store, business_day) DO NOTHING".replace("?", self.placeholder),
                             (store, day, now, by))
        row = next(r for r in self.closed_days() if (r["store"], r["business_day"]) == (store, day))
        if not changed:
            raise ValueError(f"business day {day} of {store} was already closed by "
                             f"{row['closed_by']}")
        return row

    def closed_days(self) -> list[dict[str, Any]]:
        return self._select("SELECT store, business_day, closed_ms, closed_by FROM closed_days "
                            "ORDER BY store, business_day")

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
