"""The emulated Modbus PLC against pymodbus's own client over loopback.

Expected register words are built here with ``struct`` from the configured values, not
with the emulator's encoder, so a word-order or sign mistake in either shows up.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from midshift.simulator.devices.modbus import ModbusPLC
from midshift.simulator.ground_truth import read_ground_truth
from tests.integration.event_sink import wait_until


def words(fmt: str, value: Any, word_order: str = "big") -> list[int]:
    raw = struct.pack(fmt, value)
    ws = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return ws[::-1] if word_order == "little" else ws


# tag, table, address, type, word_order, value, expected words
TYPED = [
    ("i16", "holding", 0, "int16", "big", -7, words(">h", -7)),
    ("u16", "holding", 1, "uint16", "big", 65535, [0xFFFF]),
    ("i32b", "holding", 2, "int32", "big", -123456, words(">i", -123456)),
    ("i32l", "holding", 4, "int32", "little", -123456, words(">i", -123456, "little")),
    ("u32b", "holding", 6, "uint32", "big", 4_000_000_000, words(">I", 4_000_000_000)),
    ("u32l", "holding", 8, "uint32", "little", 0x12345678, [0x5678, 0x1234]),
    ("f32b", "holding", 10, "float32", "big", 21.5, words(">f", 21.5)),
    ("f32l", "holding", 12, "float32", "little", -0.1, words(">f", -0.1, "little")),
    ("in16", "input", 3, "int16", "big", -32768, [0x8000]),
    ("inf", "input", 4, "float32", "little", 1e6, words(">f", 1e6, "little")),
]
COILS = [("run", 0, True), ("alarm", 1, False), ("door", 2, True)]


def _reg(tag: str, table: str, address: int, dtype: str, order: str, value: Any) -> dict:
    return {"tag": tag, "table": table, "address": address, "type": dtype,
            "word_order": order, "value": value}


MAP = [_reg(*row[:6]) for row in TYPED] + [
    {"tag": t, "table": "coil", "address": a, "value": v} for t, a, v in COILS] + [
    {"tag": "count", "address": 20, "type": "uint32", "behaviour": "counter", "period_ms": 20},
    {"tag": "reads", "address": 30, "behaviour": "changes_every_read"},
    {"tag": "wrap", "address": 31, "behaviour": "counter", "value": 65534, "step": 1,
     "period_ms": 3_600_000},
    {"tag": "temp", "table": "input", "address": 10, "type": "float32",
     "behaviour": "random_walk", "value": 20.0, "period_ms": 10},
]


def _client(plc: ModbusPLC, timeout_s: float = 1.0) -> ModbusTcpClient:
    c = ModbusTcpClient("127.0.0.1", port=plc.port, timeout=timeout_s, retries=0,
                        reconnect_delay=0)
    assert c.connect()
    return c


def _u32(ws: list[int]) -> int:
    return (ws[0] << 16) | ws[1]


@pytest.fixture(scope="module")
def plc() -> Iterator[ModbusPLC]:
    with ModbusPLC("plc1", MAP, seed=7) as p:
        yield p


@pytest.fixture
def client(plc: ModbusPLC) -> Iterator[ModbusTcpClient]:
    c = _client(plc)
    yield c
    c.close()


@pytest.fixture
def fresh() -> Iterator[ModbusPLC]:
    """A PLC of its own, for tests that switch faults."""
    with ModbusPLC("plc2", MAP) as p:
        yield p


@pytest.mark.parametrize("tag, table, address, dtype, order, value, expected", TYPED,
                         ids=[row[0] for row in TYPED])
def test_each_type_and_word_order_is_served_as_its_words(
        client: ModbusTcpClient, tag: str, table: str, address: int, dtype: str, order: str,
        value: Any, expected: list[int]) -> None:
    read = client.read_input_registers if table == "input" else client.read_holding_registers
    rr = read(address, count=len(expected), device_id=1)
    assert not rr.isError(), rr
    assert rr.registers == expected


def test_a_block_read_spans_several_tags_and_coils_read_as_bits(client: ModbusTcpClient) -> None:
    rr = client.read_holding_registers(0, count=14, device_id=1)
    assert rr.registers == [w for row in TYPED if row[1] == "holding" for w in row[6]]
    bits = client.read_coils(0, count=3, device_id=1).bits[:3]
    assert bits == [v for _, _, v in COILS]


def test_the_ground_truth_holds_the_values_as_the_wire_carried_them(
        plc: ModbusPLC, client: ModbusTcpClient) -> None:
    client.read_holding_registers(10, count=4, device_id=1)
    served = {e["tag"]: e for e in plc.truth() if e["kind"] == "register"}
    assert served["f32b"]["value"] == 21.5 and served["f32b"]["expect"] is True
    # -0.1 is not a float32; the wire carries the nearest one, logged as its shortest text.
    near = struct.unpack(">f", struct.pack(">f", -0.1))[0]
    assert near != -0.1 and served["f32l"]["value"] == -0.1
    assert served["f32l"]["address"] == 12 and served["f32l"]["table"] == "holding"
    n = len(plc.truth())
    client.read_holding_registers(10, count=2, device_id=1)  # same value again: no entry
    assert len([e for e in plc.truth()[n:] if e.get("tag") == "f32b"]) == 0


def test_a_counter_only_rises_and_wraps_only_at_its_type(plc: ModbusPLC,
                                                         client: ModbusTcpClient) -> None:
    seen = [_u32(client.read_holding_registers(20, count=2, device_id=1).registers)]
    deadline = time.monotonic() + 3
    while len(set(seen)) < 5 and time.monotonic() < deadline:
        seen.append(_u32(client.read_holding_registers(20, count=2, device_id=1).registers))
    assert len(set(seen)) >= 5 and seen == sorted(seen)
    assert plc.bump_counter("wrap", 1) == 65535
    assert client.read_holding_registers(31, count=1, device_id=1).registers == [65535]
    assert plc.bump_counter("wrap", 1) == 0  # a uint16 counter rolls over like a PLC's
    assert client.read_holding_registers(31, count=1, device_id=1).registers == [0]


def test_changes_every_read_and_random_walk_move(plc: ModbusPLC, client: ModbusTcpClient) -> None:
    got = [client.read_holding_registers(30, count=1, device_id=1).registers[0]
           for _ in range(5)]
    assert [b - a for a, b in zip(got, got[1:], strict=False)] == [1, 1, 1, 1]
    temps = set()
    deadline = time.monotonic() + 3
    while len(temps) < 3 and time.monotonic() < deadline:
        ws = client.read_input_registers(10, count=2, device_id=1).registers
        temps.add(struct.unpack(">f", struct.pack(">HH", *ws))[0])
    assert len(temps) >= 3
    served = [e["value"] for e in plc.truth() if e.get("tag") == "reads"]
    assert served[-5:] == got  # each read served a new value, each logged


def test_set_value_is_served_and_checked_against_the_type(plc: ModbusPLC,
                                                          client: ModbusTcpClient) -> None:
    plc.set_value("i16", 1234)
    assert client.read_holding_registers(0, count=1, device_id=1).registers == [1234]
    plc.set_value("i16", -7)
    with pytest.raises(ValueError, match="int16"):
        plc.set_value("i16", 40000)
    with pytest.raises(KeyError):
        plc.set_value("nope", 1)


def test_another_unit_id_gets_no_answer(plc: ModbusPLC) -> None:
    c = _client(plc, timeout_s=0.3)
    try:
        ignored = plc.ignored
        with pytest.raises(ModbusIOException):
            c.read_holding_registers(0, count=1, device_id=9)
        assert plc.ignored == ignored + 1
    finally:
        c.close()


def test_describe_reports_the_port_it_really_serves() -> None:
    p = ModbusPLC.from_config("plc3", {"port": 0, "unit_id": 5, "registers": MAP[:1]}, None)
    with p:
        d = p.describe()
        assert d["port"] == p.port and d["port"] > 0 and d["unit_id"] == 5 and d["running"]
        assert d["registers"][0] == {"tag": "i16", "table": "holding", "address": 0,
                                     "type": "int16", "word_order": "big",
                                     "behaviour": "static"}
        c = _client(p)
        try:
            assert c.read_holding_registers(0, count=1, device_id=5).registers == words(">h", -7)
        finally:
            c.close()


# ---- faults -------------------------------------------------------------------------------

def test_exception_mode_answers_the_code_for_its_range_only(fresh: ModbusPLC) -> None:
    c = _client(fresh)
    try:
        fresh.exception_mode(2)
        rr = c.read_holding_registers(0, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == 2
        assert c.read_coils(0, count=1, device_id=1).exception_code == 2
        fresh.exception_mode(4, table="holding", first=10, last=11)
        rr = c.read_holding_registers(10, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 4
        assert c.read_holding_registers(8, count=3, device_id=1).exception_code == 4  # overlaps
        assert c.read_holding_registers(0, count=2, device_id=1).registers == [0xFFF9, 0xFFFF]
        assert not c.read_input_registers(10, count=2, device_id=1).isError()
        fresh.exception_mode(None)
        assert c.read_holding_registers(10, count=2, device_id=1).registers == words(">f", 21.5)
        with pytest.raises(ValueError):
            fresh.exception_mode(99)
    finally:
        c.close()
    faults = [(e["fault"], e["value"], e["expect"]) for e in fresh.truth() if e["kind"] == "fault"]
    assert faults == [("exception", 2, False), ("exception", 4, False),
                      ("exception", None, False)]
    f32b = [e for e in fresh.truth() if e.get("tag") == "f32b"]
    assert len(f32b) == 1  # served once, after the exception mode was cleared


def test_silence_accepts_connections_but_answers_nothing(fresh: ModbusPLC) -> None:
    c = _client(fresh, timeout_s=0.3)
    try:
        fresh.silence(True)
        served = len(fresh.truth())
        with pytest.raises(ModbusIOException):
            c.read_holding_registers(0, count=1, device_id=1)
        with socket.create_connection(("127.0.0.1", fresh.port), timeout=1):
            pass  # the PLC still accepts
        assert len(fresh.truth()) == served + 0  # nothing was served
        fresh.silence(False)
        c.close()
        assert c.connect()
        # No late answer from the silent time is waiting on the wire for this request.
        assert c.read_holding_registers(0, count=1, device_id=1).registers == words(">h", -7)
    finally:
        c.close()
    assert [e["fault"] for e in fresh.truth() if e["kind"] == "fault"] == ["silence", "silence"]


def test_drop_closes_connections_and_clients_can_come_back(fresh: ModbusPLC) -> None:
    c = _client(fresh)
    raw = socket.create_connection(("127.0.0.1", fresh.port), timeout=2)
    try:
        assert not c.read_holding_registers(0, count=1, device_id=1).isError()
        wait_until(lambda: fresh.connections() == 2)
        assert fresh.drop_connections() == 2
        assert raw.recv(16) == b""  # the PLC hung up
        with pytest.raises(ConnectionException):
            c.read_holding_registers(0, count=1, device_id=1)
        assert not c.connected
        assert c.connect()
        assert c.read_holding_registers(0, count=1, device_id=1).registers == words(">h", -7)
    finally:
        raw.close()
        c.close()
    assert [e["fault"] for e in fresh.truth() if e["kind"] == "fault"] == ["drop"]


def test_restart_serves_the_same_port_and_values_go_on(fresh: ModbusPLC) -> None:
    port = fresh.port
    c = _client(fresh)
    try:
        before = _u32(c.read_holding_registers(20, count=2, device_id=1).registers)
        fresh.restart()
        assert fresh.port == port
        with pytest.raises(ConnectionException):  # the old connection died with the power
            c.read_holding_registers(20, count=2, device_id=1)
        assert c.connect()
        after = _u32(c.read_holding_registers(20, count=2, device_id=1).registers)
        assert after >= before
        wait_until(lambda: fresh.value("count") > after)
        assert _u32(c.read_holding_registers(20, count=2, device_id=1).registers) > after
    finally:
        c.close()
    assert [e["fault"] for e in fresh.truth() if e["kind"] == "fault"] == ["restart"]


# ---- config, files, life cycle -------------------------------------------------------------

@pytest.mark.parametrize("cfg, key", [
    ({"registers": MAP[:1], "speed": 1}, "devices.bad.speed"),
    ({"registers": MAP[:1], "port": 70000}, "devices.bad.port"),
    ({"registers": MAP[:1], "port": "502"}, "devices.bad.port"),
    ({"registers": MAP[:1], "unit_id": 300}, "devices.bad.unit_id"),
    ({"registers": MAP[:1], "host": ""}, "devices.bad.host"),
    ({"registers": MAP[:1], "seed": 1.5}, "devices.bad.seed"),
    ({}, "devices.bad.registers"),
    ({"registers": []}, "devices.bad.registers"),
    ({"registers": [{"tag": "x", "address": 0, "type": "int17"}]}, "devices.bad.registers[0].type"),
    ({"registers": [{"tag": "x", "table": "coil", "address": 0, "type": "uint16"}]},
     "devices.bad.registers[0].type"),
    ({"registers": [{"tag": "x", "address": 0, "word_order": "middle"}]},
     "devices.bad.registers[0].word_order"),
    ({"registers": [{"tag": "x"}]}, "devices.bad.registers[0].address"),
    ({"registers": [{"tag": "x", "address": 65535, "type": "float32"}]},
     "devices.bad.registers[0].address"),
    ({"registers": [{"tag": "x", "address": 0, "table": "discrete"}]},
     "devices.bad.registers[0].table"),
    ({"registers": [{"tag": "x", "address": 0, "behaviour": "wobble"}]},
     "devices.bad.registers[0].behaviour"),
    ({"registers": [{"tag": "x", "address": 0, "value": 70000}]},
     "devices.bad.registers[0].value"),
    ({"registers": [{"tag": "x", "address": 0, "period_ms": 0}]},
     "devices.bad.registers[0].period_ms"),
    ({"registers": [{"tag": "x", "address": 0, "colour": "red"}]},
     "devices.bad.registers[0].colour"),
    ({"registers": [{"tag": "x", "address": 0}, {"tag": "x", "address": 1}]},
     "devices.bad.registers[1].tag"),
])
def test_bad_config_names_the_key(cfg: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError) as err:
        ModbusPLC.from_config("bad", cfg, None)
    assert str(err.value).startswith(key + ":"), str(err.value)


def test_ground_truth_file_matches_truth(tmp_path: Path) -> None:
    cfg = {"registers": [{"tag": "count", "address": 0, "behaviour": "counter",
                          "period_ms": 10}]}
    with ModbusPLC.from_config("plc4", cfg, tmp_path) as p:
        c = _client(p)
        try:
            wait_until(lambda: (c.read_holding_registers(0, count=1, device_id=1)
                                .registers[0] >= 3))
        finally:
            c.close()
        p.drop_connections()
        truth = p.truth()
    on_disk = list(read_ground_truth(tmp_path / "plc4.jsonl"))
    assert on_disk == truth
    values = [e["value"] for e in truth if e["kind"] == "register"]
    assert values == sorted(set(values)) and values[-1] >= 3
    assert all(e["device"] == "plc4" for e in on_disk)


def test_stop_leaves_no_thread_and_no_listener() -> None:
    before = {t.ident for t in threading.enumerate()}
    p = ModbusPLC("plc5", MAP[:1]).start()
    port = p.port
    c = _client(p)
    p.stop()
    p.stop()  # twice is harmless
    c.close()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket() as s:
        # The PLC closed its end first, so the connection waits in TIME_WAIT; a server
        # (this PLC on restart too) binds with SO_REUSEADDR as usual.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    wait_until(lambda: {t.ident for t in threading.enumerate()} <= before)


def test_a_busy_port_fails_start_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = ModbusPLC("plc6", MAP[:1], port=s.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="cannot serve"):
            p.start()
        assert time.monotonic() - started < 3
        assert p.describe()["running"] is False
