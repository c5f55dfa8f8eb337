"""The scale driver against the MT-SICS emulator on a pty, through pyserial: stable weights
one to one with the ground truth in every mode, no event while unstable, overload and
underload as errors, silence as stale then disconnected, replug, refusals, bad replies,
config errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.event import Event
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.scale import ScaleDriver
from midshift.simulator.devices.pty_port import PtyPort
from midshift.simulator.devices.scale import Scale
from tests.integration.event_sink import Sink, wait_until

WAIT_S = 5.0
GRAMS = {"g": 1.0, "kg": 1000.0}


def expected_g(scale: Scale) -> list[float]:
    return [e["value"] for e in scale.truth() if e["kind"] == "weight" and e["expect"]]


def stable_g(events: list[Event]) -> list[float]:
    return [round(e.data["weight"] * GRAMS[e.data["unit"]], 6) for e in events
            if e.data["stable"]]


def polls_later(driver: ScaleDriver, counter: str, n: int = 3) -> None:
    """Wait until the driver has counted ``n`` more of ``counter``: it has looked again."""
    start = driver.status.counter(counter)
    wait_until(lambda: driver.status.counter(counter) >= start + n)


Rig = tuple[Scale, ScaleDriver, Sink]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """A started scale emulator (fast readings) and a started driver on its link; both
    stopped after, and the driver's thread must be gone."""
    made: list[tuple[Scale, ScaleDriver]] = []

    def make(scale_kw: dict[str, Any] | None = None, **driver_kw: Any) -> Rig:
        link = tmp_path / "scale1"
        kw = {"reading_interval_s": 0.01, "stable_timeout_s": 0.3, "settle_readings": 3,
              "continuous_rate_per_s": 50, **(scale_kw or {})}
        scale = Scale("scale1", link, seed=5, **kw).start()
        table = {"port": str(link), "poll_ms": 20, "timeout_ms": 500, "stale_s": 0.6,
                 **driver_kw}
        cfg = ScaleDriver.validate_config("scale1", table, "devices.scale1")
        sink = Sink()
        driver = ScaleDriver("scale1", cfg, sink, SystemClock()).start()
        made.append((scale, driver))
        assert scale.wait_client(WAIT_S)
        wait_until(lambda: driver.status.state == "ok")
        return scale, driver, sink

    yield make
    for scale, driver in made:
        driver.stop()
        scale.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(("driver-", "scale-"))]


def weigh_items(scale: Scale, driver: ScaleDriver, sink: Sink) -> None:
    """Place, add, take off and put back, waiting for each settled load to be read."""
    n = 0
    for action in (lambda: scale.place(100), lambda: scale.place(23.45),
                   lambda: scale.set_load(5000), None, lambda: scale.place(100)):
        if action is None:
            scale.remove()  # an empty pan is read (stable 0) but is no event
            polls_later(driver, "zero_readings", 1)
            continue
        action()
        n += 1
        sink.wait_count(n)


@pytest.mark.parametrize("driver_kw", [
    {"mode": "poll", "poll_command": "SI"},
    {"mode": "poll", "poll_command": "S"},
    {"mode": "listen"},
], ids=["poll-SI", "poll-S", "listen"])
def test_stable_weights_one_to_one_with_ground_truth(rig: Callable[..., Rig],
                                                     driver_kw: dict[str, Any]) -> None:
    scale, driver, sink = rig(**driver_kw)
    before_ms = int(time.time() * 1000)
    weigh_items(scale, driver, sink)
    polls_later(driver, "repeated_readings")  # the last load, read again: no new event
    events = sink.snapshot()
    assert stable_g(events) == expected_g(scale) == [100.0, 123.45, 5000.0, 100.0]
    assert all(e.kind == "weight" and e.source == "scale1" and e.data["stable"]
               and e.data["unit"] == "g" and before_ms <= e.read_ms <= time.time() * 1000
               for e in events)
    truth = [e for e in scale.truth() if e.get("expect")]
    for event, entry in zip(events, truth, strict=True):
        assert abs(event.read_ms - entry["t_ms"]) < 500  # stamped when the reply came
    assert driver.status.state == "ok" and driver.status.counter("timeouts") == 0


def test_kilograms_keep_their_unit(rig: Callable[..., Rig]) -> None:
    scale, _, sink = rig({"unit": "kg", "decimals": 3})
    scale.place(1234)
    [event] = sink.wait_count(1)
    assert event.data == {"weight": 1.234, "unit": "kg", "stable": True}
    assert expected_g(scale) == [1234.0]


