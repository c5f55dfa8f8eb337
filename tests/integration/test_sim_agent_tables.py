"""One file drives both: the emulators take the agent's own device tables (``nodes`` of
``{tag, node_id}`` for OPC UA; the poller's keys for Modbus), and the agent's drivers,
configured from the same file, read what the emulators serve."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from midshift.firmware.core.event import Event
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.config_file import load_config
from midshift.firmware.edges.device_types import driver_class
from midshift.simulator.__main__ import UsageError, load_devices
from midshift.simulator.broker import free_port

SITE = '''board_config = "sim"
[gateway]
id = "gw1"
site = "s1"
[journal]
path = "{tmp}/journal"
[devices.plc1]
type = "modbus"
host = "127.0.0.1"
port = {modbus_port}
poll_ms = 100
stale_s = 5.0
[[devices.plc1.registers]]
tag = "count"
address = 0
type = "uint32"
scale = 1.0
deadband = 0
[devices.line1]
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{opc_port}/midshift/plc"
publishing_ms = 50
[[devices.line1.nodes]]
tag = "parts"
node_id = "ns=2;s=Line1.Parts"
[[devices.line1.nodes]]
tag = "oven_temp"
node_id = "ns=2;s=Line1.OvenTemp"
[devices.spare]
type = "modbus"
enabled = false
host = "127.0.0.1"
[[devices.spare.registers]]
tag = "x"
address = 0
'''


def test_the_agents_site_file_drives_the_emulators_and_the_drivers(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(tmp=tmp_path, modbus_port=free_port(), opc_port=free_port()))
    devices = load_devices(site, tmp_path / "truth")
    assert sorted(devices) == ["line1", "plc1"]  # the disabled one is not served
    cfg = load_config(site)
    got: list[Event] = []
    lock = threading.Lock()

    def emit(e: Event) -> int:
        with lock:
            got.append(e)
            return len(got)

    drivers: list[Any] = []
    try:
        for d in devices.values():
            d.start()
        assert devices["line1"].node_id("oven_temp") == "ns=2;s=Line1.OvenTemp"
        for d in cfg.devices:
            if d.settings["enabled"]:
                settings = {k: v for k, v in d.settings.items() if k != "enabled"}
                drivers.append(driver_class(d.type)(d.name, settings, emit,
                                                    SystemClock()).start())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with lock:
                tags = {(e.source, e.data["tag"]) for e in got}
            if {("plc1", "count"), ("line1", "parts"), ("line1", "oven_temp")} <= tags:
                break
            time.sleep(0.05)
        assert {("plc1", "count"), ("line1", "parts"), ("line1", "oven_temp")} <= tags
    finally:
        for drv in drivers:
            drv.stop()
        for d in devices.values():
            d.stop()


@pytest.mark.parametrize("table,problem", [
    ('nodes = [{tag = "a", node_id = "ns=3;s=X"}]', "is not ns=2;s=TEXT"),
    ('nodes = [{tag = "a", node_id = "ns=2;s=X"}]\nvariables = []', "not both"),
])
def test_agent_form_errors_say_what_is_expected(tmp_path: Path, table: str,
                                                problem: str) -> None:
    f = tmp_path / "d.toml"
    f.write_text(f'[devices.p]\ntype = "opcua"\nendpoint = "opc.tcp://127.0.0.1:0/x"\n{table}\n')
    with pytest.raises(UsageError, match=problem):
        load_devices(f, tmp_path)
