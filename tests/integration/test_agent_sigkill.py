"""The agent killed with SIGKILL mid-flow, 20 times, some lives with every uplink down:
every event it reported durable reaches the ledger exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from midshift.simulator.lab import Lab, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_twenty_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=2)
    rng = random.Random(20)
    reported: list[str] = []
    try:
        ports = [str(p.address[1]) for p in lab.proxies]
        for life in range(20):
            down = life % 5 == 3  # restart with the network still down
            for p in lab.proxies:
                p.set_mode("refuse" if down else "pass")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.agent_child", str(tmp_path), *ports,
                 str(life)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
            time.sleep(rng.uniform(0.2, 0.8))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
            codes = [c for c in out.split() if c.startswith(f"L{life}-")]
            reported += codes[:-1]  # the last line may be torn by the kill
            assert codes, f"life {life} reported nothing"
        for p in lab.proxies:
            p.set_mode("pass")
        # A last life drains what the killed ones left in the journal.
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.agent_child", str(tmp_path), *ports, "99"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            def delivered() -> set[str]:
                return {json.loads(d)["code"] for d in lab.ledger_codes()}
            assert wait_for(lambda: set(reported) <= delivered(), 60), (
                f"{len(set(reported) - delivered())} reported-durable events never arrived")
        finally:
            proc.kill()
            proc.wait(10)
        codes = [json.loads(d)["code"] for d in lab.ledger_codes()]
        assert len(codes) == len(set(codes)), "an event reached the ledger twice"
        seqs = [r[0] for r in lab.store.query("SELECT seq FROM events ORDER BY seq")]
        assert len(seqs) == len(set(seqs))
        assert len(reported) > 500
    finally:
        lab.close()
