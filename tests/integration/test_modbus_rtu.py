"""Modbus RTU: two units on one emulated RS-485 line (pymodbus's serial server on a pty,
``midshift/simulator/devices/modbus_rtu.py``), polled by two agent devices naming the same port.

Each unit's ground truth lists every value it served whole; each entry must arrive as
exactly one event of that unit's device, nothing else may arrive, and each fault shows
as the device's state and counters while the other unit on the line goes on.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import validate
from midshift.firmware.edges import modbus_rtu
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.device_types import EdgeDeviceTypes
from midshift.firmware.edges.modbus import ModbusDriver
from midshift.simulator.devices.modbus import ModbusPLC
from midshift.simulator.devices.modbus_rtu import RtuLinePLC
from tests.integration.event_sink import Sink, wait_until

REGS = [
    {"tag": "energy_wh", "address": 0, "type": "uint32", "behaviour": "counter", "period_ms": 40},
    {"tag": "voltage", "address": 2, "type": "float32", "value": 230.5},
    {"tag": "alarm", "table": "coil", "address": 0, "value": False},
]
TAGS = ("energy_wh", "voltage", "alarm")
DRIVER_KEYS = ("tag", "table", "address", "type")
LINE = {"baudrate": 115200, "parity": "N", "stop_bits": 2}


@pytest.fixture
def line(tmp_path: Path) -> Iterator[RtuLinePLC]:
    units = [ModbusPLC(f"meter{u}", REGS, unit_id=u) for u in (1, 2)]
    with RtuLinePLC("rs485", tmp_path / "rs485", units, **LINE) as plc:
        yield plc


def _table(line: RtuLinePLC, unit: int, **over: Any) -> dict[str, Any]:
    return {"port": str(line.link_path), "unit_id": unit, **LINE, "poll_ms": 20,
            "timeout_s": 0.3, "stale_s": 0.8,
            "registers": [{k: v for k, v in r.items() if k in DRIVER_KEYS} for r in REGS]
            } | over


@pytest.fixture
def meters(line: RtuLinePLC) -> Iterator[Any]:
    """Start one driver per unit on the line; afterwards they are stopped, their threads
    gone and the shared port released."""
    started: list[ModbusDriver] = []

    def start(**over: Any) -> tuple[list[ModbusDriver], list[Sink]]:
        sinks = [Sink(), Sink()]
        for unit, sink in zip((1, 2), sinks, strict=True):
            name = f"meter{unit}"
            cfg = ModbusDriver.validate_config(name, _table(line, unit, **over), f"devices.{name}")
            started.append(ModbusDriver(name, cfg, sink, SystemClock()).start())
        return started, sinks

    yield start
    for drv in started:
        drv.stop()
    assert not any(t.name.startswith("driver-meter") for t in threading.enumerate())
    assert modbus_rtu._lines == {}


def _served(line: RtuLinePLC, unit: int, tag: str) -> list[Any]:
    return [e["value"] for e in line.truth(unit) if e["kind"] == "register" and e["tag"] == tag]


def _exactly_once(line: RtuLinePLC, drivers: list[ModbusDriver], sinks: list[Sink]) -> None:
    """Every value each unit served whole is one event of its device, in order; nothing
    else was emitted."""
    for drv in drivers:
        drv.stop()
    for unit, sink in zip((1, 2), sinks, strict=True):
        for tag in TAGS:
            assert sink.values(tag) == _served(line, unit, tag), (unit, tag)
        assert {e.source for e in sink.snapshot()} <= {f"meter{unit}"}


def test_two_units_share_one_line_and_each_value_arrives_once(line: RtuLinePLC,
                                                                meters: Any) -> None:
    drivers, sinks = meters()
    wait_until(lambda: all(len(s.values("energy_wh")) >= 10 for s in sinks))
    line.units[2].set_value("voltage", 231.25)
    line.units[1].set_value("alarm", True)
    wait_until(lambda: sinks[1].values("voltage")[-1:] == [231.25]
               and sinks[0].values("alarm")[-1:] == [True])
    assert len(modbus_rtu._lines) == 1  # one port, one client, for both devices
    _exactly_once(line, drivers, sinks)
    assert sinks[0].values("voltage") == [230.5] and sinks[1].values("alarm") == [False]
    for drv in drivers:
        assert drv.status.state == "ok" and drv.status.counter("timeouts") == 0
        assert drv.status.counter("crc_errors") == 0


def test_crc_errors_are_counted_as_an_error_state_and_journal_nothing(line: RtuLinePLC,
                                                                        meters: Any) -> None:
    drivers, sinks = meters()
    wait_until(lambda: all(d.status.state == "ok" for d in drivers))
    line.corrupt_crc(1, every=1)
    wait_until(lambda: drivers[0].status.state == "error")
    assert "bad CRC" in (drivers[0].status.last_error or "")
    served = line.units[1].requests
    wait_until(lambda: line.units[1].requests >= served + 20)
    assert drivers[0].status.state == "error"  # the unit answers, through noise: not stale
    assert drivers[0].status.counter("crc_errors") >= 20
    # Told at once, not after a timeout each: the line kept its pace.
    assert drivers[0].status.counter("timeouts") == 0
    line.corrupt_crc(1, every=0)
    wait_until(lambda: drivers[0].status.state == "ok")
    line.corrupt_crc(1, every=3)  # a noisy line: one answer in three
    n = drivers[0].status.counter("crc_errors")
    wait_until(lambda: drivers[0].status.counter("crc_errors") >= n + 10)
    line.corrupt_crc(1, every=0)
    assert line.corrupted >= 30
    assert drivers[1].status.state == "ok" and drivers[1].status.counter("crc_errors") == 0
    _exactly_once(line, drivers, sinks)


def test_a_silent_unit_goes_stale_backs_off_and_does_not_starve_the_other(
        line: RtuLinePLC, meters: Any) -> None:
    drivers, sinks = meters()
    wait_until(lambda: all(d.status.state == "ok" for d in drivers))
    line.silence(1, True)
    wait_until(lambda: drivers[0].status.state == "stale", timeout_s=5)
    timeouts = drivers[0].status.counter("timeouts")
    before = len(sinks[1].values("energy_wh"))
    wait_until(lambda: len(sinks[1].values("energy_wh")) >= before + 20)
    # Backed off: far fewer timeouts than polls of the live unit in the same time.
    assert drivers[0].status.counter("timeouts") - timeouts <= 6
    assert drivers[1].status.state == "ok" and drivers[1].status.counter("timeouts") == 0
    line.silence(1, False)
    wait_until(lambda: drivers[0].status.state == "ok", timeout_s=8)
    _exactly_once(line, drivers, sinks)


def test_a_slow_unit_shares_the_line_in_turns(line: RtuLinePLC, meters: Any) -> None:
    drivers, sinks = meters()
    wait_until(lambda: all(d.status.state == "ok" for d in drivers))
    line.slow(1, 150)  # every answer of unit 1 takes 150 ms: the line is busy with it
    waited = drivers[1].status.counter("line_wait_ms")
    req1, req2 = line.units[1].requests, line.units[2].requests
    wait_until(lambda: line.units[1].requests >= req1 + 12, timeout_s=8)
    # Unit 2 got its turns between unit 1's (first come, first served), not after them.
    assert line.units[2].requests - req2 >= 10
    assert drivers[1].status.counter("line_wait_ms") - waited >= 300
    assert drivers[0].status.counter("timeouts") == 0
    line.slow(1, 0)
    for drv in drivers:
        assert drv.status.state == "ok"
    _exactly_once(line, drivers, sinks)


def test_a_unit_slower_than_its_timeout_times_out_and_its_late_answers_fool_nobody(
        line: RtuLinePLC, meters: Any) -> None:
    """Unit 1 answers 450 ms late with a 300 ms timeout: each answer lands on the line
    while the master has moved on. It must not be taken for unit 2's answer (another
    unit id) nor for a later answer of unit 1 (the line flushes before each request)."""
    drivers, sinks = meters()
    wait_until(lambda: all(d.status.state == "ok" for d in drivers))
    line.slow(1, 450)
    wait_until(lambda: drivers[0].status.counter("timeouts") >= 4, timeout_s=8)
    before = len(sinks[1].values("energy_wh"))
    wait_until(lambda: len(sinks[1].values("energy_wh")) >= before + 15, timeout_s=8)
    assert drivers[1].status.state == "ok" and drivers[1].status.counter("timeouts") == 0
    for drv in drivers:
        drv.stop()
    # Unit 2: every value once. Unit 1: late answers were served (and logged) but not
    # taken, so its events are a subsequence of what it served, never anything else.
    for tag in TAGS:
        assert sinks[1].values(tag) == _served(line, 2, tag), tag
        served = iter(_served(line, 1, tag))
        assert all(v in served for v in sinks[0].values(tag)), tag


def test_a_missing_port_is_disconnected_and_counted(tmp_path: Path) -> None:
    table = {"port": str(tmp_path / "nothing"), "unit_id": 1, **LINE, "poll_ms": 20,
             "registers": [{"tag": "a", "address": 0}]}
    drv = ModbusDriver("m", ModbusDriver.validate_config("m", table, "devices.m"), Sink(),
                       SystemClock()).start()
    try:
        wait_until(lambda: drv.status.counter("connect_failures") >= 2)
        assert drv.status.state == "disconnected"
        assert "cannot open" in (drv.status.last_error or "")
    finally:
        drv.stop()
    assert modbus_rtu._lines == {}


def _site(devices: str) -> dict[str, Any]:
    return tomllib.loads(
        '[board]\nname = "b"\n[gateway]\nid = "gw1"\nsite = "s"\nkey_file = "k"\n'
        '[serial]\nrs485 = "/dev/serial/by-id/usb-rs485"\n'
        '[journal]\npath = "j"\n[uplinks.eth]\nbroker = "mqtt://127.0.0.1:1883"\n' + devices)


METER = '[devices.{name}]\ntype = "modbus"\nport = "rs485"\nunit_id = {unit}\n{extra}' \
        '[[devices.{name}.registers]]\ntag = "e"\naddress = 0\n'


def test_units_on_one_port_pass_the_site_check() -> None:
    cfg = validate(_site(METER.format(name="m1", unit=1, extra="") +
                         METER.format(name="m2", unit=2, extra="")), EdgeDeviceTypes())
    m1, m2 = cfg.devices
    assert m1.settings["port"] == m2.settings["port"] == "/dev/serial/by-id/usb-rs485"
    assert (m1.settings["baudrate"], m1.settings["parity"], m1.settings["stop_bits"]) == \
        (19200, "E", 1)


@pytest.mark.parametrize("second, key, words", [
    (METER.format(name="m2", unit=1, extra=""), "devices.m2.unit_id", "also devices.m1"),
    (METER.format(name="m2", unit=2, extra="baudrate = 9600\n"), "devices.m2.port",
     "19200 8E1, not 9600 8E1"),
    ('[devices.s]\ntype = "scale"\nport = "rs485"\n', "devices.s.port", "also devices.m1"),
])
def test_a_line_shared_wrongly_is_refused(second: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(_site(METER.format(name="m1", unit=1, extra="") + second), EdgeDeviceTypes())
    assert err.value.key == key and words in str(err.value)


@pytest.mark.parametrize("change, key", [
    ({"host": "10.0.0.5"}, "devices.m.host"),
    ({"unit_id": 0}, "devices.m.unit_id"),
    ({"parity": "X"}, "devices.m.parity"),
    ({"stop_bits": 3}, "devices.m.stop_bits"),
    ({"baudrate": 12345}, "devices.m.baudrate"),
    ({"port": "bogus://x"}, "devices.m.port"),
    ({"port": "502"}, "devices.m.port"),
])
def test_bad_rtu_config_names_the_key(change: dict[str, Any], key: str) -> None:
    table = {"port": "/dev/ttyUSB0", "registers": [{"tag": "a", "address": 0}]} | change
    with pytest.raises(ConfigError) as err:
        ModbusDriver.validate_config("m", table, "devices.m")
    assert err.value.key == key


@pytest.mark.parametrize("baud, parity, stop_bits, gap_s", [
    (9600, "E", 1, 3.5 * 11 / 9600), (9600, "N", 2, 3.5 * 11 / 9600),
    (19200, "E", 1, 3.5 * 11 / 19200), (115200, "E", 1, 0.00175),
])
def test_frame_gap(baud: int, parity: str, stop_bits: int, gap_s: float) -> None:
    assert modbus_rtu.frame_gap_s(baud, parity, stop_bits) == pytest.approx(gap_s)


def test_the_emulators_take_the_agents_tables_one_line_per_port(tmp_path: Path) -> None:
    """``python -m midshift.simulator devices --config SITE``: two RTU tables naming one port are
    one emulated line serving both unit ids; the agent polls both through it."""
    from midshift.simulator.__main__ import load_devices
    port = tmp_path / "rs485"
    text = "".join(
        f'[devices.meter{u}]\ntype = "modbus"\nport = "{port}"\nunit_id = {u}\n'
        'baudrate = 115200\nparity = "N"\nstop_bits = 2\npoll_ms = 20\n'
        f'[[devices.meter{u}.registers]]\ntag = "energy_wh"\naddress = 0\ntype = "uint32"\n'
        for u in (1, 2))
    (tmp_path / "site.toml").write_text(text)
    devices = load_devices(tmp_path / "site.toml", tmp_path / "truth")
    line = devices["meter1"]
    assert devices["meter2"] is line and sorted(line.units) == [1, 2]
    line.units[2].set_value("energy_wh", 7)
    tables = tomllib.loads(text)["devices"]
    sinks = [Sink(), Sink()]
    with line:
        drivers = [ModbusDriver(n, ModbusDriver.validate_config(
            n, {k: v for k, v in t.items() if k != "type"}, f"devices.{n}"), s,
            SystemClock()).start() for (n, t), s in zip(tables.items(), sinks, strict=True)]
        try:
            wait_until(lambda: [s.values("energy_wh") for s in sinks] == [[0], [7]])
        finally:
            for drv in drivers:
                drv.stop()
    (tmp_path / "site.toml").write_text(text.replace("unit_id = 2", "unit_id = 1"))
    with pytest.raises(Exception, match="unit_id: 1 is also devices.meter1's"):
        load_devices(tmp_path / "site.toml", tmp_path / "truth")
