"""The gateway's reference data on flash: one SQLite file (``refdata.sqlite`` beside the
journal) with each dataset's rows, version and checksum.

A delta or a snapshot is written in one transaction together with its new version, so a
power cut leaves the old version or the new one, never rows of one under the version of
the other (WAL, ``synchronous=FULL``: a version the sync log says was applied is on
flash). The decision whether a delta applies is the core's (``core/refdata.py``); this
module only keeps what it decided.

Also here: snapshot chunks received so far (a snapshot resumes after a restart from the
chunks already stored), and the stock sold at the tills since the last authoritative level
(provisional: the next stock delta replaces the level, and the difference it made is kept
per SKU for the till and the status).

Reads take their own connection, so a till's price lookup does not wait for a long apply.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from midshift.firmware.core.refdata import DATASETS, EMPTY, RefdataGate

FILE = "refdata.sqlite"
SIGN = 1 << 63

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (name TEXT PRIMARY KEY, version INTEGER NOT NULL,
    checksum TEXT NOT NULL, published_ms INTEGER, synced_ms INTEGER);
CREATE TABLE IF NOT EXISTS rows (dataset TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    h INTEGER NOT NULL, PRIMARY KEY (dataset, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (dataset TEXT NOT NULL, version INTEGER NOT NULL,
    idx INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (dataset, version, idx));
CREATE TABLE IF NOT EXISTS stock_sold (sku TEXT PRIMARY KEY, sold_milli INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stock_corrections (sku TEXT PRIMARY KEY, provisional_milli INTEGER,
    authoritative_milli INTEGER, version INTEGER, at_ms INTEGER);
"""


def _signed(h: int) -> int:
    """A 64-bit hash as SQLite's signed INTEGER."""
    return h - (1 << 64) if h >= SIGN else h


