"""Journal benchmark: durable appends against SQLite (WAL, synchronous=FULL) in one run.

- ``append_per_s``: 128-byte records made durable per second by 8 producer threads (the
  device drivers), each appending a batch (1 record) and waiting until it is durable before
  the next, with the default group commit (no linger window);
- ``sqlite_append_per_s``: the same producers and batches on SQLite in WAL mode with
  synchronous=FULL, each producer with its own connection and each batch one transaction;
  the difference is exactly what group commit buys (SQLite cannot share one commit
  between connections; the journal shares one sync between producers);
- ``durable_ack_p99_ms``: an open-loop producer offering 5,000 appends per second; the
  time from each append to the moment it was durable;
- ``recovery_s``: opening a full 64 MiB journal after an unclean stop (a torn tail). The
  commit point carries a durable-head hint rewritten once per segment, so opening scans at
  most about one segment; records behind the hint are CRC-checked when read.
  ``full_verify_s`` is the cost of reading and checking every record, for comparison.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from midshift.firmware.core.errors import JournalFull
from midshift.firmware.core.journal import Journal
from midshift.firmware.core.percentile import percentile
from midshift.firmware.edges.flash import FileStorage, open_or_create_journal
from midshift.firmware.edges.group_commit import GroupCommitJournal

BODY = bytes(range(128))
PRODUCERS = 8  # devices appending at once: scanners, scales, PLC pollers
BATCH = 1      # records each producer appends before it needs them durable
MIB = 1 << 20


def bench_throughput(tmp: Path, total: int, producers: int, batch: int) -> tuple[float, float]:
    """``producers`` threads (devices), each appending ``batch`` records and then waiting
    until they are durable before the next: the gateway's real pattern."""
    journal = open_or_create_journal(tmp / "tp", MIB, 64, "bench")
    gc = GroupCommitJournal(journal)
    rounds = total // (producers * batch)

    def produce() -> None:
        for _ in range(rounds):
            seq = 0
            for _ in range(batch):
                seq = gc.append(BODY)
            gc.wait_durable(seq)

    elapsed = _run_threads(produce, producers)
    syncs = gc.syncs
    gc.close()
    n = rounds * producers * batch
    return n / elapsed, n / max(1, syncs)


def bench_sqlite(tmp: Path, total: int, producers: int, batch: int) -> float:
    """The same producers and batches on SQLite: each producer its own connection, each
    batch one transaction (SQLite cannot share one commit between connections)."""
    path = tmp / "baseline.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, cls INTEGER, "
                  "hlc INTEGER, body BLOB)")
    setup.close()
    rounds = total // (producers * batch)

    def produce() -> None:
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.execute("PRAGMA synchronous=FULL")
        rows = [(BODY,)] * batch
        for _ in range(rounds):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO events (cls, hlc, body) VALUES (0, 0, ?)", rows)
            db.execute("COMMIT")
        db.close()

    elapsed = _run_threads(produce, producers)
    return rounds * producers * batch / elapsed


def _run_threads(target: Callable[[], None], n: int) -> float:
    threads = [threading.Thread(target=target) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def bench_ack_latency(tmp: Path, rate_per_s: int, duration_s: float) -> list[float]:
    """Open loop: appends are issued on a fixed schedule whatever the journal is doing."""
    journal = open_or_create_journal(tmp / "lat", MIB, 64, "bench")
    gc = GroupCommitJournal(journal)
    appended: dict[int, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not (done.is_set() and seen >= max(appended, default=0)):
            durable = gc.wait_for_durable_after(seen, 0.05)
            now = time.perf_counter()
            for s in range(seen + 1, durable + 1):
                t = appended.get(s)
                if t is not None:
                    latencies.append(now - t)
            seen = max(seen, durable)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # A device side producing 5,000 events/s in aggregate: every 0.5 ms the events that
    # fell due are appended. Sleeping (not spinning) leaves the GIL to the flusher.
    n = int(rate_per_s * duration_s)
    tick_s = 0.0005
    issued = 0
    t0 = time.perf_counter()
    while issued < n:  # bounded: n appends
        due = min(n, int((time.perf_counter() - t0) * rate_per_s) + 1)
        while issued < due:
            t_append = time.perf_counter()
            appended[gc.append(BODY)] = t_append
            issued += 1
        time.sleep(tick_s)
    done.set()
    watcher.join(timeout=10)
    gc.close()
    return sorted(latencies)


def bench_recovery(tmp: Path, size_mib: int) -> tuple[float, int]:
    seg = MIB
    directory = tmp / "full"
    journal = open_or_create_journal(directory, seg, size_mib, "bench")
    n = 0
    try:
        while True:  # bounded by the journal's size: it refuses once full
            journal.append(BODY, hlc=n)
            n += 1
            if n % 4096 == 0:
                journal.flush()
    except JournalFull:
        pass
    journal.flush()
    # Unclean stop: no close, and a torn frame at the head (half a record written).
    frame_pos = journal._phys(journal.head_pos)
    journal.storage.write(frame_pos, b"MR\x01\x01\x00\x00\x00\x00\x80\x00\x00\x00" + bytes(20))
    journal.storage.sync()
    journal.storage.close()
    os.sync()
    t0 = time.perf_counter()
    reopened = Journal.open(FileStorage(directory))
    elapsed = time.perf_counter() - t0
    r = reopened.recovery
    assert r.last_seq == n and r.cut_reason == "bad header", (r.as_dict(), n)
    # What a full verification costs: read back and CRC-check every record.
    t0 = time.perf_counter()
    count = sum(1 for _ in reopened.records())
    full_scan_s = time.perf_counter() - t0
    assert count == n, (count, n)
    reopened.close()
    return elapsed, full_scan_s, n


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    say = progress or (lambda msg: None)
    total = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="midshift-bench-") as d:
        tmp = Path(d)
        say(f"journal: {total} durable appends, {PRODUCERS} producers x batches of {BATCH}")
        append_per_s, per_sync = bench_throughput(tmp, total, PRODUCERS, BATCH)
        say(f"sqlite: the same, WAL + synchronous=FULL, {PRODUCERS} connections")
        sqlite_per_s = bench_sqlite(tmp, total, PRODUCERS, BATCH)
        say("ack latency: 5,000 appends/s open loop")
        lat = bench_ack_latency(tmp, 5000, 1.0 if quick else 3.0)
        size = 8 if quick else 64
        say(f"recovery: full {size} MiB journal, torn tail")
        recovery_s, full_scan_s, records = bench_recovery(tmp, size)
    return {
        "append_per_s": round(append_per_s),
        "sqlite_append_per_s": round(sqlite_per_s),
        "ratio_vs_sqlite": round(append_per_s / sqlite_per_s, 2),
        "records_per_sync": round(per_sync, 1),
        "producers": PRODUCERS,
        "batch": BATCH,
        "durable_ack_p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "durable_ack_p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "durable_ack_samples": len(lat),
        "recovery_s": round(recovery_s, 3),
        "recovery_records": records,
        "full_verify_s": round(full_scan_s, 3),
        "journal_mib": size,
        "body_bytes": len(BODY),
    }
