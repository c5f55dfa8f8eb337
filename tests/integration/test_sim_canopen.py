"""The battery module behind its emulated USB-CAN adapter (slcan on a pty), and the agent's
driver reaching it the way it reaches a real adapter: python-can's ``slcan`` interface."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from midshift.firmware.edges.canopen import CanOpenDriver
from midshift.firmware.edges.clock import SystemClock
from midshift.simulator.devices.canopen import EDS, BatteryModule
from midshift.simulator.devices.slcan_adapter import SlcanAdapter, frame_line, parse_frame
from tests.integration.canopen_values import journaled_values
from tests.integration.event_sink import Sink, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[SlcanAdapter]:
    node = BatteryModule("bms1", 16, f"slcan-{tmp_path.name}", seed=3, tpdo_period_ms=20)
    with SlcanAdapter(tmp_path / "canable", node) as a:
        yield a


def _driver(adapter: SlcanAdapter, sink: Sink, **over: Any) -> CanOpenDriver:
    table = {"interface": "slcan", "channel": str(adapter.link_path), "node_id": 16,
             "eds": str(EDS), "tpdos": [1, 2], "heartbeat_ms": 100, "sdo_timeout_s": 0.3,
             "objects": [{"tag": "cycle_count", "index": 0x2020, "poll_ms": 50}]} | over
    cfg = CanOpenDriver.validate_config("bms1", table, "devices.bms1")
    return CanOpenDriver("bms1", cfg, sink, SystemClock())


@pytest.mark.parametrize("msg, line", [
    (can.Message(arbitration_id=0x190, data=b"\x01\xab", is_extended_id=False), b"t1902" b"01AB\r"),
    (can.Message(arbitration_id=0x710, data=b"\x05", is_extended_id=False), b"t7101" b"05\r"),
    (can.Message(arbitration_id=0x1ABCDEF0, data=b"", is_extended_id=True), b"T1ABCDEF00\r"),
    (can.Message(arbitration_id=0x123, dlc=2, is_remote_frame=True, is_extended_id=False),
     b"r1232\r"),
])
def test_frames_in_slcan_ascii_both_ways(msg: can.Message, line: bytes) -> None:
    assert frame_line(msg) == line
    back = parse_frame(line[:-1].decode())
    assert back is not None and back.equals(msg, timestamp_delta=None)


@pytest.mark.parametrize("bad", ["t19", "t1903AB", "t800100", "tXYZ0", "t1909" + "00" * 9])
def test_malformed_frame_commands_are_refused(bad: str) -> None:
    assert parse_frame(bad) is None


def test_driver_over_slcan_every_value_once_and_the_adapter_replugged(
        adapter: SlcanAdapter) -> None:
    sink = Sink()
    drv = _driver(adapter, sink).start()
    try:
        wait_until(lambda: drv.status.state == "ok" and len(sink.values("pack_voltage")) >= 5)
        assert adapter.bitrate == 500_000 and adapter.frames_in > 0
        adapter.node.emcy(0x4210, 0x08)
        wait_until(lambda: drv.status.counter("emcy") == 1)
        adapter.unplug()
        wait_until(lambda: drv.status.state == "disconnected")
        assert drv.status.counter("bus_errors") == 1
        adapter.replug()
        wait_until(lambda: drv.status.state == "ok" and drv.status.counter("bus_opens") >= 2,
                   10.0)
        adapter.node.garbage()
        wait_until(lambda: drv.status.counter("bad_frames") == 6)
        n = len(sink.values("pack_voltage"))
        wait_until(lambda: len(sink.values("pack_voltage")) > n + 3)
        adapter.node.silence(True)  # the node goes quiet: the last frames drain
        wait_until(lambda: drv.status.state == "disconnected")
    finally:
        drv.stop()
    assert not any(t.name == "driver-bms1" for t in threading.enumerate())
    # Values the node sent while the adapter was unplugged never reached the agent (no
    # adapter, no bus): compare the journal with the node's values outside that window.
    unplugged = _unplugged_window(adapter)
    truth = _truth_outside(adapter.node, unplugged)
    got = journaled_values(sink)
    for tag, values in truth.items():
        assert got.get(tag, [])[:len(values[0])] == values[0], tag  # before: exactly
        tail = values[1]
        assert got[tag][len(got[tag]) - len(tail):] == tail, tag      # after: exactly
        assert len(got[tag]) <= len(values[0]) + len(values[2]) + len(tail), tag
    assert "(emcy)" in got and got["(emcy)"] == [0x4210]


def _unplugged_window(adapter: SlcanAdapter) -> tuple[int, int]:
    """The ground truth's ``t_ms`` from which values may be lost (frames still in the pty
    when the adapter is pulled go with it, as with a real one: 200 ms before the unplug),
    and its ``n`` from which the agent is back (the garbage, sent once it was ok again)."""
    faults = {e["fault"]: e for e in adapter.truth() if e["kind"] == "fault"}
    return faults["adapter_unplugged"]["t_ms"] - 200, faults["garbage"]["n"]


def _truth_outside(node: BatteryModule, window: tuple[int, int]) -> dict[str, list[list[Any]]]:
    """Per tag: [values before the unplug, values after the agent was back, values in
    between (may or may not have arrived)]."""
    out: dict[str, list[list[Any]]] = {}
    for e in node.truth():
        if e["kind"] != "canopen":
            continue
        slot = 0 if e["t_ms"] < window[0] else (1 if e["n"] > window[1] else 2)
        out.setdefault(e["tag"], [[], [], []])[slot].append(e["value"])
    return {tag: [v[0], v[1], v[2]] for tag, v in out.items()}


def test_the_example_drives_the_emulator_behind_an_adapter(tmp_path: Path) -> None:
    """``python -m midshift.simulator devices --config`` takes the agent's own table: with
    ``interface = "slcan"`` the adapter's pty is linked at the table's ``channel``."""
    import tomllib

    from midshift.simulator.__main__ import load_devices
    text = (ROOT / "midshift" / "board_configs" / "examples" / "canopen.toml").read_text()
    doc = tomllib.loads(text)
    port = tmp_path / "canable"
    text = text.replace(doc["devices"]["bms1"]["channel"], str(port))
    (tmp_path / "site.toml").write_text(text)
    devices = load_devices(tmp_path / "site.toml", tmp_path / "truth")
    adapter = devices["bms1"]
    assert isinstance(adapter, SlcanAdapter)
    with adapter:
        assert port.is_symlink() and adapter.describe()["port"] == str(port)
        with can.Bus(interface="slcan", channel=str(port), bitrate=500_000,
                     sleep_after_open=0.1) as bus:
            boot = bus.recv(2.0)  # heartbeats of a PRE-OPERATIONAL node, 1 s apart
            while boot is not None and boot.arbitration_id != 0x710:
                boot = bus.recv(2.0)
            assert boot is not None and bytes(boot.data) == bytes([127])


def test_the_simulated_site_gets_an_adapter_and_an_agent_table(tmp_path: Path) -> None:
    import tomllib

    from midshift.simulator.devices import canopen as canopen_type
    spec = {"type": "canopen", "node_id": 20, "tpdo_period_ms": 200, "heartbeat_ms": 150}
    adapter = canopen_type.emulate("bms2", spec, tmp_path, 5, 2.0, tmp_path / "bms2.jsonl")
    try:
        lines = canopen_type.site_table("bms2", spec, adapter)
        table = tomllib.loads("\n".join(lines))
        cfg = CanOpenDriver.validate_config("bms2", table, "devices.bms2")
        assert cfg["channel"] == str(tmp_path / "bms2") and cfg["node_id"] == 20
        assert cfg["heartbeat_ms"] == 150 and adapter.node.tpdo_period_ms == 100
        sink = Sink()
        drv = CanOpenDriver("bms2", cfg, sink, SystemClock()).start()
        try:
            wait_until(lambda: drv.status.state == "ok" and len(sink.snapshot()) >= 4, 10.0)
        finally:
            drv.stop()
    finally:
        adapter.stop()
