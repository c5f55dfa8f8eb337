"""The deterministic simulation itself: a seed replays exactly, clean seeds hold every
invariant, failing seeds found so far stay fixed, and the command line says what is wrong
in one line. (The fault budget and the planted bugs have their own files.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from midshift.simulator.__main__ import main
from midshift.simulator.dst.world import Config, run_seed

# Seeds that failed, with the configuration they failed in and what they found; each is
# now a regression test: it must hold every invariant.
REGRESSIONS = [
    # midshift/firmware/core/forwarder.py before its fix: a resend read the journal from the
    # position of acknowledged records it had skipped, and the ledger acknowledged a range
    # whose records were never sent (commit_ahead). The unit case:
    # tests/unit/test_forwarder_resend_position.py
    pytest.param(228, {}, id="seed228-resend-position"),
    pytest.param(263, {}, id="seed263-resend-position"),
    pytest.param(287, {}, id="seed287-resend-position"),
    # midshift/firmware/core/journal.py before opening cleared ghost frames: recovery resynced onto
    # a frame an earlier life left past the end of the log (ghost_record). The unit cases:
    # tests/unit/test_journal_ghost_resync.py
    pytest.param(503, {}, id="seed503-ghost-record"),
]


def test_the_same_seed_gives_the_same_trace() -> None:
    a = run_seed(5, Config(fault_s=30), trace=True)
    b = run_seed(5, Config(fault_s=30), trace=True)
    c = run_seed(6, Config(fault_s=30), trace=True)
    assert a.trace_hash == b.trace_hash and a.trace == b.trace
    assert a.events == b.events and a.faults == b.faults and a.faults > 100
    assert c.trace_hash != a.trace_hash


def test_the_run_does_not_depend_on_string_hashing() -> None:
    """Two processes with different hash seeds: set iteration order differs, the run must
    not."""
    root = Path(__file__).resolve().parents[2]
    hashes = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(root))
        out = subprocess.run([sys.executable, "-m", "midshift.simulator", "dst", "--seed", "3",
                              "--fault-s", "20", "--trace", "--tail", "1"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        hashes.append(out.stdout.rsplit("trace hash ", 1)[1].strip())
    assert hashes[0] == hashes[1]


def test_tracing_does_not_change_the_run() -> None:
    traced = run_seed(7, Config(fault_s=30), trace=True)
    plain = run_seed(7, Config(fault_s=30))
    assert (plain.events, plain.faults, plain.stored) == (traced.events, traced.faults,
                                                          traced.stored)


@pytest.mark.parametrize("seed", range(8))
def test_clean_seeds_hold_every_invariant_and_recover(seed: int) -> None:
    r = run_seed(seed, Config(gateways=4, uplinks=2 + seed % 2, fault_s=60))
    assert r.ok, r.violation
    assert r.recovery_s is not None and r.recovery_s < 60
    assert r.stored > 0 and r.faults > 500


@pytest.mark.parametrize("seed, options", REGRESSIONS)
def test_regression_seed(seed: int, options: dict[str, float]) -> None:
    r = run_seed(seed, Config(**options))
    assert r.ok, r.violation


def test_the_cli_replays_a_seed_with_its_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dst", "--seed", "3", "--fault-s", "20", "--trace", "--tail", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and "held every invariant" in out[-1] and "trace hash" in out[-1]


def test_the_cli_prints_a_failing_seed_with_its_commit_and_replay(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dst", "--seeds", "1", "--fault-s", "30",
                 "--plant", "ledger-skips-dedup"]) == 1
    out = capsys.readouterr().out
    assert "FAIL seed 0 (commit " in out and "stored_twice" in out
    assert ("replay: python -m midshift.simulator dst --seed 0 --fault-s 30 --plant "
            "ledger-skips-dedup --trace") in out


@pytest.mark.parametrize("argv, says", [
    (["--seeds", "0"], "--seeds 0: must be at least 1"),
    (["--seeds", "2", "--uplinks", "1"], "--uplinks 1: must be 2 or 3"),
    (["--seeds", "2", "--trace"], "--trace replays one seed"),
    (["--seed", "1", "--hop-fault", "1.5"], "--hop-fault 1.5: must be from 0"),
])
def test_bad_options_get_one_line(argv: list[str], says: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dst", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
