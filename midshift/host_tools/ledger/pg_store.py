"""The ledger's PostgreSQL store (psycopg 3): several workers, one database.

Ingest is one ``COPY`` per group of batches, not one ``INSERT`` per event: the worker
writes every event of up to ``MAX_GROUP`` MQTT batches as COPY text into ``events`` and
the receipts into ``receipts``, in one transaction, and returns only after ``COMMIT``
(``synchronous_commit`` as the server has it, ``on`` by default: the WAL is flushed before
the commit returns). Duplicates are rare (a resend after a lost ack, a failover), so the
first try is a straight COPY; if the unique key ``(gateway, epoch, seq)`` refuses it, the
whole transaction is rolled back and the group goes again through a temporary staging
table with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` per batch, which also gives
each batch its duplicate count for the ack. Either way nothing is acknowledged before its
transaction has committed, and a worker killed mid-COPY leaves no trace (the
transaction never committed; the broker redelivers the unacknowledged batches).

The store never changes a schema on its own (see ``store.py``); it stops with one line
when the database is unreachable, unmigrated, or newer than this code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from midshift.firmware.core.wire import Batch
from midshift.host_tools.ledger.migrations import POSTGRESQL, SCHEMA_VERSION_TABLE
from midshift.host_tools.ledger.store import (
    REJECTION_RETAIN_MS,
    EventRow,
    LedgerStore,
    RejectionRow,
    StoreError,
)
from midshift.host_tools.ledger.transactions import Booker, Candidate, candidates

MIGRATION_LOCK = 0x6D696473  # pg_advisory_xact_lock key: concurrent `migrate` runs queue up
_SPECIAL = ("\\", "\t", "\n", "\r", "\x00")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _escape(text: str) -> str:
    """COPY text format: backslash, tab, newline and CR escaped; NUL (which a PostgreSQL
    text value cannot hold) replaced, so one odd body cannot wedge a gateway's stream."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\x00", "\ufffd"))


def copy_text(batches: list[Batch], ledger_ms: int, prefix: str = "") -> str:
    """The events of ``batches`` as COPY text rows in the column order of ``events``;
    ``prefix`` (e.g. a batch number and a tab) starts each row of batch i as
    ``prefix.format(i)``."""
    out: list[str] = []
    for i, batch in enumerate(batches):
        head = f"{prefix.format(i)}{_escape(batch.gateway)}\t{batch.epoch:016x}\t"
        tail = f"\t{batch.sent_ms}\t{ledger_ms}\n"
        recs = batch.records
        # Checked once per batch over all bodies (C speed), not per event.
        joined = b"".join([r[3] for r in recs])
        try:
            text = joined.decode("utf-8")
            plain = not any(c in text for c in _SPECIAL)
        except UnicodeDecodeError:
            plain = False
        if plain:
            out += [f"{head}{seq}\t{cls}\t{hlc}\t{bytes(body).decode()}{tail}"
                    for seq, cls, hlc, body in recs]
        else:
            out += [f"{head}{seq}\t{cls}\t{hlc}\t"
                    f"{_escape(bytes(body).decode('utf-8', 'replace'))}{tail}"
                    for seq, cls, hlc, body in recs]
    return "".join(out)


