"""The gateway's own incidents reach the ledger like any other event, through a real
mosquitto and ledger: the link going offline and online again (journaled while offline,
delivered once back) and a device's state changes, from a real driver thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.firmware.edges.driver import Driver
from midshift.simulator.lab import Lab, wait_for


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path)
    yield r
    r.close()


def test_an_outage_is_in_the_ledger_with_its_times(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    for p in rig.proxies:
        p.set_mode("refuse")
    assert wait_for(lambda: agent.forwarding.active is None, 6)
    rig.emit(5)
    for p in rig.proxies:
        p.set_mode("pass")
    assert wait_for(lambda: rig.ledger_count() == 5, 20)
    assert wait_for(lambda: len(rig.incidents()) >= 3, 10), rig.incidents()
    links = [d for k, d in rig.incidents() if k == "link"]
    assert [d["state"] for d in links] == ["online", "offline", "online"]
    assert links[0]["since_ms"] <= links[1]["since_ms"] <= links[2]["since_ms"]
    assert links[1]["uplink"] is None and links[2]["uplink"] in ("up0", "up1")
    assert agent.snapshot()["incidents_dropped"] == 0


class Flaky(Driver):
    kind = "flaky"

    def _run(self) -> None:
        self.set_state("ok")
        self.set_state("error", "no answer")
        self.set_state("error", "no answer")  # no change: no incident
        self.set_state("ok")
        self._stopping.wait(30)


def test_device_state_changes_are_journaled_from_the_driver(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    drv = Flaky("plc9", {}, agent.emit, agent.clock)
    drv.on_state = agent._device_incident
    drv.start()
    try:
        assert wait_for(lambda: len([1 for k, _ in rig.incidents() if k == "device"]) == 3,
                        10), rig.incidents()
    finally:
        drv.stop()
    devices = [d for k, d in rig.incidents() if k == "device"]
    assert devices == [{"device": "plc9", "state": "ok", "error": None},
                       {"device": "plc9", "state": "error", "error": "no answer"},
                       {"device": "plc9", "state": "ok", "error": None}]
