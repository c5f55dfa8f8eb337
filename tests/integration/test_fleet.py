"""The virtual gateway fleet against mosquitto and PostgreSQL ledger workers.

A reconnect storm in miniature (the benchmark runs 1,000 x 1,000): every gateway comes
back at once with a backlog, each after its own jittered delay, never more than its
window of batches in flight, and a per-gateway drain rate that really holds it back;
live events join the backlog. The whole fleet drains, and the ledger holds each event
once. (Worker processes and faults: ``test_ledger_workers.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.host_tools.ledger.store import LedgerStore
from midshift.simulator.broker import Broker
from midshift.simulator.fleet import Fleet
from midshift.simulator.postgres import ThrowawayPostgres


def workers(store_url: str, fleet: Fleet, broker: Broker, n: int) -> list[LedgerService]:
    return [LedgerService(open_store(store_url), fleet.keys(), broker.url,
                          shared_group="ledger", client_id=f"w{i}").start() for i in range(n)]


def close(services: list[LedgerService]) -> None:
    for s in services:
        s.stop()
        s.store.close()


def exactly_once(store: LedgerStore, fleet: Fleet) -> None:
    want = sorted((gw, epoch, seq) for gw, (epoch, last) in fleet.expected().items()
                  for seq in range(1, last + 1))
    assert store.keys() == want


def test_a_reconnect_storm_drains_inside_the_caps(pg: ThrowawayPostgres) -> None:
    url = pg.create_database("storm")
    open_store(url, migrate=True).close()
    with Broker() as broker:
        fleet = Fleet(broker.url, gateways=300, backlog=100, batch_events=25, window=2,
                      jitter_s=1.0, connections=30, site="storm").prepare()
        services = workers(url, fleet, broker, 2)
        try:
            result = fleet.run(timeout_s=60)
        finally:
            close(services)
        assert result["drained"] and result["acked_events"] == 30_000, result
        assert result["max_inflight_per_gateway"] <= 2  # the window held under the storm
        assert result["drain_s"] >= 0.9  # the last gateway came back near the jitter's end
        assert all(s.counters["batches"] > 0 for s in services)
        with open_store(url) as store:
            exactly_once(store, fleet)


def test_a_drain_cap_holds_each_gateway_back_and_live_events_join_the_backlog(
        pg: ThrowawayPostgres) -> None:
    url = pg.create_database("capped")
    open_store(url, migrate=True).close()
    with Broker() as broker:
        # 1,000 events at 2,000 events/s per gateway in batches of 100: at least 0.45 s
        fleet = Fleet(broker.url, gateways=10, backlog=1000, batch_events=100, window=8,
                      drain_events_per_s=2000, rate_per_s=1000, live_s=0.5,
                      site="capped").prepare()
        services = workers(url, fleet, broker, 1)
        try:
            result = fleet.run(timeout_s=60)
        finally:
            close(services)
        assert result["drained"] and result["events"] == 10_000 + 500, result
        assert result["drain_s"] >= 0.45
        with open_store(url) as store:
            exactly_once(store, fleet)


def test_bad_fleet_arguments_are_one_line() -> None:
    with pytest.raises(ValueError, match="expected mqtt://HOST:PORT"):
        Fleet("tcp://127.0.0.1:1883", gateways=1)
    with pytest.raises(ValueError, match="1 or more"):
        Fleet("mqtt://127.0.0.1:1883", gateways=0)


def test_the_cli_writes_the_keys_then_drains_the_same_fleet(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from midshift.host_tools.ledger.service import load_keys

    root = Path(__file__).resolve().parents[2]
    keys = tmp_path / "keys.toml"
    common = ["--gateways", "5", "--seed", "7", "--site", "cli"]

    def simulator(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "midshift.simulator", "fleet", *common, *argv],
                              cwd=root, capture_output=True, text=True, timeout=60)

    assert simulator("--keys-out", str(keys)).returncode == 0
    with Broker() as broker, open_store(f"sqlite:///{tmp_path / 'l.db'}") as store:
        ledger = LedgerService(store, load_keys(keys), broker.url).start()
        try:
            done = simulator("--broker", broker.url, "--backlog", "300")
        finally:
            ledger.stop()
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["acked_events"] == 1500 == store.count()
    bad = simulator("--broker", "tcp://x")
    assert bad.returncode == 2 and "expected mqtt://HOST:PORT" in bad.stderr


def test_a_real_agent_drains_beside_the_fleet_into_the_same_workers(
        pg: ThrowawayPostgres, tmp_path: Path) -> None:
    """The fleet scenario's shape: a real agent process's forwarding (journal, forwarder,
    uplink) and 200 virtual gateways share one broker and two PostgreSQL workers."""
    import threading

    from midshift.simulator.lab import KEY, Lab, wait_for

    url = pg.create_database("with_agent")
    open_store(url, migrate=True).close()
    lab = Lab(tmp_path, uplinks=1, direct=True)
    lab.ledger.stop()  # the lab's SQLite ledger steps aside for the PostgreSQL workers
    fleet = Fleet(lab.broker.url, gateways=200, backlog=200, batch_events=50, window=4,
                  jitter_s=0.5, site="beside").prepare()
    services = [LedgerService(open_store(url), {"gw-t": KEY, **fleet.keys()}, lab.broker.url,
                              shared_group="ledger", client_id=f"w{i}").start()
                for i in range(2)]
    try:
        agent = lab.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(fleet.run(60)), daemon=True)
        runner.start()
        for _ in range(20):
            lab.emit(25)
        runner.join(70)
        with open_store(url) as store:
            scans = "SELECT COUNT(*) FROM event_fields WHERE gateway='gw-t' AND source <> 'agent'"
            assert wait_for(lambda: store.query(scans)[0][0] == 500, 20)
            keys = store.keys()
        agent_seqs = [seq for gw, _, seq in keys if gw == "gw-t"]  # scans and link incidents
        assert agent_seqs == list(range(1, len(agent_seqs) + 1))
        assert result.get("drained") and len(keys) == len(agent_seqs) + 40_000, result
    finally:
        close(services)
        lab.close()