@pytest.mark.parametrize(("poll_command", "counter"), [("SI", "dynamic_readings"),
                                                       ("S", "not_stable")])
def test_unstable_forever_gives_no_event(rig: Callable[..., Rig], poll_command: str,
                                         counter: str) -> None:
    scale, driver, sink = rig(poll_command=poll_command)
    scale.unstable_forever()
    scale.place(42)
    polls_later(driver, counter, 5)
    assert sink.snapshot() == [] and expected_g(scale) == []
    assert driver.status.state == "ok"  # it answers; it just never settles
    scale.clear_faults()
    [event] = sink.wait_count(1)
    assert event.data["weight"] == 42.0 and expected_g(scale) == [42.0]


@pytest.mark.parametrize(("fault", "counter", "text"), [
    ("overload", "overloads", "overload"),
    ("underload", "underloads", "underload"),
])
def test_overload_and_underload_are_errors(rig: Callable[..., Rig], fault: str, counter: str,
                                           text: str) -> None:
    scale, driver, sink = rig()
    scale.place(10)
    sink.wait_count(1)
    getattr(scale, fault)()
    wait_until(lambda: driver.status.state == "error")
    assert text in (driver.status.last_error or "")
    polls_later(driver, counter, 3)
    scale.clear_faults()
    wait_until(lambda: driver.status.state == "ok")
    polls_later(driver, "repeated_readings")  # the same item is still there: not new
    assert stable_g(sink.snapshot()) == expected_g(scale) == [10.0]


def test_load_above_capacity_is_overload(rig: Callable[..., Rig]) -> None:
    scale, driver, sink = rig({"capacity_g": 500})
    scale.set_load(600)
    wait_until(lambda: driver.status.counter("overloads") >= 1)
    assert driver.status.state == "error"
    scale.set_load(400)
    assert stable_g(sink.wait_count(1)) == expected_g(scale) == [400.0]
    assert driver.status.state == "ok"


@pytest.mark.parametrize("mode", ["poll", "listen"])
def test_no_answer_goes_stale_then_disconnected_then_recovers(rig: Callable[..., Rig],
                                                              mode: str) -> None:
    scale, driver, sink = rig(mode=mode)
    scale.place(20)
    sink.wait_count(1)
    scale.no_answer()
    wait_until(lambda: driver.status.state == "stale")
    assert "no answer" in (driver.status.last_error or "")
    wait_until(lambda: driver.status.state == "disconnected")
    assert driver.status.counter("no_answer") >= 1
    if mode == "poll":
        assert driver.status.counter("timeouts") >= 1
    assert sink.snapshot()[1:] == []  # silence is never a repeated weight
    scale.clear_faults()
    wait_until(lambda: driver.status.state == "ok")
    assert driver.status.counter("reconnects") >= 1  # the port was re-opened
    scale.place(5)
    sink.wait_count(2)
    assert stable_g(sink.snapshot()) == expected_g(scale) == [20.0, 25.0]


def test_unplug_and_replug(rig: Callable[..., Rig]) -> None:
    scale, driver, sink = rig()
    scale.place(75)
    sink.wait_count(1)
    scale.disappear()
    wait_until(lambda: driver.status.state == "disconnected")
    assert driver.status.counter("disconnects") == 1
    wait_until(lambda: driver.status.counter("open_failures") >= 1)
    scale.reappear()
    wait_until(lambda: driver.status.state == "ok")
    assert driver.status.counter("reconnects") == 1
    polls_later(driver, "repeated_readings")  # still 75 g on the pan: the same item
    scale.place(25)
    sink.wait_count(2)
    assert stable_g(sink.snapshot()) == expected_g(scale) == [75.0, 100.0]


def test_journal_full_is_counted_and_polling_goes_on(rig: Callable[..., Rig]) -> None:
    scale, driver, sink = rig()
    sink.refuse = 1
    scale.place(10)
    wait_until(lambda: driver.status.counter("refused_journal_full") == 1)
    scale.place(5)
    [event] = sink.wait_count(1)
    assert event.data["weight"] == 15.0 and expected_g(scale) == [10.0, 15.0]
    assert driver.status.counter("refused") == 1 and driver.status.counter("events") == 1


