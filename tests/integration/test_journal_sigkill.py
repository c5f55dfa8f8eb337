"""A real process appends through the file storage and is killed with SIGKILL at random
moments; after every kill the journal must hold every record the child reported durable
(unless it was acknowledged, or was telemetry given up and counted because the ring was
full), byte for byte, and never reuse a seq."""

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from midshift.firmware.core.journal import Journal
from midshift.firmware.core.record import TELEMETRY
from midshift.firmware.edges.flash import FileStorage

ROOT = Path(__file__).resolve().parents[2]
KILLS = 50


def _run_until_killed(directory: Path, seed: int, rng: random.Random) -> tuple[int, list[str]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.journal_child", str(directory), str(seed),
         "100000"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert child.stdout is not None
    ready = child.stdout.readline()
    assert ready.startswith("R "), ready
    first_seq = int(ready.split()[1])
    # Let it run for a random while (0 to 60 ms of appends) before the power goes.
    deadline = time.monotonic() + rng.uniform(0.0, 0.06)
    lines: list[str] = []
    fd = child.stdout.fileno()
    os.set_blocking(fd, False)
    buf = ""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(fd, 65536).decode()
            buf += chunk
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    while True:  # whatever the child wrote before it died
        try:
            chunk = os.read(fd, 65536).decode()
        except BlockingIOError:
            break
        if not chunk:
            break
        buf += chunk
    child.stdout.close()
    lines = [ln for ln in buf.split("\n") if ln]  # a torn last line cannot parse: skip it
    return first_seq, lines


def test_sigkill_at_random_moments_loses_no_durable_record(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    rng = random.Random(20261123)
    durable: dict[int, str] = {}
    committed = 0  # commit points the child reported persisted
    intended = 0   # commit points it was about to persist when it may have died
    highest_reported = 0
    telemetry: set[int] = set()
    dropped_seen: set[int] = set()  # telemetry seqs the journal gave up, as counted
    total_reported = 0
    for kill in range(KILLS):
        first_seq, lines = _run_until_killed(directory, kill, rng)
        assert first_seq > highest_reported, f"kill {kill}: seq {first_seq} reused"
        for line in lines:
            parts = line.split()
            if parts[0] == "D" and len(parts) == 4 and len(parts[3]) == 64:
                seq = int(parts[1])
                assert seq not in durable, f"seq {seq} reported durable twice"
                durable[seq] = parts[3]
                telemetry.add(seq) if parts[2] == str(TELEMETRY) else None
                highest_reported = max(highest_reported, seq)
                total_reported += 1
            elif parts[0] == "C" and len(parts) == 2:
                committed = max(committed, int(parts[1]))
            elif parts[0] == "I" and len(parts) == 2:
                intended = max(intended, int(parts[1]))

        journal = Journal.open(FileStorage(directory))
        found = {r.seq: hashlib.sha256(r.body).hexdigest() for r in journal.records()}
        tail_seq, dropped = journal.tail_seq, journal.dropped
        journal.close()
        # The commit point is one the child persisted or was persisting; past that only
        # counted telemetry drops (a full ring gives up its oldest telemetry) move the tail.
        assert committed + 1 <= tail_seq, (kill, committed, tail_seq)
        gone = [s for s in durable if intended < s < tail_seq and s not in dropped_seen]
        assert all(s in telemetry for s in gone), (
            f"kill {kill}: txn records {[s for s in gone if s not in telemetry][:5]} lost")
        assert len(gone) <= dropped - len(dropped_seen), (kill, len(gone), dropped)
        dropped_seen.update(gone)
        committed = max(committed, min(tail_seq - 1, intended))
        for seq, digest in durable.items():
            if seq > committed and seq not in dropped_seen:
                assert found.get(seq) == digest, (
                    f"kill {kill}: durable record {seq} missing or changed after SIGKILL")
        seqs = sorted(found)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
        # Everything found is something the child appended (digest matches when reported).
        for seq, digest in found.items():
            if seq in durable:
                assert durable[seq] == digest
    assert total_reported > KILLS, "the child reported too few durable records to mean much"
