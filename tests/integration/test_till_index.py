"""The till API's idempotency index on a real SQLite file: survives a reopen, the rebuild
adds only what is missing, retention drops only old keys already in the ledger."""

from __future__ import annotations

from pathlib import Path

from midshift.firmware.edges.till_index import Entry, IdempotencyIndex

DAY_MS = 86_400_000
EPOCH = "00000000000000aa"


def entry(key: str, seq: int, accepted_ms: int, epoch: str = EPOCH) -> Entry:
    return Entry(key, "till-1", "ab" * 32, epoch, seq, f"r-{seq}", accepted_ms, 430, False)


def test_reopen_rebuild_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "till-keys.sqlite"
    idx = IdempotencyIndex(path, retention_s=7 * 86400, max_rows=5)
    idx.put(entry("old-acked", 1, 0))
    idx.put(entry("old-queued", 9, 0))
    idx.put(entry("old-other-epoch", 50, 0, epoch="00000000000000bb"))
    idx.close()
    idx = IdempotencyIndex(path, retention_s=7 * 86400, max_rows=5)
    got = idx.get("old-acked")
    assert got is not None and (got.seq, got.receipt, got.offline) == (1, "r-1", False)
    assert idx.put_missing([entry("old-acked", 1, 0), entry("new", 10, 8 * DAY_MS)]) == 1
    idx.prune(8 * DAY_MS, EPOCH, committed_seq=5)
    assert idx.get("old-acked") is None and idx.get("old-other-epoch") is None
    assert idx.get("old-queued") is not None and idx.get("new") is not None
    idx.put_missing([entry(f"k{i}", 100 + i, 9 * DAY_MS + i) for i in range(6)])
    idx.prune(9 * DAY_MS, EPOCH, committed_seq=5)
    assert idx.count() == 5 and idx.get("k5") is not None and idx.get("old-queued") is None
    idx.close()
