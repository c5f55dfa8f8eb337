"""An idle standby uplink costs little: it pings at ``standby_keepalive_s`` while the
active link pings every second, and failover (driven by the active link's failure) is as
fast as before; once active, the former standby pings every second.

Bytes are counted by the fault proxy in front of each uplink (MQTT bytes, both ways; the
TCP/IP headers around them are not seen by the proxy)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.simulator.lab import Lab, wait_for

STANDBY_S = 3   # shortened for the test; the default is 60
WINDOW_S = 12.0
PING_EXCHANGE = 4  # PINGREQ + PINGRESP, 2 bytes each (MQTT 3.1.1, 3.12 and 3.13)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path)
    r.cfg.uplinks[1].standby_keepalive_s = STANDBY_S
    yield r
    r.close()


def _bytes(rig: Lab, i: int) -> int:
    d = rig.proxies[i].describe()
    return int(d["bytes_up"]) + int(d["bytes_down"])


def test_standby_pings_at_its_own_keepalive_and_failover_is_not_slower(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    up1 = agent.forwarding.uplinks["up1"]
    assert wait_for(lambda: up1.connected, 10)
    # The agent's start incident (its first record) is in the ledger before the window
    # opens: on a loaded machine its batch may be hedged onto the standby (no round trip
    # measured yet, the 50 ms floor), which is traffic, not the idle standby's pings.
    assert wait_for(lambda: len(rig.incidents()) >= 1, 10)
    time.sleep(1.0)  # past CONNECT, SUBSCRIBE, their answers and any hedge's ack
    before = [_bytes(rig, 0), _bytes(rig, 1)]
    time.sleep(WINDOW_S)
    active_b, standby_b = _bytes(rig, 0) - before[0], _bytes(rig, 1) - before[1]
    per_day_test = standby_b * 86400 / WINDOW_S
    per_day_default = per_day_test * STANDBY_S / 60
    print(f"standby: {standby_b} bytes in {WINDOW_S:.0f} s at keepalive {STANDBY_S} s "
          f"({per_day_default / 1e3:.1f} kB/day at the default 60 s); active: {active_b} "
          f"bytes ({active_b * 86400 / WINDOW_S / 1e6:.2f} MB/day)")
    pings = WINDOW_S / STANDBY_S
    assert standby_b <= (pings + 1) * PING_EXCHANGE, standby_b
    assert standby_b >= (pings - 1) * PING_EXCHANGE, standby_b  # it is alive, and watched
    assert active_b >= (WINDOW_S - 2) * PING_EXCHANGE  # the active one still every second

    rig.proxies[0].set_mode("blackhole")
    t0 = time.monotonic()
    rig.emit(20)
    assert wait_for(lambda: agent.forwarding.active == "up1", 5)
    assert wait_for(lambda: rig.ledger_count() == 20, 10)
    took = time.monotonic() - t0
    assert took <= 4.5, f"failover and delivery took {took:.1f} s"
    assert up1.client.keepalive == 1  # the link carrying traffic is watched every second
    b = _bytes(rig, 1)
    time.sleep(3.0)
    assert _bytes(rig, 1) - b >= 2 * PING_EXCHANGE

    rig.proxies[0].set_mode("pass")  # fail back after the hold: up1 idles again
    assert wait_for(lambda: agent.forwarding.active == "up0", 15)
    assert wait_for(lambda: up1.client.keepalive == STANDBY_S, 3)
    assert up1.connected
