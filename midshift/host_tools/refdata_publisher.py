"""The ledger side of reference data: versions, deltas and what is left on the broker.

The publisher's history is its own SQLite file in the site directory
(``SITE_DIR/refdata/<store>.sqlite``; not the ledger's database, so it needs no ledger
migration): per dataset the rows last published, and every delta with its version.
Publishing a file diffs it against the last version, writes version N+1 and its delta in
one transaction, and then leaves on the broker, per gateway of the store, signed with that
gateway's command key (``provision`` made it), retained:

- ``.../refdata/<dataset>/snapshot/<N+1>/<i>``: the whole dataset in chunks of ``CHUNK_ROWS``
  (the previous version's chunks are cleared);
- ``.../refdata/<dataset>/delta/<N+1>``: the delta; the one ``KEEP_DELTAS`` versions back is
  cleared, so the broker holds the last ``KEEP_DELTAS``;
- ``.../refdata/<dataset>/latest``: the pointer, last, so a gateway that sees it finds the
  rest already there.

If the broker is unreachable the version stays written here and the next ``publish`` (of
the same file, or any) leaves it on the broker: publishing the latest version again is
harmless, a gateway ignores what is not newer.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from midshift.firmware.core import topics
from midshift.firmware.core.refdata import (
    VERSION,
    checksum_hex,
    row_hash,
    row_text,
    sign_message,
)
from midshift.firmware.core.signing import Signer

CHUNK_ROWS = 2000
KEEP_DELTAS = 16
INT = re.compile(r"-?[0-9]+")
# What a row of each dataset must carry (the tills and the gateway read these fields).
REQUIRED = {"prices": ("price",), "stock": ("qty_milli",), "promotions": (), "sell_rules": ()}

SCHEMA = """
CREATE TABLE IF NOT EXISTS current (dataset TEXT NOT NULL, key TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (dataset, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (dataset TEXT NOT NULL, version INTEGER NOT NULL,
    checksum TEXT NOT NULL, ops TEXT NOT NULL, rows INTEGER NOT NULL, chunks INTEGER NOT NULL,
    published_ms INTEGER NOT NULL, source TEXT, PRIMARY KEY (dataset, version));
"""


class RefdataFileError(ValueError):
    """A file that cannot be published: one line saying where and what is expected."""


def read_rows(path: Path, dataset: str) -> dict[str, Any]:
    """``{key: value}`` from a CSV (a header; the first column ``sku`` or ``key``; integer
    cells become integers, empty cells are left out) or JSON file (``{key: {...}}`` or a
    list of objects with ``sku`` or ``key``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise RefdataFileError(f"{path}: cannot read: {exc}") from None
    if path.suffix.lower() == ".json":
        rows = _json_rows(path, text)
    elif path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text)
    else:
        raise RefdataFileError(f"{path}: not .csv or .json")
    for key, value in rows.items():
        if not isinstance(value, dict):
            raise RefdataFileError(f"{path}: {key}: a row is an object of fields")
        for need in REQUIRED[dataset]:
            v = value.get(need)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RefdataFileError(f"{path}: {key}: {need} {v!r} is not an integer >= 0 "
                                       f"(minor units; quantities in milli)")
    return rows


def _json_rows(path: Path, text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RefdataFileError(f"{path}: not JSON: {exc}") from None
    if isinstance(doc, dict):
        return doc
    if not isinstance(doc, list):
        raise RefdataFileError(f"{path}: JSON is an object {{key: row}} or a list of rows")
    rows: dict[str, Any] = {}
    for i, item in enumerate(doc):
        key = item.get("sku", item.get("key")) if isinstance(item, dict) else None
        if not isinstance(key, str) or not key:
            raise RefdataFileError(f"{path}: [{i}]: a row needs \"sku\" or \"key\" (a string)")
        if key in rows:
            raise RefdataFileError(f"{path}: [{i}]: {key} appears twice")
        rows[key] = {k: v for k, v in item.items() if k not in ("sku", "key")}
    return rows


def _csv_rows(path: Path, text: str) -> dict[str, Any]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or header[0].strip() not in ("sku", "key"):
        raise RefdataFileError(f"{path}: line 1: the header's first column is sku or key")
    names = [h.strip() for h in header]
    rows: dict[str, Any] = {}
    for line, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(names):
            raise RefdataFileError(f"{path}: line {line}: {len(cells)} cells, the header has "
                                   f"{len(names)}")
        key = cells[0].strip()
        if not key:
            raise RefdataFileError(f"{path}: line {line}: no {names[0]}")
        if key in rows:
            raise RefdataFileError(f"{path}: line {line}: {key} appears twice")
        value: dict[str, Any] = {}
        for name, cell in zip(names[1:], cells[1:], strict=True):
            cell = cell.strip()
            if cell:
                value[name] = int(cell) if INT.fullmatch(cell) else cell
        rows[key] = value
    return rows


class Publisher:
    """One store's history; ``publish`` makes a version, ``messages`` what goes out."""

    def __init__(self, site_dir: Path, store: str) -> None:
        d = Path(site_dir) / "refdata"
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"{store}.sqlite"
        self.store = store
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def latest(self, dataset: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT version, checksum, rows, chunks, published_ms, source "
                              "FROM versions WHERE dataset = ? ORDER BY version DESC LIMIT 1",
                              (dataset,)).fetchone()
        if row is None:
            return None
        return dict(zip(("version", "checksum", "rows", "chunks", "published_ms", "source"),
                        row, strict=True))

    def history(self, dataset: str, limit: int = 10) -> list[dict[str, Any]]:
        return [dict(zip(("version", "checksum", "rows", "changes", "published_ms", "source"),
                         r, strict=True)) for r in self.db.execute(
            "SELECT version, checksum, rows, json_array_length(ops), published_ms, source FROM "
            "versions WHERE dataset = ? ORDER BY version DESC LIMIT ?", (dataset, limit))]

    def publish(self, dataset: str, rows: dict[str, Any], source: str = "",
                now_ms: int | None = None) -> dict[str, Any] | None:
        """Write the next version if ``rows`` differ from the last one: its summary, or
        None when nothing changed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        old = dict(self.db.execute("SELECT key, value FROM current WHERE dataset = ?",
                                   (dataset,)))
        ops: list[list[Any]] = []
        new_text = {k: row_text(v) for k, v in rows.items()}
        for k, text in new_text.items():
            if old.get(k) != text:
                ops.append([k, rows[k]])
        for k in old:
            if k not in new_text:
                ops.append([k, None])
        last = self.latest(dataset)
        if not ops and last is not None:
            return None
        total = 0
        for k, text in new_text.items():
            total += row_hash(k, text)
        version = (last["version"] if last else 0) + 1
        chunks = max(1, -(-len(rows) // CHUNK_ROWS))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM current WHERE dataset = ?", (dataset,))
            self.db.executemany("INSERT INTO current VALUES (?, ?, ?)",
                                [(dataset, k, t) for k, t in new_text.items()])
            self.db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (dataset, version, checksum_hex(total), json.dumps(ops), len(rows),
                             chunks, now_ms, source))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.latest(dataset)

    def messages(self, dataset: str, site: str, gateway: str, key: bytes,
                 all_deltas: bool = False) -> list[tuple[str, bytes]]:
        """(topic, payload) to leave retained for ``gateway``, in order: chunks of the latest
        version, its delta (``all_deltas``: every one still kept, to repair a broker that
        lost them), clearing what fell out, then the pointer. Empty payloads clear."""
        last = self.latest(dataset)
        if last is None:
            return []
        signer = Signer(key)
        v = last["version"]
        base = {"v": VERSION, "gateway": gateway, "store": self.store, "dataset": dataset}
        t = lambda *p: topics.refdata_topic(site, gateway, dataset, *p)  # noqa: E731
        out: list[tuple[str, bytes]] = []
        rows = [[k, json.loads(text)] for k, text in self.db.execute(
            "SELECT key, value FROM current WHERE dataset = ? ORDER BY key", (dataset,))]
        for i in range(last["chunks"]):
            doc = dict(base, kind="chunk", version=v, index=i, count=last["chunks"],
                       checksum=last["checksum"], rows=rows[i * CHUNK_ROWS:(i + 1) * CHUNK_ROWS])
            out.append((t("snapshot", v, i), sign_message(signer, doc)))
        oldest = max(1, v - KEEP_DELTAS + 1)
        for ver, ops, checksum, pub in self.db.execute(
                "SELECT version, ops, checksum, published_ms FROM versions WHERE dataset = ? "
                "AND version >= ? ORDER BY version", (dataset, oldest if all_deltas else v)):
            doc = dict(base, kind="delta", **{"from": ver - 1}, to=ver, ops=json.loads(ops),
                       checksum=checksum, published_ms=pub)
            out.append((t("delta", ver), sign_message(signer, doc)))
        if oldest > 1:
            out.append((t("delta", oldest - 1), b""))  # fell out of the window
        prev = self.db.execute("SELECT version, chunks FROM versions WHERE dataset = ? AND "
                               "version = ?", (dataset, v - 1)).fetchone()
        if prev is not None:
            out += [(t("snapshot", prev[0], i), b"") for i in range(prev[1])]
        ptr = dict(base, kind="pointer", version=v, checksum=last["checksum"],
                   chunks=last["chunks"], oldest_from=oldest - 1,
                   published_ms=last["published_ms"])
        out.append((t("latest"), sign_message(signer, ptr)))
        return out