def test_dynamic_readings_when_not_stable_only(rig: Callable[..., Rig]) -> None:
    scale, driver, sink = rig({"settle_readings": 4}, stable_only=False)
    scale.place(300)
    wait_until(lambda: any(e.data["stable"] for e in sink.snapshot()))
    events = sink.snapshot()
    dynamic = [e for e in events if not e.data["stable"]]
    assert 1 <= len(dynamic) <= 4 and all(e.data["weight"] != 300.0 for e in dynamic)
    assert stable_g(events) == expected_g(scale) == [300.0]


class ScriptedScale:
    """A pty peer that answers each command with the next scripted line (bytes as given):
    for replies the emulator does not make (ES/EL to SI, noise, unknown units)."""

    def __init__(self, link: Path, replies: list[bytes]) -> None:
        self.port = PtyPort(link).open()
        self.replies = list(replies)
        self.commands: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-scripted", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            buf += self.port.read(timeout_s=0.05)
            while b"\n" in buf:
                cmd, buf = buf.split(b"\n", 1)
                self.commands.append(cmd)
                if self.replies:
                    self.port.write(self.replies.pop(0))

    def close(self) -> None:
        self._stop.set()
        self.port.interrupt()
        self._thread.join(WAIT_S)
        self.port.close()


def test_error_replies_and_garbage_are_counted_never_weights(tmp_path: Path) -> None:
    fake = ScriptedScale(tmp_path / "s", [
        b"S S      10.00 g\r\n", b"ES\r\n", b"S S      10.00 g\r\n", b"\xff\x00S S 9 g\r\n",
        b"S S  12.0 furlong\r\n", b"EL\r\n", b"ET\r\n", b"S S      12.00 g\r\n",
    ])
    cfg = ScaleDriver.validate_config("s", {"port": str(tmp_path / "s"), "poll_ms": 10,
                                            "timeout_ms": 100, "stale_s": 5},
                                      "devices.s")
    sink = Sink()
    driver = ScaleDriver("s", cfg, sink, SystemClock()).start()
    try:
        assert fake.port.wait_client(WAIT_S)
        events = sink.wait_count(2)
        assert [e.data["weight"] for e in events] == [10.0, 12.0]
        assert driver.status.counter("errors_es") == 1
        assert driver.status.counter("errors_el") == 1
        assert driver.status.counter("errors_et") == 1
        assert driver.status.counter("rejected_malformed") == 2
        assert driver.status.counter("to_error") >= 1 and driver.status.state == "ok"
        assert all(c == b"SI\r" for c in fake.commands)
    finally:
        driver.stop()
        fake.close()


def test_defaults_are_filled() -> None:
    cfg = ScaleDriver.validate_config("s", {"port": "socket://127.0.0.1:4001"}, "devices.s")
    assert cfg == {"port": "socket://127.0.0.1:4001", "baudrate": 9600, "mode": "poll",
                   "poll_command": "SI", "poll_ms": 250, "timeout_ms": 1000,
                   "stable_only": True, "stale_s": 5.0}


@pytest.mark.parametrize(("table", "key", "words"), [
    ({}, "port", ["is required"]),
    ({"port": "ftp://x"}, "port", ["'ftp'"]),
    ({"units": "g"}, "units", ["not a known key", "stable_only"]),
    ({"baudrate": 9601}, "baudrate", ["9601", "1200, 2400, 4800, 9600, 19200"]),
    ({"mode": "stream"}, "mode", ["'stream'", "poll, listen"]),
    ({"poll_command": "SIR"}, "poll_command", ["'SIR'", "SI, S"]),
    ({"poll_ms": 0}, "poll_ms", ["0", "10 to 600000"]),
    ({"poll_ms": 2.5}, "poll_ms", ["2.5", "integer"]),
    ({"timeout_ms": -5}, "timeout_ms", ["-5"]),
    ({"stable_only": 1}, "stable_only", ["1", "true or false"]),
    ({"stale_s": 0}, "stale_s", ["0", "above 0"]),
    ({"stale_s": 0.5, "timeout_ms": 1000}, "stale_s", ["0.5", "timeout_ms"]),
])
def test_validate_config_errors(table: dict[str, Any], key: str, words: list[str]) -> None:
    if key != "port" and "port" not in table:
        table = {"port": "/dev/ttyUSB0", **table}
    with pytest.raises(ConfigError) as info:
        ScaleDriver.validate_config("s1", table, "devices.s1")
    assert info.value.key == f"devices.s1.{key}"
    for word in words:
        assert word in str(info.value), str(info.value)