class PgStore(LedgerStore):
    backend = "postgresql"

    def __init__(self, url: str, migrate: bool = False, connect_timeout_s: int = 5) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("the PostgreSQL ledger needs psycopg 3: pip install "
                             "'psycopg[binary]>=3.1,<4' (or the project's pg extra)") from None
        self._psycopg = psycopg
        self.url = url
        self.description = redact_url(url)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout_s)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"--db {self.description}: cannot connect: {first}") from None
        self._lock = threading.Lock()  # one connection: one transaction at a time
        if migrate:
            self.migrate()
        have, want = self.schema_version(), POSTGRESQL[-1][0]
        if have != want:
            self.conn.close()
            if have > want:
                raise StoreError(f"--db {self.description}: schema version {have} is newer "
                                 f"than this ledger ({want}); upgrade midshift")
            raise StoreError(f"--db {self.description}: schema version {have}, this ledger "
                             f"needs {want}: run `python -m midshift.host_tools ledger migrate --db URL`")

    # -- schema --------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._lock:
            row = self.conn.execute(
                "SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            return self.conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

    def migrate(self) -> list[int]:
        applied = []
        with self._lock, self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self.conn.execute(SCHEMA_VERSION_TABLE)
            current = self.conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            for version, sql in POSTGRESQL:
                if version <= current:
                    continue
                self.conn.execute(sql)
                self.conn.execute("INSERT INTO schema_version VALUES (%s, %s)",
                                  (version, int(time.time() * 1000)))
                applied.append(version)
        return applied

    # -- ingest ----------------------------------------------------------------------------
    def _connection(self) -> Any:
        """The connection, opened again if the server restarted or the link broke (the
        failed group was never acknowledged: its batches come again)."""
        if self.conn.closed or self.conn.broken:
            self.conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        return self.conn

    def store_many(self, batches: list[Batch], ledger_ms: int) -> list[tuple[int, int]]:
        if not batches:
            return []
        # Rows go in key order, so two workers holding overlapping resends lock the same
        # keys in the same order and wait for each other instead of deadlocking.
        order = sorted(range(len(batches)), key=lambda i: (
            batches[i].gateway, batches[i].epoch, batches[i].first_seq))
        ordered = [batches[i] for i in order]
        errors = self._psycopg.errors
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy("COPY events FROM STDIN") as cp:
                        cp.write(copy_text(ordered, ledger_ms))
                    self._copy_receipts(cur, [(b, len(b.records), 0) for b in ordered],
                                        ledger_ms)
                    # Every event was new (the COPY would have failed otherwise): book
                    # every transaction among them, in this same transaction.
                    booked = [(b.gateway, f"{b.epoch:016x}", seq, body) for b in ordered
                              for seq, body in candidates(b).items()]
                    if booked:
                        Booker(cur, "%s").book(booked, ledger_ms)
                return [(len(b.records), 0) for b in batches]
            except (errors.UniqueViolation, errors.DeadlockDetected):
                pass  # some were stored before: the slow path counts them per batch
            for attempt in range(3):  # a deadlock with another worker's resend: again
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        counts = self._store_with_duplicates(cur, ordered, ledger_ms)
                        self._copy_receipts(cur, [(b, len(b.records), dup) for b, (_, dup)
                                                  in zip(ordered, counts, strict=True)],
                                            ledger_ms)
                    break
                except errors.DeadlockDetected:
                    if attempt == 2:
                        raise
        by_index = dict(zip(order, counts, strict=True))
        return [by_index[i] for i in range(len(batches))]

    def _store_with_duplicates(self, cur: Any, batches: list[Batch],
                               ledger_ms: int) -> list[tuple[int, int]]:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS staging (b INTEGER, LIKE events) "
                    "ON COMMIT DELETE ROWS")
        with cur.copy("COPY staging FROM STDIN") as cp:
            cp.write(copy_text(batches, ledger_ms, prefix="{}\t"))
        out = []
        booked: list[Candidate] = []
        for i, batch in enumerate(batches):
            txns = candidates(batch)
            cur.execute("INSERT INTO events SELECT gateway, epoch, seq, cls, hlc, body, "
                        "sent_ms, ledger_ms FROM staging WHERE b = %s "
                        "ON CONFLICT DO NOTHING" + (" RETURNING seq" if txns else ""), (i,))
            new = max(cur.rowcount, 0)
            if txns:  # only the newly stored ones are booked
                epoch = f"{batch.epoch:016x}"
                booked += [(batch.gateway, epoch, seq, txns[seq]) for (seq,) in cur.fetchall()
                           if seq in txns]
            out.append((new, len(batch.records) - new))
        if booked:
            Booker(cur, "%s").book(booked, ledger_ms)
        return out

    @staticmethod
    def _copy_receipts(cur: Any, rows: list[tuple[Batch, int, int]], ledger_ms: int) -> None:
        with cur.copy("COPY receipts FROM STDIN") as cp:
            cp.write("".join(f"{_escape(b.gateway)}\t{b.epoch:016x}\t{b.first_seq}\t"
                             f"{b.last_seq}\t{n}\t{dup}\t{b.sent_ms}\t{ledger_ms}\n"
                             for b, n, dup in rows))

    def record_rejections(self, rows: list[RejectionRow], ledger_ms: int) -> None:
        clean = [(g.replace("\x00", "\ufffd"), r, i, n, f, last, d.replace("\x00", "\ufffd"))
                 for g, r, i, n, f, last, d in rows]
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO rejections VALUES (%s,%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (gateway, reason, interval_ms) DO UPDATE SET "
                    "count = rejections.count + excluded.count, "
                    "first_ms = LEAST(rejections.first_ms, excluded.first_ms), "
                    "last_ms = GREATEST(rejections.last_ms, excluded.last_ms), "
                    "detail = excluded.detail", clean)
                cur.execute("DELETE FROM rejections WHERE interval_ms < %s",
                            (ledger_ms - REJECTION_RETAIN_MS,))

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError))

    # -- reading ---------------------------------------------------------------------------
    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()  # type: ignore[arg-type]

    placeholder = "%s"

    def write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._connection().execute(sql, args).rowcount  # autocommit

    def count(self, gateway: str | None = None) -> int:
        if gateway is None:
            return self.query("SELECT COUNT(*) FROM events")[0][0]
        return self.query("SELECT COUNT(*) FROM events WHERE gateway = %s", (gateway,))[0][0]

    def event_rows(self) -> Iterator[EventRow]:
        yield from self.query(
            "SELECT gateway, epoch, seq, ledger_ms, body FROM events "
            "ORDER BY gateway, epoch, seq")  # type: ignore[misc]

    def duplicates_by_epoch(self) -> dict[tuple[str, str], int]:
        return {(g, e): int(n or 0) for g, e, n in self.query(
            "SELECT gateway, epoch, SUM(duplicates) FROM receipts GROUP BY gateway, epoch")}

    def rejection_count(self) -> int:
        return int(self.query("SELECT COALESCE(SUM(count), 0) FROM rejections")[0][0])

    def keys(self) -> list[tuple[str, str, int]]:
        return self.query("SELECT gateway, epoch, seq FROM events "
                          "ORDER BY gateway, epoch, seq")  # type: ignore[return-value]

    def close(self) -> None:
        self.conn.close()
