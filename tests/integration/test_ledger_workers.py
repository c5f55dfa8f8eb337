"""Ledger workers on a shared subscription in front of PostgreSQL, under faults.

A real mosquitto, a throwaway PostgreSQL cluster, ``python -m midshift.host_tools ledger serve``
worker processes on ``$share/ledger/midshift/v1/+/+/events``, and a fleet of virtual
gateways (``midshift/simulator/fleet.py``) that resend what the ledger has not acknowledged. A
worker SIGKILLed mid-flow and a broker crashed and restarted mid-flow must both end with
every event in the ledger exactly once: the unique key absorbs what was committed twice,
the gateways' resends bring what was lost, and reconcile finds no gap.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.reconcile import reconcile
from midshift.simulator.broker import Broker
from midshift.simulator.fleet import Fleet
from midshift.simulator.lab import wait_for
from midshift.simulator.postgres import ThrowawayPostgres

ROOT = Path(__file__).resolve().parents[2]


def serve(db: str, broker: str, keys: Path, *extra: str) -> subprocess.Popen[str]:
    """A ledger process, returned once it says it is serving (or has died)."""
    proc = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", db,
                             "--broker", broker, "--keys", str(keys), "--log-level", "WARNING",
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # returns '' if the process exits first
    assert line.startswith("ledger: "), f"ledger did not start: {line!r}"
    proc.first_line = line  # type: ignore[attr-defined]
    return proc


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def run_in_thread(fleet: Fleet, timeout_s: float) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(fleet.run(timeout_s)), daemon=True)
    t.start()
    return t, result


def assert_exactly_once(db: str, fleet: Fleet) -> None:
    with open_store(db) as store:
        keys = store.keys()
        want = sorted((gw, epoch, seq) for gw, (epoch, last) in fleet.expected().items()
                      for seq in range(1, last + 1))
        assert len(keys) == len(want) and keys == want  # none lost, none twice
        report = reconcile(store)
    assert report["events"] == len(want) and report["gaps"] == 0


def test_a_worker_sigkilled_mid_flow_loses_nothing(pg: ThrowawayPostgres, tmp_path: Path) -> None:
    """`serve --workers 2`; one worker process is SIGKILLed while batches flow; the
    supervisor starts another and the gateways' resends fill in what it had not acked."""
    db = pg.create_database("sigkill")
    with Broker() as broker:
        fleet = Fleet(broker.url, gateways=40, backlog=1500, batch_events=250, window=4,
                      ack_timeout_s=3.0, site="kill").prepare()
        keys = tmp_path / "keys.toml"
        keys.write_text(fleet.keys_toml())
        ledger = serve(db, broker.url, keys, "--workers", "2", "--migrate")
        try:
            pids = [int(p) for p in re.findall(r"\d+", ledger.first_line.split("pids")[1])]
            assert len(pids) == 2
            thread, result = run_in_thread(fleet, 90)
            with open_store(db) as store:
                assert wait_for(lambda: store.count() >= 10_000, 60)
                os.kill(pids[0], signal.SIGKILL)
                at_kill = store.count()
            thread.join(100)
            assert result.get("drained"), result
            assert at_kill < fleet.backlog * 40, "the kill came after the flow had ended"
        finally:
            stop([ledger])
    assert_exactly_once(db, fleet)


def test_a_broker_crash_and_restart_mid_flow_loses_nothing(
        pg: ThrowawayPostgres, tmp_path: Path) -> None:
    db = pg.create_database("broker_restart")
    with Broker() as broker:
        fleet = Fleet(broker.url, gateways=30, backlog=1000, batch_events=200, window=4,
                      ack_timeout_s=3.0, site="restart").prepare()
        keys = tmp_path / "keys.toml"
        keys.write_text(fleet.keys_toml())
        with open_store(db, migrate=True):
            pass
        workers = [serve(db, broker.url, keys, "--shared", "ledger") for _ in range(2)]
        try:
            thread, result = run_in_thread(fleet, 90)
            with open_store(db) as store:
                assert wait_for(lambda: store.count() >= 5_000, 60)
                broker.restart(crash=True)
                assert store.count() < 30_000, "the crash came after the flow had ended"
            thread.join(100)
            assert result.get("drained"), result
        finally:
            stop(workers)
    assert_exactly_once(db, fleet)
