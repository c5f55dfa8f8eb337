"""The SQLite ledger's checkpointer: once a second, but not while a backlog drains (its
copying and syncing would compete with the commits), and never put off for longer than
``MAX_DEFER_S``. Acknowledged events are durable either way: the WAL is synced at every
commit; these tests read the database file itself, which only a checkpoint fills."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from midshift.firmware.core.wire import Batch
from midshift.host_tools.ledger import sqlite_store
from midshift.host_tools.ledger.sqlite_store import SqliteStore


def _burst(store: SqliteStore, seconds: float, first: int) -> int:
    """500 events every 0.1 s for ``seconds`` (5,000 a second); returns the next seq."""
    seq = first
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        store.store_many([Batch("gw-a", 1, [(s, 0, s, b'{"v":1,"k":"x","t":1,"d":{}}')
                                            for s in range(seq, seq + 500)], 0)], 1)
        seq += 500
        time.sleep(0.1)
    return seq


def _in_file(path: Path) -> int:
    """Events in the database file itself (without the WAL): a read-only copy of it."""
    import sqlite3
    copy = path.with_name("copy.db")
    copy.write_bytes(path.read_bytes())
    try:
        db = sqlite3.connect(copy)
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0  # no table there yet: the schema itself is still in the WAL
    finally:
        db.close()
        copy.unlink()


def test_a_drain_puts_the_checkpoint_off_until_it_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "BURST_EVENTS", 1000)
    monkeypatch.setattr(sqlite_store, "MAX_DEFER_S", 60.0)
    path = tmp_path / "ledger.db"
    with SqliteStore(f"sqlite:///{path}") as store:
        time.sleep(1.5)  # the checkpointer's first turns, before any burst
        before = store.checkpoints
        seq = _burst(store, 3.0, 1)
        assert store.checkpoints == before  # none while the backlog drained
        assert _in_file(path) == 0
        deadline = time.monotonic() + 10
        while store.checkpoints == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.checkpoints > before  # idle: the checkpoint comes
        assert _in_file(path) == seq - 1 == store.count()


def test_a_long_drain_is_checkpointed_all_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "BURST_EVENTS", 1000)
    monkeypatch.setattr(sqlite_store, "MAX_DEFER_S", 1.5)
    with SqliteStore(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        time.sleep(1.5)
        before = store.checkpoints
        _burst(store, 5.0, 1)
        assert store.checkpoints > before  # put off for 1.5 s at most, not for the drain
