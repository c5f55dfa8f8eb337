"""Hedged sends end to end: agent -> two fault proxies -> mosquitto -> ledger -> ack.

A batch not acknowledged within the hedge delay goes once more on the healthy standby, so a
blackholed primary costs the hedge delay, not the 1.5 s+ its keepalive needs to notice; a
slow but healthy primary is not doubled; a metered standby carries transactions only; two
uplinks flapping out of phase lose and duplicate nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.simulator.lab import Lab, wait_for


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path)
    yield r
    r.close()


def _exactly_once(lab: Lab, n: int) -> None:
    codes = sorted(json.loads(d)["code"] for d in lab.ledger_codes())
    assert codes == [f"C{i:08d}" for i in range(1, n + 1)]


def _emit_paced(lab: Lab, seconds: float, per_s: int, source: str = "dev1") -> dict[int, float]:
    """Events on a schedule: {seq: wall ms it was due}. Bounded: seconds * per_s events."""
    due: dict[int, float] = {}
    start, wall = time.monotonic(), time.time() * 1000
    for i in range(int(seconds * per_s)):
        while (d := start + i / per_s - time.monotonic()) > 0:
            time.sleep(d)
        due[lab.emit(1, source)[0]] = wall + i * 1000 / per_s
    return due


def _waits_ms(lab: Lab, due: dict[int, float]) -> list[float]:
    """Each event's wait from its due time to the ledger's commit of the batch holding it
    (the earliest receipt, wall ms on this machine)."""
    committed: dict[int, int] = {}
    for first, last, ledger_ms in lab.store.query(
            "SELECT first, last, ledger_ms FROM receipts ORDER BY ledger_ms DESC"):
        for seq in range(first, last + 1):
            committed[seq] = ledger_ms
    return [committed[s] - t for s, t in due.items()]


def _duplicates(lab: Lab) -> int:
    return sum(lab.store.duplicates_by_epoch().values())


def test_a_blackholed_primary_costs_the_hedge_delay_not_the_keepalive(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    assert wait_for(lambda: agent.forwarding.session.connected.get("up1"), 10)
    before = _emit_paced(rig, 1, 100)
    rig.proxies[0].set_mode("blackhole")
    t0 = time.monotonic()
    after = _emit_paced(rig, 2, 100)
    assert wait_for(lambda: rig.ledger_count() == 300, 15), rig.ledger_count()
    _exactly_once(rig, 300)
    fwd = agent.forwarding
    # Demoted by its lost hedges before its keepalive (1 s, noticed after 1.5 s) could.
    assert fwd.selector.demotions >= 1 and fwd.active == "up1"
    assert fwd.forwarder.counters["hedges_won"] >= 3
    waits = _waits_ms(rig, after)
    # Without hedging the events of the first 1.5 s wait for the keepalive (1.5-3 s);
    # with it, the hedge delay (>= 50 ms) plus a round trip, with room for a loaded box.
    assert max(waits) < 1000, sorted(waits)[-5:]
    assert time.monotonic() - t0 < 10
    assert max(_waits_ms(rig, before)) < 1000
    status = agent.snapshot()["forwarding"]
    assert status["counters"]["hedged"] >= 3 and status["demotions"] >= 1


def test_a_slow_but_healthy_primary_is_not_doubled(tmp_path: Path) -> None:
    """30 ms each way on the primary, a hedge floor well above its round trip: no copies."""
    lab = Lab(tmp_path, hedge_floor_ms=500)
    try:
        agent = lab.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        lab.proxies[0].set_mode("latency", ms=30)
        _emit_paced(lab, 2, 100)
        assert wait_for(lambda: lab.ledger_count() == 200, 10)
        _exactly_once(lab, 200)
        c = agent.forwarding.forwarder.counters
        assert c["hedged"] == 0 and c["hedge_bytes"] == 0, c
        assert _duplicates(lab) == 0 and agent.forwarding.active == "up0"
        assert agent.forwarding.forwarder.hedge_delay_ms() == 500
    finally:
        lab.close()


def test_a_metered_standby_carries_hedged_transactions_only(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    lab.cfg.uplinks[1].metered = True
    try:
        agent = lab.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        assert wait_for(lambda: agent.forwarding.session.connected.get("up1"), 10)
        lab.proxies[0].set_mode("blackhole")
        for _ in range(20):  # transactions and telemetry apart, so batches are of one class
            lab.emit(5, "dev1")
            time.sleep(0.02)
            lab.emit(5, "plc1")
            time.sleep(0.02)
        codes = lambda: [json.loads(d)["code"] for d in lab.ledger_codes()]  # noqa: E731
        txn = [f"C{i:08d}" for i in range(1, 201) if (i - 1) % 10 < 5]
        assert wait_for(lambda: sorted(codes()) == txn, 5), len(codes())  # no telemetry yet
        assert agent.forwarding.forwarder.counters["hedged"] >= 1
        lab.proxies[0].set_mode("pass")  # telemetry waits for the unmetered primary
        assert wait_for(lambda: lab.ledger_count() == 200, 20), lab.ledger_count()
        _exactly_once(lab, 200)
    finally:
        lab.close()


def test_two_uplinks_flapping_out_of_phase_lose_and_duplicate_nothing(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.proxies[0].set_mode("flap", up_ms=1500, down_ms=1500, down_mode="blackhole")
    time.sleep(1.5)
    rig.proxies[1].set_mode("flap", up_ms=1500, down_ms=1500, down_mode="blackhole")
    _emit_paced(rig, 8, 50)
    for p in rig.proxies:
        p.set_mode("pass")
    assert wait_for(lambda: rig.ledger_count() == 400, 30), rig.ledger_count()
    _exactly_once(rig, 400)
    c = agent.forwarding.forwarder.counters
    assert c["hedged"] >= 1
    # The ledger drops every extra copy; they stay bounded: at most one resend or hedge
    # per record on average, not a storm.
    assert _duplicates(rig) <= 400, (_duplicates(rig), c)
