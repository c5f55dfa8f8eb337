"""The agent's CANopen driver against the emulated battery module on python-can's virtual bus.

The node's ground truth lists every value it put on the wire (TPDOs and SDO answers) and
every EMCY; each must arrive as exactly one event, in order per tag, and nothing else may
arrive, through every fault the emulator has.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import can
import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.canopen import CanOpenDriver
from midshift.firmware.edges.canopen_config import snake
from midshift.firmware.edges.clock import SystemClock
from midshift.simulator.devices.canopen import EDS, BatteryModule
from tests.integration.canopen_values import journaled_values, wire_values
from tests.integration.event_sink import Sink, wait_until

_channels = itertools.count()
POLLED = [{"tag": "cycle_count", "index": 0x2020, "poll_ms": 40},
          {"tag": "contactor_state", "index": 0x2011, "poll_ms": 40}]


@pytest.fixture
def bus() -> str:
    """A virtual bus channel of this test's own."""
    return f"test-canopen-{next(_channels)}"


@pytest.fixture
def node(bus: str) -> Iterator[BatteryModule]:
    bm = BatteryModule("bms1", 16, bus, seed=7, tpdo_period_ms=20).start()
    yield bm
    bm.stop()


def _table(bus: str, **over: Any) -> dict[str, Any]:
    return {"interface": "virtual", "channel": bus, "node_id": 16, "eds": str(EDS),
            "tpdos": [1, 2], "heartbeat_ms": 100, "sdo_timeout_s": 0.2,
            "objects": POLLED} | over


@pytest.fixture
def run_driver() -> Iterator[Any]:
    started: list[CanOpenDriver] = []

    def start(bus: str, sink: Sink, **over: Any) -> CanOpenDriver:
        cfg = CanOpenDriver.validate_config("bms1", _table(bus, **over), "devices.bms1")
        drv = CanOpenDriver("bms1", cfg, sink, SystemClock()).start()
        started.append(drv)
        return drv

    yield start
    for drv in started:
        drv.stop()
    assert not any(t.name == "driver-bms1" for t in threading.enumerate())


def _settled(bm: BatteryModule, sink: Sink) -> dict[str, list[Any]]:
    """Stop the node, let its last frames arrive, and check: every value it put on the
    wire is one event, in order per tag, and no other event exists."""
    bm.stop()
    try:
        wait_until(lambda: journaled_values(sink) == wire_values(bm), 2.0)
    except AssertionError:
        pass  # the comparison below says what differs
    assert journaled_values(sink) == wire_values(bm)
    return wire_values(bm)


def _faults(bm: BatteryModule) -> list[str]:
    return [e["fault"] for e in bm.truth() if e["kind"] == "fault"]


