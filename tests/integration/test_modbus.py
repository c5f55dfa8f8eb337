"""Modbus TCP both ways: the emulated PLC against pymodbus's client (values, word order,
faults), then the agent's driver against the emulated PLC (every served change once, in
order; exceptions, silence, restart and refusals handled without stopping the poller)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from firmware.core.errors import ConfigError
from firmware.edges.clock import SystemClock
from firmware.edges.modbus import ModbusDriver, plan_blocks
from simulator.devices.modbus import ModbusPLC
from simulator.lab import wait_for
from tests.integration.event_sink import Sink

REGS = [
    {"tag": "count", "address": 0, "type": "uint32", "behaviour": "counter", "period_ms": 150},
    {"tag": "temp", "table": "input", "address": 0, "type": "float32", "word_order": "little",
     "value": 21.5},
    {"tag": "level", "address": 2, "type": "int16", "value": -7},
    {"tag": "reads", "address": 10, "type": "uint16", "behaviour": "changes_every_read"},
    {"tag": "run", "table": "coil", "address": 0, "value": True},
]


@pytest.fixture
def plc() -> Iterator[ModbusPLC]:
    with ModbusPLC("plc1", REGS) as p:
        yield p


def _client(plc: ModbusPLC) -> ModbusTcpClient:
    c = ModbusTcpClient("127.0.0.1", port=plc.port, timeout=0.5, retries=0)
    assert c.connect()
    return c


def test_the_plc_serves_each_type_and_word_order(plc: ModbusPLC) -> None:
    c = _client(plc)
    try:
        rr = c.read_input_registers(0, count=2, device_id=1)
        be = struct.pack(">f", 21.5)
        assert rr.registers == [int.from_bytes(be[2:], "big"), int.from_bytes(be[:2], "big")]
        rr = c.read_holding_registers(2, count=1, device_id=1)
        assert rr.registers == [struct.unpack(">H", struct.pack(">h", -7))[0]]
        first = c.read_holding_registers(10, count=1, device_id=1).registers[0]
        assert c.read_holding_registers(10, count=1, device_id=1).registers[0] == first + 1
        assert c.read_coils(0, count=1, device_id=1).bits[0] is True
        counts = []
        for _ in range(4):
            w = c.read_holding_registers(0, count=2, device_id=1).registers
            counts.append((w[0] << 16) | w[1])
            time.sleep(0.16)
        assert counts == sorted(counts) and counts[-1] > counts[0]  # only rises
    finally:
        c.close()
    served = [e for e in plc.truth() if e["kind"] == "register"]
    assert {e["tag"] for e in served} == {"count", "temp", "level", "reads", "run"}


def test_each_fault_shows_at_the_client(plc: ModbusPLC) -> None:
    c = _client(plc)
    try:
        plc.exception_mode(2)
        rr = c.read_holding_registers(0, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 2
        plc.exception_mode(None)
        plc.silence(True)
        with pytest.raises(ModbusException):
            c.read_holding_registers(0, count=2, device_id=1)
        plc.silence(False)
        c.close()
        assert wait_for(lambda: plc.connections() == 0, 2)
        import socket
        raw = socket.create_connection(("127.0.0.1", plc.port), timeout=2)
        assert wait_for(lambda: plc.connections() == 1, 2)
        assert plc.drop_connections() == 1
        assert raw.recv(16) == b""  # the PLC hung up on its client
        raw.close()
        before = plc.value("count")
        plc.restart()  # same port, values keep going
        c = _client(plc)
        w = c.read_holding_registers(0, count=2, device_id=1).registers
        assert (w[0] << 16) | w[1] >= before
    finally:
        c.close()
    faults = [e["fault"] for e in plc.truth() if e["kind"] == "fault"]
    assert faults == ["exception", "exception", "silence", "silence", "drop", "restart"]


def test_stop_frees_the_port() -> None:
    p = ModbusPLC("plc1", REGS).start()
    port = p.port
    p.stop()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing left listening
    assert not any(t.name.startswith("modbus-plc1") for t in threading.enumerate())


# ---- the driver ---------------------------------------------------------------------------

def _driver(plc: ModbusPLC, sink: Sink, **over: Any) -> ModbusDriver:
    table = {"host": "127.0.0.1", "port": plc.port, "poll_ms": 40, "timeout_s": 0.3,
             "stale_s": 0.8,
             "registers": [{k: v for k, v in r.items() if k in ("tag", "table", "address",
                                                                "type", "word_order")}
                           for r in REGS if r["tag"] != "reads"]} | over
    cfg = ModbusDriver.validate_config("plc1", table, "devices.plc1")
    return ModbusDriver("plc1", cfg, sink, SystemClock())


def test_every_served_change_is_one_event_in_order(plc: ModbusPLC) -> None:
    sink = Sink()
    drv = _driver(plc, sink).start()
    try:
        assert wait_for(lambda: len(sink.values("count")) >= 8, 5)
        plc.set_value("level", 42)
        assert wait_for(lambda: sink.values("level")[-1:] == [42], 3)
    finally:
        drv.stop()
    truth = [e for e in plc.truth() if e["kind"] == "register"]
    for tag in ("count", "level", "temp", "run"):
        assert sink.values(tag) == [e["value"] for e in truth if e["tag"] == tag], tag
    assert sink.values("temp") == [21.5] and sink.values("run") == [True]
    assert drv.status.state == "ok"
    ev = sink.events[0]
    assert ev.source == "plc1" and ev.kind == "register" and ev.read_ms > 1_600_000_000_000


def test_adjacent_registers_are_read_in_one_request() -> None:
    cfg = ModbusDriver.validate_config("p", {"host": "h", "registers": [
        {"tag": "a", "address": 0, "type": "uint32"}, {"tag": "b", "address": 2},
        {"tag": "c", "address": 3, "type": "float32"}, {"tag": "d", "address": 9},
        {"tag": "e", "table": "input", "address": 0}, {"tag": "f", "table": "coil", "address": 0},
    ]}, "devices.p")
    blocks = [(b.table, b.address, b.count) for b in plan_blocks(cfg["registers"])]
    assert blocks == [("holding", 0, 5), ("holding", 9, 1), ("input", 0, 1), ("coil", 0, 1)]


def test_exceptions_and_a_long_silence_do_not_kill_the_poller(plc: ModbusPLC) -> None:
    """Peers' pollers died on an exception or timeout during a long outage; this one
    resumes by itself when the PLC answers again, and repeats nothing meanwhile."""
    sink = Sink()
    drv = _driver(plc, sink).start()
    try:
        assert wait_for(lambda: drv.status.state == "ok" and sink.values("count"), 5)
        plc.exception_mode(4)
        assert wait_for(lambda: drv.status.state == "error", 3)
        assert "exception 4" in (drv.status.last_error or "")
        assert drv.status.counter("modbus_exceptions") >= 1
        plc.exception_mode(None)
        plc.silence(True)
        n = len(sink.events)
        assert wait_for(lambda: drv.status.state == "stale", 5)
        time.sleep(0.5)
        assert len(sink.events) == n  # a silent PLC's last values are not re-sent
        assert drv.status.counter("timeouts") >= 1
        plc.silence(False)
        before = len(sink.values("count"))
        assert wait_for(lambda: len(sink.values("count")) > before + 2, 5)
        assert drv.status.state == "ok"
    finally:
        drv.stop()


def test_a_plc_restart_reconnects_and_refusals_are_counted(plc: ModbusPLC) -> None:
    sink = Sink()
    drv = _driver(plc, sink).start()
    try:
        assert wait_for(lambda: len(sink.values("count")) >= 2, 5)
        plc.stop()
        assert wait_for(lambda: drv.status.state == "disconnected", 5)
        plc.start()
        before = len(sink.values("count"))
        assert wait_for(lambda: len(sink.values("count")) > before + 2, 8)
        assert drv.status.counter("reconnects") >= 1
        sink.refuse = 3
        assert wait_for(lambda: drv.status.counter("refused") == 3, 5)
        n = len(sink.events)
        assert wait_for(lambda: len(sink.events) > n, 3)  # and it goes on
    finally:
        drv.stop()


@pytest.mark.parametrize("change, key", [
    ({"registers": [{"tag": "x", "address": 0, "type": "int17"}]}, "devices.plc1.registers[0].type"),
    ({"registers": [{"tag": "x", "address": 0, "word_order": "middle"}]},
     "devices.plc1.registers[0].word_order"),
    ({"registers": [{"tag": "x"}]}, "devices.plc1.registers[0].address"),
    ({"registers": [{"tag": "x", "table": "coil", "address": 0, "type": "uint16"}]},
     "devices.plc1.registers[0].type"),
    ({"registers": [{"tag": "x", "address": 0}, {"tag": "x", "address": 1}]},
     "devices.plc1.registers[1].tag"),
    ({"registers": []}, "devices.plc1.registers"),
    ({"poll_ms": 1}, "devices.plc1.poll_ms"),
    ({"speed": 3}, "devices.plc1.speed"),
])
def test_bad_config_names_the_key(change: dict[str, Any], key: str) -> None:
    table = {"host": "127.0.0.1", "registers": [{"tag": "a", "address": 0}]} | change
    with pytest.raises(ConfigError) as err:
        ModbusDriver.validate_config("plc1", table, "devices.plc1")
    assert err.value.key == key, str(err.value)