def _unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class RefdataStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = _connect(self.path)
        self._db.executescript(SCHEMA)
        self._read = _connect(self.path)
        self._lock = threading.Lock()       # the writer
        self._read_lock = threading.Lock()  # the reader (tills)
        self.corrections = {"count": 0, "abs_milli": 0}

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._read.close()

    # ---- versions ----------------------------------------------------------------------

    def state(self, dataset: str) -> tuple[int, str, int | None, int | None]:
        """(version, checksum, published_ms, synced_ms); version 0 and the empty checksum
        before the first delta or snapshot."""
        with self._read_lock:
            row = self._read.execute("SELECT version, checksum, published_ms, synced_ms FROM "
                                     "datasets WHERE name = ?", (dataset,)).fetchone()
        return (0, EMPTY, None, None) if row is None else row

    def versions(self) -> dict[str, dict[str, Any]]:
        out = {}
        for ds in DATASETS:
            v, c, pub, synced = self.state(ds)
            out[ds] = {"version": v, "checksum": c, "published_ms": pub, "synced_ms": synced}
        return out

    def mark_synced(self, dataset: str, now_ms: int) -> None:
        """The gateway has just seen that its version is the newest published."""
        with self._lock:
            self._db.execute("UPDATE datasets SET synced_ms = ? WHERE name = ?", (now_ms, dataset))

    # ---- writing -----------------------------------------------------------------------

    def apply_delta(self, gate: RefdataGate, doc: dict[str, Any], now_ms: int) -> None:
        """Apply a verified delta if the gate says it follows (raises RefdataRejected
        otherwise: nothing written), rows and version in one transaction."""
        ds = doc["dataset"]
        with self._lock:
            row = self._db.execute("SELECT version, checksum FROM datasets WHERE name = ?",
                                   (ds,)).fetchone()
            version, checksum = row if row is not None else (0, EMPTY)
            gate.order(version, doc)
            old = self._hashes(ds, [op[0] for op in doc["ops"]
                                    if isinstance(op, list) and op and isinstance(op[0], str)])
            checksum, writes = gate.plan(doc, checksum, old.get)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if ds == "stock":
                    self._settle_stock(writes, doc["to"], now_ms)
                db.executemany("DELETE FROM rows WHERE dataset = ? AND key = ?",
                               [(ds, k) for k, text, _ in writes if text is None])
                db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?)",
                               [(ds, k, text, _signed(h)) for k, text, h in writes
                                if text is not None])
                db.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?)",
                           (ds, doc["to"], checksum, doc.get("published_ms"), now_ms))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            gate.applied += 1

    def _hashes(self, ds: str, keys: list[str]) -> dict[str, int]:
        """The stored hashes of ``keys`` (a few hundred per query)."""
        out: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            marks = ",".join("?" * len(part))
            for k, h in self._db.execute(f"SELECT key, h FROM rows WHERE dataset = ? AND key IN "
                                         f"({marks})", (ds, *part)):
                out[k] = _unsigned(h)
        return out

    def _settle_stock(self, writes: list[tuple[str, str | None, int]], version: int,
                      now_ms: int) -> None:
        """Before the rows change: the authoritative level replaces what the tills sold
        since; keep, per SKU, the provisional level it replaced and the new one."""
        sold = dict(self._db.execute("SELECT sku, sold_milli FROM stock_sold"))
        if not sold:
            return
        for key, text, _ in writes:
            if key not in sold:
                continue
            before = self._db.execute("SELECT value FROM rows WHERE dataset = 'stock' AND "
                                      "key = ?", (key,)).fetchone()
            old = _qty(before[0]) if before is not None else None
            provisional = None if old is None else old - sold[key]
            new = _qty(text)
            self._db.execute("DELETE FROM stock_sold WHERE sku = ?", (key,))
            self._db.execute("INSERT OR REPLACE INTO stock_corrections VALUES (?, ?, ?, ?, ?)",
                             (key, provisional, new, version, now_ms))
            self.corrections["count"] += 1
            if provisional is not None and new is not None:
                self.corrections["abs_milli"] += abs(new - provisional)

    def put_chunk(self, doc: dict[str, Any], raw: bytes) -> None:
        """Keep a verified snapshot chunk; chunks of other versions of the dataset go."""
        with self._lock:
            self._db.execute("DELETE FROM chunks WHERE dataset = ? AND version != ?",
                             (doc["dataset"], doc["version"]))
            self._db.execute("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)",
                             (doc["dataset"], doc["version"], doc["index"], raw))

    def missing_chunks(self, dataset: str, version: int, count: int) -> list[int]:
        with self._lock:
            have = {r[0] for r in self._db.execute(
                "SELECT idx FROM chunks WHERE dataset = ? AND version = ?", (dataset, version))}
        return [i for i in range(count) if i not in have]

    def install_snapshot(self, gate: RefdataGate, dataset: str, version: int,
                         now_ms: int, published_ms: int | None = None) -> None:
        """Replace the dataset with the complete stored snapshot, one transaction."""
        with self._lock:
            raws = [r[0] for r in self._db.execute(
                "SELECT body FROM chunks WHERE dataset = ? AND version = ? ORDER BY idx",
                (dataset, version))]
            chunks = [gate.read(raw) for raw in raws]
            try:
                checksum, rows = gate.snapshot_rows(chunks)
            except Exception:
                self._db.execute("DELETE FROM chunks WHERE dataset = ?", (dataset,))
                raise
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM rows WHERE dataset = ?", (dataset,))
                db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)",
                               [(dataset, k, text, _signed(h)) for k, text, h in rows])
                if dataset == "stock":
                    db.execute("DELETE FROM stock_sold")
                db.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?)",
                           (dataset, version, checksum, published_ms, now_ms))
                db.execute("DELETE FROM chunks WHERE dataset = ?", (dataset,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def sold(self, lines: list[tuple[str, int]]) -> None:
        """A sale took ``qty_milli`` of each SKU (negative: a refund put it back):
        provisional until the next stock delta."""
        with self._lock:
            self._db.executemany(
                "INSERT INTO stock_sold VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET "
                "sold_milli = sold_milli + excluded.sold_milli", lines)

    # ---- reading -----------------------------------------------------------------------

    def read(self, dataset: str, key: str) -> tuple[Any, int, int | None, int | None]:
        """(the row's value or None, version, published_ms, synced_ms) in one query: a
        till's lookup is one trip into SQLite (each one gives up the GIL and waits to get
        it back behind whatever else runs)."""
        with self._read_lock:
            row = self._read.execute(
                "SELECT (SELECT value FROM rows WHERE dataset = ?1 AND key = ?2), version, "
                "published_ms, synced_ms FROM (SELECT 1) LEFT JOIN datasets ON name = ?1",
                (dataset, key)).fetchone()
        value = None if row[0] is None else json.loads(row[0])
        return value, row[1] or 0, row[2], row[3]

    def rows(self, dataset: str) -> dict[str, Any]:
        """Every row of ``dataset`` (small ones: the sell rules), by key."""
        with self._read_lock:
            got = self._read.execute("SELECT key, value FROM rows WHERE dataset = ?",
                                     (dataset,)).fetchall()
        return {k: json.loads(v) for k, v in got}

    def lookup(self, dataset: str, key: str) -> Any:
        """The row's value, or None."""
        with self._read_lock:
            row = self._read.execute("SELECT value FROM rows WHERE dataset = ? AND key = ?",
                                     (dataset, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def stock(self, sku: str) -> dict[str, Any] | None:
        """The authoritative level, what was sold since, the provisional level, and the
        last correction a delta made; None when the SKU has no stock row."""
        with self._read_lock:
            row = self._read.execute("SELECT value FROM rows WHERE dataset = 'stock' AND "
                                     "key = ?", (sku,)).fetchone()
            sold = self._read.execute("SELECT sold_milli FROM stock_sold WHERE sku = ?",
                                      (sku,)).fetchone()
            corr = self._read.execute("SELECT provisional_milli, authoritative_milli, version, "
                                      "at_ms FROM stock_corrections WHERE sku = ?",
                                      (sku,)).fetchone()
        if row is None:
            return None
        level = _qty(row[0])
        sold_milli = sold[0] if sold is not None else 0
        return {"authoritative_milli": level, "sold_since_milli": sold_milli,
                "qty_milli": None if level is None else level - sold_milli,
                "last_correction": None if corr is None else {
                    "provisional_milli": corr[0], "authoritative_milli": corr[1],
                    "difference_milli": None if corr[0] is None or corr[1] is None
                    else corr[1] - corr[0], "version": corr[2], "at_ms": corr[3]}}

    def checksum_now(self, dataset: str) -> str:
        """The checksum recomputed from the stored rows (tests and ``verify``)."""
        from midshift.firmware.core.refdata import checksum_hex
        with self._read_lock:
            total = sum(_unsigned(h) for (h,) in self._read.execute(
                "SELECT h FROM rows WHERE dataset = ?", (dataset,)))
        return checksum_hex(total)


def _qty(text: str | None) -> int | None:
    if text is None:
        return None
    value = json.loads(text)
    q = value.get("qty_milli") if isinstance(value, dict) else None
    return q if isinstance(q, int) and not isinstance(q, bool) else None