def test_every_value_on_the_wire_is_one_event_and_emcy_is_an_alarm(node: BatteryModule, bus: str,
                                                                   run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok" and len(sink.values("pack_voltage")) >= 5)
    node.command_contactor(True)
    wait_until(lambda: sink.values("contactor_state")[-1:] == [1])
    wait_until(lambda: sink.values("cycle_count")[-1:] == [1])
    node.emcy(0x3210, 0x04, b"\x01")
    node.emcy(0x0000)
    wait_until(lambda: drv.status.counter("emcy") == 2)
    truth = _settled(node, sink)
    assert set(truth) >= {"pack_voltage", "pack_current", "state_of_charge",
                          "cell_temperature", "cycle_count", "contactor_state", "(emcy)"}
    alarms = [e for e in sink.snapshot() if e.kind == "alarm"]
    assert [a.data for a in alarms] == [
        {"code": 0x3210, "error_register": 4, "text": "Code 0x3210, Voltage",
         "vendor": "0100000000"},
        {"code": 0, "error_register": 0, "text": "Code 0x0000, Error Reset / No Error",
         "vendor": "0000000000"}]
    voltage = [e for e in sink.snapshot() if e.data.get("tag") == "pack_voltage"]
    assert voltage[0].data == {"tag": "pack_voltage", "value": voltage[0].data["value"],
                               "index": 0x2001, "subindex": 0, "via": "tpdo"}
    assert [e.read_ms for e in voltage] == sorted(e.read_ms for e in voltage)
    polled = [e for e in sink.snapshot() if e.data.get("tag") == "cycle_count"]
    assert {e.data["via"] for e in polled} == {"sdo"}
    assert drv.status.counter("events") == len(sink.events)
    assert drv.status.counter("bad_frames") == 0 and drv.status.counter("to_error") == 0


def test_heartbeat_loss_is_disconnected_and_recovers(node: BatteryModule, bus: str,
                                                     run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok")
    node.heartbeat(False)
    wait_until(lambda: drv.status.state == "disconnected")
    assert "no heartbeat for" in (drv.status.last_error or "")
    n = len(sink.values("pack_voltage"))
    wait_until(lambda: len(sink.values("pack_voltage")) > n)  # its TPDOs still count
    node.heartbeat(True)
    wait_until(lambda: drv.status.state == "ok")
    assert drv.status.counter("heartbeat_losses") == 1
    assert drv.status.counter("to_disconnected") == 1
    _settled(node, sink)


def test_node_reboot_is_stale_then_restarted_by_the_driver(node: BatteryModule, bus: str,
                                                           run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok")
    assert drv.status.counter("configures") == 1
    node.reboot()
    wait_until(lambda: drv.status.counter("node_boots") == 1)
    wait_until(lambda: drv.status.counter("configures") == 2 and drv.status.state == "ok")
    assert node.nmt_state() == "OPERATIONAL"
    assert drv.status.counter("to_stale") == 2  # once at the start, once after the boot
    assert drv.status.counter("to_disconnected") == 0
    n = len(sink.values("pack_voltage"))
    wait_until(lambda: len(sink.values("pack_voltage")) > n + 2)  # TPDOs flow again
    _settled(node, sink)


def test_a_node_not_started_stays_stale_and_sends_nothing(node: BatteryModule, bus: str,
                                                          run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink, start_node=False, objects=[])
    wait_until(lambda: drv.status.state == "stale" and drv.status.counter("configures") == 1)
    assert drv.status.last_error == "NMT state PRE-OPERATIONAL"
    assert node.nmt_state() == "PRE-OPERATIONAL" and sink.snapshot() == []
    node.node.nmt.state = "OPERATIONAL"  # started by another master on the bus
    wait_until(lambda: drv.status.state == "ok" and len(sink.values("pack_voltage")) >= 2)
    _settled(node, sink)


def test_garbage_frames_are_counted_and_make_no_event(node: BatteryModule, bus: str,
                                                      run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok")
    node.garbage()
    node.garbage()
    # six of the seven are this node's (the 0x7FF frame is nobody's business)
    wait_until(lambda: drv.status.counter("bad_frames") == 12)
    assert drv.status.state == "ok" and drv.status.counter("frame_failures") == 0
    assert _faults(node) == ["garbage", "garbage"]
    _settled(node, sink)


def test_bus_silence_is_disconnected_with_sdo_timeouts_then_recovers(
        node: BatteryModule, bus: str, run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok")
    node.silence(True)
    wait_until(lambda: drv.status.state == "disconnected")
    wait_until(lambda: drv.status.counter("sdo_timeouts") >= 2)
    during = len(sink.snapshot())
    node.silence(False)
    wait_until(lambda: drv.status.state == "ok" and len(sink.snapshot()) > during)
    assert drv.status.counter("heartbeat_losses") == 1
    assert drv.status.counter("configures") >= 2  # restarted when heartbeats came back
    _settled(node, sink)


def test_sdo_abort_is_an_error_with_the_abort_code(node: BatteryModule, bus: str,
                                                   run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok" and sink.values("cycle_count") == [0])
    node.sdo_abort(0x2020, 0x06060000)
    wait_until(lambda: drv.status.state == "error")
    assert drv.status.last_error == ("SDO abort 0x06060000 (Access failed due to a hardware "
                                     "error) reading 0x2020:00")
    assert drv.status.counter("sdo_abort_0x06060000") == drv.status.counter("sdo_aborts") >= 1
    node.sdo_abort(0x2020, None)
    wait_until(lambda: drv.status.state == "ok")
    _settled(node, sink)
    assert sink.values("cycle_count") == [0]  # an abort is not a value


def test_bus_off_reopens_the_interface(node: BatteryModule, bus: str, run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink)
    wait_until(lambda: drv.status.state == "ok")
    with can.Bus(interface="virtual", channel=bus) as other:  # SocketCAN's bus-off report
        other.send(can.Message(arbitration_id=0x40, is_error_frame=True, dlc=8,
                               data=bytes(8)))
    wait_until(lambda: drv.status.counter("bus_off") == 1)
    wait_until(lambda: drv.status.counter("bus_opens") == 2 and drv.status.state == "ok")
    assert drv.status.counter("error_frames") == 1
    assert drv.status.counter("to_disconnected") == 1  # the bus-off (a driver starts so)
    # frames sent while our interface was closed never reached us: compare what came after
    n = len(sink.values("pack_voltage"))
    wait_until(lambda: len(sink.values("pack_voltage")) > n + 2)


def test_pdo_mapping_read_over_sdo(node: BatteryModule, bus: str, run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(bus, sink, pdo_mapping="sdo", objects=[])
    wait_until(lambda: drv.status.state == "ok" and len(sink.values("cell_temperature")) >= 2)
    assert drv.status.counter("sdo_reads") == 0
    _settled(node, sink)


def test_a_mapping_unlike_the_eds_is_read_over_sdo_again_after_a_reboot(
        node: BatteryModule, bus: str, run_driver: Any) -> None:
    node.remap(2, (0x2004, 0x2011, 0x2003))  # 5 bytes: temperature, contactor, charge
    sink = Sink()
    drv = run_driver(bus, sink, pdo_mapping="sdo", objects=[])
    wait_until(lambda: drv.status.state == "ok" and len(sink.values("contactor_state")) == 1)
    node.remap(2, (0x2003,))  # the maker's tool again; the node restarts
    node.reboot()
    wait_until(lambda: drv.status.counter("configures") == 2 and drv.status.state == "ok")
    n = len(sink.values("state_of_charge"))
    wait_until(lambda: len(sink.values("state_of_charge")) > n + 2)
    assert drv.status.counter("bad_frames") == 0
    _settled(node, sink)


def test_a_mapping_unlike_the_eds_taken_from_the_eds_is_refused_frame_by_frame(
        node: BatteryModule, bus: str, run_driver: Any) -> None:
    node.remap(2, (0x2004, 0x2011, 0x2003))
    sink = Sink()
    drv = run_driver(bus, sink, objects=[])
    wait_until(lambda: drv.status.state == "ok" and drv.status.counter("bad_frames") >= 5)
    tags = {e.data["tag"] for e in sink.snapshot()}
    assert tags == {"pack_voltage", "pack_current"}  # TPDO2 never decoded with a wrong map


def test_deadband_and_scale(node: BatteryModule, bus: str, run_driver: Any) -> None:
    sink = Sink()
    run_driver(bus, sink, tpdos=[1], objects=[
        {"tag": "pack_v", "index": 0x2001, "scale": 0.001, "deadband": 0.1}])
    wait_until(lambda: len(sink.values("pack_v")) >= 1)
    node.set_value(0x2001, 60_000)
    wait_until(lambda: sink.values("pack_v")[-1] > 59.9)  # mV scaled to V; it walks on
    got = sink.values("pack_v")
    assert all(abs(b - a) > 0.1 for a, b in zip(got, got[1:], strict=False))
    assert {e.data["tag"] for e in sink.snapshot()} == {"pack_v", "pack_current"}


@pytest.mark.parametrize("over, key, problem", [
    ({"node_id": 128}, "devices.b.node_id", "128 is out of range"),
    ({"tpdos": [3]}, "devices.b.tpdos[0]", "TPDO3 is not in the EDS"),
    ({"tpdos": [1, 1]}, "devices.b.tpdos", "[1, 1] names a TPDO twice"),
    ({"tpdos": [], "objects": []}, "devices.b.tpdos", "no TPDO and no polled object"),
    ({"objects": [{"tag": "x", "index": 0x2099}]}, "devices.b.objects[0].index",
     "0x2099:00 is not in the EDS"),
    ({"objects": [{"tag": "x", "index": 0x2001, "subindex": 1}]},
     "devices.b.objects[0].index", "0x2001:01 is not in the EDS"),
    ({"eds": "/nonexistent.eds"}, "devices.b.eds", "cannot be read as an EDS file"),
    ({"bitrate": 300000}, "devices.b.bitrate", "300000 is not allowed"),
    ({"interface": "pcan"}, "devices.b.interface", "'pcan' is not allowed"),
    ({"heartbeat": 100}, "devices.b.heartbeat", "is not a known key"),
])
def test_config_errors_name_the_key(over: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        CanOpenDriver.validate_config("b", _table("x", **over), "devices.b")
    assert err.value.key == key and problem in err.value.problem, str(err.value)


def test_unlisted_objects_are_tagged_by_their_eds_name() -> None:
    assert snake("Pack voltage") == "pack_voltage"
    assert snake("TPDO1 mapping parameter") == "tpdo1_mapping_parameter"
