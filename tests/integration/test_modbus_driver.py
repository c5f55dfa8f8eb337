"""The agent's Modbus driver against the emulated PLC (pymodbus server) over loopback.

The PLC's ground truth lists every value it served; with a poll faster than the changes
each entry must arrive as exactly one event, in order, and nothing else may arrive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.modbus import (
    ModbusDriver,
    answer_size_problem,
    decode_words,
    plan_blocks,
)
from midshift.simulator.devices.modbus import ModbusPLC
from tests.integration.event_sink import Sink, wait_until

REGS = [
    {"tag": "count", "address": 0, "type": "uint32", "behaviour": "counter", "period_ms": 60},
    {"tag": "level", "address": 2, "type": "int16", "value": -7},
    {"tag": "flow", "address": 3, "type": "float32", "word_order": "little", "value": 1.25},
    {"tag": "batch", "address": 10, "type": "uint16", "value": 5},
    {"tag": "temp", "table": "input", "address": 0, "type": "float32",
     "behaviour": "random_walk", "value": 20.0, "period_ms": 90},
    {"tag": "run", "table": "coil", "address": 0, "value": True},
    {"tag": "door", "table": "coil", "address": 1, "value": False},
]
POLLED = ("count", "level", "flow", "batch", "temp", "run", "door")
DRIVER_KEYS = ("tag", "table", "address", "type", "word_order")


@pytest.fixture
def plc() -> Iterator[ModbusPLC]:
    with ModbusPLC("plc1", REGS) as p:
        yield p


def _driver(plc: ModbusPLC, sink: Sink, regs: list[dict[str, Any]] | None = None,
            **over: Any) -> ModbusDriver:
    table = {"host": "127.0.0.1", "port": plc.port, "poll_ms": 20, "timeout_s": 0.25,
             "stale_s": 0.6,
             "registers": regs if regs is not None else
             [{k: v for k, v in r.items() if k in DRIVER_KEYS} for r in REGS]} | over
    cfg = ModbusDriver.validate_config("plc1", table, "devices.plc1")
    return ModbusDriver("plc1", cfg, sink, SystemClock())


@pytest.fixture
def run_driver() -> Iterator[Any]:
    """Start drivers; stop them all afterwards and check their threads are gone."""
    started: list[ModbusDriver] = []

    def start(plc: ModbusPLC, sink: Sink, **kw: Any) -> ModbusDriver:
        drv = _driver(plc, sink, **kw).start()
        started.append(drv)
        return drv

    yield start
    for drv in started:
        drv.stop()
    assert not any(t.name == "driver-plc1" for t in threading.enumerate())


def _polls(plc: ModbusPLC, n: int) -> None:
    """Wait until the PLC has answered ``n`` more requests (whole polls pass by)."""
    target = plc.requests + n
    wait_until(lambda: plc.requests >= target)


def _served(plc: ModbusPLC, tag: str) -> list[Any]:
    return [e["value"] for e in plc.truth() if e["kind"] == "register" and e["tag"] == tag]


def test_every_served_change_is_one_event_in_order(plc: ModbusPLC, run_driver: Any) -> None:
    sink = Sink()
    started_ms = time.time_ns() // 1_000_000
    drv = run_driver(plc, sink)
    wait_until(lambda: len(sink.values("count")) >= 10)
    for v in (42, -42, 42):
        plc.set_value("level", v)
        wait_until(lambda v=v: sink.values("level")[-1:] == [v])
    plc.set_value("door", True)
    plc.set_value("flow", -0.1)
    wait_until(lambda: sink.values("door")[-1:] == [True] and sink.values("flow")[-1:] == [-0.1])
    drv.stop()
    for tag in POLLED:
        assert sink.values(tag) == _served(plc, tag), tag
    assert sink.values("level") == [-7, 42, -42, 42]
    assert sink.values("batch") == [5] and sink.values("run") == [True]
    assert sink.values("flow") == [1.25, -0.1]  # float32 -0.1 as its shortest text
    assert len(sink.values("temp")) >= 2
    assert drv.status.state == "ok" and drv.status.counter("events") == len(sink.events)
    for ev in sink.events:
        assert ev.source == "plc1" and ev.kind == "register"
        assert set(ev.data) == {"tag", "value", "address", "table"}
    by_tag = {tag: [e for e in sink.events if e.data["tag"] == tag] for tag in POLLED}
    assert by_tag["temp"][0].data["table"] == "input" and by_tag["run"][0].data["address"] == 0
    for evs in by_tag.values():
        stamps = [e.read_ms for e in evs]
        assert stamps == sorted(stamps) and stamps[0] >= started_ms
    # The event was read when the PLC served it, not long after.
    truth_ms = [e["t_ms"] for e in plc.truth() if e.get("tag") == "count"]
    assert all(0 <= e.read_ms - t <= 500 for e, t in zip(by_tag["count"], truth_ms, strict=True))


def test_adjacent_registers_go_in_one_request_each_poll(plc: ModbusPLC, run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(plc, sink)
    wait_until(lambda: len(sink.values("count")) >= 2)
    plc.request_log.clear()
    _polls(plc, 20)
    drv.stop()
    log = list(plc.request_log)
    # holding 0..4 (uint32, int16, float32) in one request, 10 alone, input 0..1, coils 0..1
    assert set(log) == {("holding", 0, 5), ("holding", 10, 1), ("input", 0, 2), ("coil", 0, 2)}
    counts = {req: log.count(req) for req in set(log)}
    assert max(counts.values()) - min(counts.values()) <= 1  # each block once per poll


def test_a_block_is_at_most_125_registers_on_the_wire(run_driver: Any) -> None:
    regs = [{"tag": f"r{i}", "address": i, "value": i} for i in range(130)]
    with ModbusPLC("wide", regs) as wide:
        sink = Sink()
        run_driver(wide, sink, regs=[{"tag": f"r{i}", "address": i} for i in range(130)])
        sink.wait_count(130)
        assert set(wide.request_log) == {("holding", 0, 125), ("holding", 125, 5)}
        assert [e.data["value"] for e in sink.snapshot()] == list(range(130))


@pytest.mark.parametrize("regs, blocks", [
    ([("a", "holding", 0, "uint32"), ("b", "holding", 2, "uint16"),
      ("c", "holding", 3, "float32"), ("d", "holding", 9, "uint16")],
     [("holding", 0, 5), ("holding", 9, 1)]),
    ([("a", "holding", 0, "uint32"), ("lo", "holding", 1, "uint16")],  # overlapping views
     [("holding", 0, 2)]),
    ([("a", "holding", 124, "uint16"), ("b", "holding", 0, "uint16")], [("holding", 0, 1),
                                                                       ("holding", 124, 1)]),
    ([(f"r{i}", "holding", i, "uint32") for i in range(0, 130, 2)],
     [("holding", 0, 124), ("holding", 124, 6)]),  # a float never split across requests
    ([("e", "input", 0, "int16"), ("f", "coil", 0, "bool"), ("g", "coil", 1, "bool")],
     [("input", 0, 1), ("coil", 0, 2)]),
])
def test_block_plan(regs: list[tuple[str, str, int, str]],
                    blocks: list[tuple[str, int, int]]) -> None:
    cfg = ModbusDriver.validate_config("p", {"host": "h", "registers": [
        {"tag": t, "table": tb, "address": a, "type": ty} for t, tb, a, ty in regs]}, "devices.p")
    assert [(b.table, b.address, b.count) for b in plan_blocks(cfg["registers"])] == blocks


@pytest.mark.parametrize("ws, dtype, order, value", [
    ([0xFFF9], "int16", "big", -7),
    ([0xFFFF], "uint16", "big", 65535),
    ([0xFFFE, 0x1DC0], "int32", "big", -123456),
    ([0x1DC0, 0xFFFE], "int32", "little", -123456),
    ([0x1234, 0x5678], "uint32", "big", 0x12345678),
    ([0x41AC, 0x0000], "float32", "big", 21.5),
    ([0x0000, 0x41AC], "float32", "little", 21.5),
    ([0xBDCC, 0xCCCD], "float32", "big", -0.1),
    ([1], "bool", "big", True),
])
def test_decode_words(ws: list[int], dtype: str, order: str, value: Any) -> None:
    assert decode_words(ws, dtype, order) == value


def test_deadband_and_scale(plc: ModbusPLC, run_driver: Any) -> None:
    regs = [{"tag": "flow", "address": 3, "type": "float32", "word_order": "little",
             "deadband": 0.5},
            {"tag": "batch", "address": 10, "scale": 0.1}]
    sink = Sink()
    run_driver(plc, sink, regs=regs)
    wait_until(lambda: sink.values("flow") == [1.25] and sink.values("batch") == [0.5])
    for flow, expected in ((1.5, [1.25]), (1.75, [1.25]), (1.8, [1.25, 1.8]),
                           (1.4, [1.25, 1.8]), (1.2, [1.25, 1.8, 1.2])):
        plc.set_value("flow", flow)
        _polls(plc, 6)  # three polls: the value was read at least twice
        assert sink.values("flow") == expected, flow
    plc.set_value("batch", 215)
    wait_until(lambda: sink.values("batch") == [0.5, 21.5])


def test_an_exception_is_a_device_error_not_an_event(plc: ModbusPLC, run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(plc, sink)
    wait_until(lambda: drv.status.state == "ok" and sink.values("batch") == [5])
    plc.exception_mode(2, table="holding", first=10, last=10)  # only the block at 10
    wait_until(lambda: drv.status.state == "error")
    assert drv.status.last_error is not None
    assert "Modbus exception 2 (illegal data address) reading holding 10..10" in \
        drv.status.last_error
    plc.set_value("batch", 6)  # not served while the exception lasts
    n = len(sink.values("count"))
    wait_until(lambda: len(sink.values("count")) >= n + 3)  # the other blocks go on
    assert drv.status.state == "error"  # and do not flip the state back to ok
    assert drv.status.counter("modbus_exceptions") >= 3
    assert drv.status.counter("modbus_exception_2") == drv.status.counter("modbus_exceptions")
    assert sink.values("batch") == [5]
    plc.exception_mode(None)
    wait_until(lambda: sink.values("batch") == [5, 6] and drv.status.state == "ok")
    assert sink.values("batch") == _served(plc, "batch")


@pytest.mark.parametrize("table, count, got, ok", [
    ("holding", 4, 4, True), ("holding", 4, 5, False), ("holding", 4, 3, False),
    ("coil", 2, 8, True), ("coil", 2, 2, True), ("coil", 2, 16, False), ("coil", 9, 16, True),
    ("coil", 9, 8, False), ("input", 125, 126, False),
])
def test_answer_size(table: str, count: int, got: int, ok: bool) -> None:
    """Coils come in whole bytes (8 bits each); registers exactly as many as asked."""
    block = plan_blocks([{"tag": "t", "table": table, "address": 0,
                          "type": "bool" if table == "coil" else "uint16"}])[0]
    block.count = count
    assert (answer_size_problem(block, got) is None) == ok


@pytest.mark.parametrize("extra", [3, -1])
def test_an_answer_with_another_register_count_is_refused_and_counted(
        plc: ModbusPLC, run_driver: Any, monkeypatch: pytest.MonkeyPatch, extra: int) -> None:
    """A PLC (or a gateway in front of it) answering more or fewer registers than asked:
    which value is which is unknown, so nothing of that block is emitted."""
    sink = Sink()
    drv = run_driver(plc, sink)
    wait_until(lambda: drv.status.state == "ok" and sink.values("batch") == [5])
    serve = plc._serve

    def wrong_count(table: str, address: int, count: int) -> Any:
        words = serve(table, address, count)
        if table == "h" and address == 10:  # only the block at 10 (pymodbus's "h")
            return (words + [0] * extra) if extra > 0 else words[:extra]
        return words

    monkeypatch.setattr(plc, "_serve", wrong_count)
    wait_until(lambda: drv.status.counter("wrong_count_answers") >= 3)
    assert drv.status.state == "error"
    assert drv.status.last_error is not None
    got = 1 + extra
    assert f"answer of {got} registers to a request for 1 at holding 10..10" in \
        drv.status.last_error
    plc.set_value("batch", 6)  # answered, but with the wrong count: not taken
    n = len(sink.values("count"))
    wait_until(lambda: len(sink.values("count")) >= n + 3)  # the other blocks go on
    assert sink.values("batch") == [5]
    assert drv.status.counter("poll_failures") == 0
    monkeypatch.setattr(plc, "_serve", serve)
    wait_until(lambda: sink.values("batch") == [5, 6] and drv.status.state == "ok")


def test_a_long_silence_makes_it_stale_and_it_resumes_by_itself(plc: ModbusPLC,
                                                                run_driver: Any) -> None:
    """A peer's poller died on a timeout during a long outage; this one must resume when
    the PLC answers again, without a restart, and repeat nothing meanwhile."""
    sink = Sink()
    drv = run_driver(plc, sink)
    wait_until(lambda: drv.status.state == "ok" and len(sink.values("count")) >= 2)
    thread = drv._thread
    plc.silence(True)
    n = len(sink.events)
    wait_until(lambda: drv.status.state == "stale")
    assert "no answer" in (drv.status.last_error or "")
    wait_until(lambda: drv.status.counter("timeouts") >= 6)  # a long outage: many timeouts
    plc.exception_mode(4)  # and an exception storm in the middle of it
    plc.silence(False)
    wait_until(lambda: drv.status.state == "error")
    plc.exception_mode(None)
    assert len(sink.events) == n  # nothing re-sent while nothing was read
    before = len(sink.values("count"))
    wait_until(lambda: len(sink.values("count")) >= before + 3 and drv.status.state == "ok")
    assert drv._thread is thread and thread is not None and thread.is_alive()
    assert drv.status.counter("crashes") == 0 and drv.status.counter("poll_failures") == 0
    drv.stop()
    for tag in POLLED:
        assert sink.values(tag) == _served(plc, tag), tag


def test_a_stopped_plc_is_disconnected_with_backoff_then_comes_back(plc: ModbusPLC,
                                                                    run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(plc, sink)
    wait_until(lambda: len(sink.values("count")) >= 2)
    plc.stop()
    wait_until(lambda: drv.status.state == "disconnected")
    failures = drv.status.counter("connect_failures")
    time.sleep(1.3)  # the outage itself: attempts at about +0.2, +0.6 s (backoff doubles)
    tries = drv.status.counter("connect_failures") - failures
    assert 1 <= tries <= 4, tries  # without backoff a 20 ms poller would try ~60 times
    assert drv.status.state == "disconnected"
    plc.start()
    before = len(sink.values("count"))
    wait_until(lambda: len(sink.values("count")) >= before + 3, 8)
    assert drv.status.state == "ok" and drv.status.counter("reconnects") >= 1
    drv.stop()
    assert sink.values("count") == _served(plc, "count")
    assert sink.values("level") == [-7]  # the same value after the restart is no change


def test_dropped_connections_and_a_restart_are_reconnected(plc: ModbusPLC,
                                                           run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(plc, sink)
    wait_until(lambda: len(sink.values("count")) >= 2)
    assert plc.drop_connections() == 1
    wait_until(lambda: drv.status.counter("reconnects") >= 1)
    plc.restart()
    wait_until(lambda: drv.status.counter("reconnects") >= 2)
    before = len(sink.values("count"))
    wait_until(lambda: len(sink.values("count")) >= before + 2)
    # The drop is always seen as a loss. The restart is seen as a loss, or, when the
    # request went out on the old socket before the close reached the client (pymodbus
    # then says "no response"), as a timeout: either way the connection was renewed.
    assert drv.status.counter("disconnects") >= 1
    assert drv.status.counter("disconnects") + drv.status.counter("timeouts") >= 2
    drv.stop()
    assert sink.values("count") == _served(plc, "count")


def test_a_refused_event_is_counted_and_offered_again_on_the_next_read(
        plc: ModbusPLC, run_driver: Any) -> None:
    sink = Sink()
    sink.refuse = 3
    drv = run_driver(plc, sink, regs=[{"tag": "level", "address": 2, "type": "int16"}])
    wait_until(lambda: sink.values("level") == [-7])
    assert drv.status.counter("refused") == 3
    assert drv.status.counter("refused_journal_full") == 3
    assert "journal full" in (drv.status.last_error or "")
    plc.set_value("level", 8)
    wait_until(lambda: sink.values("level") == [-7, 8])
    assert drv.status.counter("events") == 2 and drv.status.state == "ok"


def test_another_unit_id_is_never_answered_so_it_goes_stale(plc: ModbusPLC,
                                                            run_driver: Any) -> None:
    sink = Sink()
    drv = run_driver(plc, sink, unit_id=9)
    wait_until(lambda: drv.status.counter("timeouts") >= 2)
    wait_until(lambda: drv.status.state == "stale")
    assert sink.snapshot() == []


def test_stop_is_prompt_even_while_waiting_for_an_answer(plc: ModbusPLC) -> None:
    sink = Sink()
    drv = _driver(plc, sink, timeout_s=5.0).start()
    wait_until(lambda: len(sink.values("count")) >= 1)
    plc.silence(True)
    requests = plc.ignored
    wait_until(lambda: plc.ignored > requests)  # a request is hanging now
    started = time.monotonic()
    drv.stop()
    assert time.monotonic() - started < 1.0
    wait_until(lambda: plc.connections() == 0)


# ---- config --------------------------------------------------------------------------------

def test_config_defaults_are_filled() -> None:
    cfg = ModbusDriver.validate_config("p", {"host": "10.0.0.5", "registers": [
        {"tag": "a", "address": 0}, {"tag": "b", "table": "coil", "address": 3}]}, "devices.p")
    assert cfg == {"host": "10.0.0.5", "port": 502, "unit_id": 1, "poll_ms": 500,
                   "timeout_s": 1.0, "stale_s": 5.0, "registers": [
                       {"tag": "a", "table": "holding", "type": "uint16", "address": 0,
                        "word_order": "big", "scale": 1.0, "deadband": 0.0},
                       {"tag": "b", "table": "coil", "type": "bool", "address": 3,
                        "word_order": "big", "scale": 1.0, "deadband": 0.0}]}


@pytest.mark.parametrize("change, key", [
    ({"registers": [{"tag": "x", "address": 0, "type": "int17"}]}, "devices.plc1.registers[0].type"),
    ({"registers": [{"tag": "x", "address": 0, "word_order": "middle"}]},
     "devices.plc1.registers[0].word_order"),
    ({"registers": [{"tag": "x"}]}, "devices.plc1.registers[0].address"),
    ({"registers": [{"tag": "x", "address": -1}]}, "devices.plc1.registers[0].address"),
    ({"registers": [{"tag": "x", "address": 65535, "type": "uint32"}]},
     "devices.plc1.registers[0].address"),
    ({"registers": [{"tag": "x", "address": "4"}]}, "devices.plc1.registers[0].address"),
    ({"registers": [{"address": 0}]}, "devices.plc1.registers[0].tag"),
    ({"registers": [{"tag": "x", "address": 0, "table": "discrete"}]},
     "devices.plc1.registers[0].table"),
    ({"registers": [{"tag": "x", "table": "coil", "address": 0, "type": "uint16"}]},
     "devices.plc1.registers[0].type"),
    ({"registers": [{"tag": "x", "address": 0, "type": "bool"}]},
     "devices.plc1.registers[0].type"),
    ({"registers": [{"tag": "x", "address": 0, "scale": 0}]}, "devices.plc1.registers[0].scale"),
    ({"registers": [{"tag": "x", "address": 0, "deadband": -1}]},
     "devices.plc1.registers[0].deadband"),
    ({"registers": [{"tag": "x", "address": 0, "colour": 1}]}, "devices.plc1.registers[0].colour"),
    ({"registers": [{"tag": "x", "address": 0}, {"tag": "x", "address": 1}]},
     "devices.plc1.registers[1].tag"),
    ({"registers": ["x"]}, "devices.plc1.registers[0]"),
    ({"registers": []}, "devices.plc1.registers"),
    ({"registers": {"tag": "x"}}, "devices.plc1.registers"),
    ({"host": ""}, "devices.plc1.host"),
    ({"port": 0}, "devices.plc1.port"),
    ({"unit_id": 248}, "devices.plc1.unit_id"),
    ({"poll_ms": 1}, "devices.plc1.poll_ms"),
    ({"poll_ms": 0.5}, "devices.plc1.poll_ms"),
    ({"timeout_s": 0}, "devices.plc1.timeout_s"),
    ({"stale_s": -1}, "devices.plc1.stale_s"),
    ({"speed": 3}, "devices.plc1.speed"),
])
def test_bad_config_names_the_key(change: dict[str, Any], key: str) -> None:
    table = {"host": "127.0.0.1", "registers": [{"tag": "a", "address": 0}]} | change
    with pytest.raises(ConfigError) as err:
        ModbusDriver.validate_config("plc1", table, "devices.plc1")
    assert err.value.key == key, str(err.value)


def test_missing_host_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        ModbusDriver.validate_config("plc1", {"registers": [{"tag": "a", "address": 0}]},
                                     "devices.plc1")
    assert err.value.key == "devices.plc1.host"
