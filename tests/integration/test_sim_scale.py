"""The MT-SICS scale emulator seen by a real pyserial client on its pty: each command's
reply byte for byte, settling, streaming, each fault, unplug and replug, no fd leaks."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from midshift.simulator.devices.scale import Scale
from midshift.simulator.ground_truth import read_ground_truth

CLIENT_TIMEOUT_S = 2.0
# "S D" + space + 10-character right-aligned value + space + unit + CR LF
DYNAMIC_G = re.compile(rb"S D [ -]*-?\d+\.\d\d g\r\n")

MakeScale = Callable[..., tuple[Scale, serial.Serial]]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def make_scale(tmp_path: Path) -> Iterator[MakeScale]:
    """Start a scale (fast readings unless told) and a pyserial client on its link."""
    opened: list[tuple[Scale, serial.Serial]] = []

    def make(name: str = "scale1", **kwargs: object) -> tuple[Scale, serial.Serial]:
        kwargs.setdefault("reading_interval_s", 0.01)
        kwargs.setdefault("stable_timeout_s", 0.3)
        scale = Scale(name, tmp_path / name, **kwargs).start()  # type: ignore[arg-type]
        client = serial.Serial(str(tmp_path / name), baudrate=9600, timeout=CLIENT_TIMEOUT_S)
        opened.append((scale, client))
        assert scale.wait_client(CLIENT_TIMEOUT_S)
        return scale, client

    yield make
    for scale, client in opened:
        client.close()
        scale.stop()


def ask(client: serial.Serial, command: bytes) -> bytes:
    client.write(command + b"\r\n")
    return client.read_until(b"\r\n")


def expected_weights(scale: Scale) -> list[float]:
    return [e["value"] for e in scale.truth() if e["kind"] == "weight" and e["expect"]]


@pytest.mark.parametrize(("command", "reply"), [
    (b"S", b"S S       0.00 g\r\n"),
    (b"SI", b"S S       0.00 g\r\n"),
    (b"Z", b"Z A\r\n"),
    (b"@", b'I4 A "0123456789"\r\n'),
    (b"I4", b'I4 A "0123456789"\r\n'),
    (b"XYZ", b"ES\r\n"),
    (b"SIR 100", b"ES\r\n"),  # parameters are not modelled
])
def test_idle_scale_replies(make_scale: MakeScale, command: bytes, reply: bytes) -> None:
    _, client = make_scale()
    assert ask(client, command) == reply


def test_bare_lf_and_empty_lines(make_scale: MakeScale) -> None:
    _, client = make_scale(serial_number="B123456789")
    client.write(b"\r\n\n@\n")
    assert client.read_until(b"\r\n") == b'I4 A "B123456789"\r\n'


def test_placed_item_settles_and_is_expected_once(make_scale: MakeScale) -> None:
    scale, client = make_scale(settle_readings=3)
    scale.place(123.45)
    unstable = [ask(client, b"SI") for _ in range(3)]
    assert all(DYNAMIC_G.fullmatch(line) and len(line) == 18 for line in unstable), unstable
    assert b"S D     123.45 g\r\n" not in unstable  # a swing, never the final value
    for _ in range(3):
        assert ask(client, b"SI") == b"S S     123.45 g\r\n"
    assert ask(client, b"S") == b"S S     123.45 g\r\n"
    scale.remove()
    assert [DYNAMIC_G.fullmatch(ask(client, b"SI")) is not None for _ in range(3)] == [True] * 3
    assert ask(client, b"SI") == b"S S       0.00 g\r\n"
    assert expected_weights(scale) == [123.45]
    entry = [e for e in scale.truth() if e["expect"]][0]
    assert (entry["kind"], entry["unit"], entry["status"]) == ("weight", "g", "S")
    dynamic = [e for e in scale.truth() if e.get("status") == "D"]
    assert len(dynamic) == 6 and not any(e["expect"] for e in dynamic)


def test_s_waits_for_stability(make_scale: MakeScale) -> None:
    scale, client = make_scale(settle_readings=5)
    scale.place(250)
    assert ask(client, b"S") == b"S S     250.00 g\r\n"  # no S D in front of it
    scale.place(1000.5)
    assert ask(client, b"S") == b"S S    1250.50 g\r\n"
    assert expected_weights(scale) == [250.0, 1250.5]


def test_s_gives_up_when_settling_takes_too_long(make_scale: MakeScale) -> None:
    # 50 readings 10 ms apart cannot finish within a 0.1 s timeout.
    scale, client = make_scale(settle_readings=50, stable_timeout_s=0.1)
    scale.place(80)
    t0 = time.monotonic()
    assert ask(client, b"S") == b"S I\r\n"
    assert time.monotonic() - t0 >= 0.09
    assert ask(client, b"Z") == b"Z I\r\n"


def test_unstable_forever(make_scale: MakeScale) -> None:
    scale, client = make_scale(settle_readings=0, stable_timeout_s=0.15)
    scale.place(42)
    scale.unstable_forever()
    assert ask(client, b"S") == b"S I\r\n"
    assert DYNAMIC_G.fullmatch(ask(client, b"SI"))
    assert ask(client, b"Z") == b"Z I\r\n"
    assert expected_weights(scale) == []
    scale.clear_faults()
    assert ask(client, b"S") == b"S S      42.00 g\r\n"
    assert expected_weights(scale) == [42.0]


def test_zero_then_weigh_and_negative_net(make_scale: MakeScale) -> None:
    scale, client = make_scale()
    scale.place(100)
    assert ask(client, b"S") == b"S S     100.00 g\r\n"
    assert ask(client, b"Z") == b"Z A\r\n"
    assert ask(client, b"SI") == b"S S       0.00 g\r\n"
    scale.place(50)
    assert ask(client, b"S") == b"S S      50.00 g\r\n"
    scale.remove()
    assert ask(client, b"S") == b"S S    -100.00 g\r\n"  # the sign sits by the digits
    assert expected_weights(scale) == [100.0, 50.0]


def test_kilogram_display(make_scale: MakeScale) -> None:
    scale, client = make_scale(unit="kg", decimals=3, settle_readings=0)
    scale.set_load(1234)
    assert ask(client, b"S") == b"S S      1.234 kg\r\n"
    [entry] = [e for e in scale.truth() if e["expect"]]
    assert (entry["value"], entry["unit"]) == (1234.0, "g")


@pytest.mark.parametrize(("fault", "s_reply", "z_reply"), [
    ("overload", b"S +\r\n", b"Z +\r\n"),
    ("underload", b"S -\r\n", b"Z -\r\n"),
])
def test_overload_and_underload(make_scale: MakeScale, fault: str, s_reply: bytes,
                                z_reply: bytes) -> None:
    scale, client = make_scale()
    scale.place(10)
    getattr(scale, fault)()
    assert ask(client, b"S") == s_reply
    assert ask(client, b"SI") == s_reply
    assert ask(client, b"Z") == z_reply
    scale.clear_faults()
    assert ask(client, b"S") == b"S S      10.00 g\r\n"
    assert expected_weights(scale) == [10.0]
    assert [e["fault"] for e in scale.truth() if e["kind"] == "fault"] == \
        [fault, "clear"]


def test_load_above_capacity_is_overload(make_scale: MakeScale) -> None:
    scale, client = make_scale(capacity_g=500)
    scale.set_load(500.01)
    assert ask(client, b"S") == b"S +\r\n"
    scale.set_load(499.99)
    assert ask(client, b"S") == b"S S     499.99 g\r\n"


def test_sir_streams_until_reset(make_scale: MakeScale) -> None:
    scale, client = make_scale(continuous_rate_per_s=50, settle_readings=2)
    scale.place(300)
    client.write(b"SIR\r\n")
    lines = [client.read_until(b"\r\n") for _ in range(6)]
    assert [bool(DYNAMIC_G.fullmatch(line)) for line in lines[:2]] == [True, True]
    assert lines[2:] == [b"S S     300.00 g\r\n"] * 4
    client.write(b"@\r\n")
    for _ in range(50):  # lines already on their way, then the reset's reply
        if client.read_until(b"\r\n") == b'I4 A "0123456789"\r\n':
            break
    else:
        raise AssertionError("no reply to @")
    client.timeout = 0.3
    assert client.read(100) == b""  # streaming stopped
    assert expected_weights(scale) == [300.0]  # four stable lines, one expected weight


def test_continuous_config_and_schedule(make_scale: MakeScale) -> None:
    # Streams from start; the schedule puts 500 g on at once and takes it off at 0.3 s.
    scale, client = make_scale(continuous=True, continuous_rate_per_s=50, settle_readings=2,
                               schedule=[{"at_s": 0.0, "load_g": 500},
                                         {"at_s": 0.3, "load_g": 0}])
    seen: list[bytes] = []
    for _ in range(200):  # 4 s at 50 lines/s
        line = client.read_until(b"\r\n")
        assert line, "stream stopped"
        seen.append(line)
        if line == b"S S       0.00 g\r\n" and b"S S     500.00 g\r\n" in seen:
            break
    else:
        raise AssertionError(f"never saw 500 g then 0 g: {seen[-5:]}")
    assert all(line.startswith((b"S S ", b"S D ")) for line in seen)
    assert expected_weights(scale) == [500.0]


def test_no_answer(make_scale: MakeScale) -> None:
    scale, client = make_scale()
    scale.no_answer()
    client.timeout = 0.3
    client.write(b"S\r\n")
    assert client.read(100) == b""
    scale.clear_faults()
    client.timeout = CLIENT_TIMEOUT_S
    assert ask(client, b"S") == b"S S       0.00 g\r\n"  # the ignored S is not answered late


def test_disappear_then_reappear_on_the_same_link(make_scale: MakeScale, tmp_path: Path) -> None:
    scale, client = make_scale()
    link = tmp_path / "scale1"
    scale.place(75)
    assert ask(client, b"S") == b"S S      75.00 g\r\n"
    scale.disappear()
    with pytest.raises(serial.SerialException):
        client.read(1)
    with pytest.raises(serial.SerialException):
        client.write(b"S\r\n")
    client.close()
    assert not link.exists()
    with pytest.raises(serial.SerialException):
        serial.Serial(str(link), timeout=0.2)
    scale.reappear()
    with serial.Serial(str(link), timeout=CLIENT_TIMEOUT_S) as again:
        assert ask(again, b"S") == b"S S      75.00 g\r\n"  # same load, same zero
    assert expected_weights(scale) == [75.0]  # served twice, one item


def test_scale_leaks_no_fds(tmp_path: Path) -> None:
    before = fd_count()
    with Scale("s", tmp_path / "s", continuous=True, continuous_rate_per_s=50) as scale:
        with serial.Serial(str(tmp_path / "s"), timeout=CLIENT_TIMEOUT_S) as client:
            assert scale.wait_client(CLIENT_TIMEOUT_S)
            assert client.read_until(b"\r\n").endswith(b"\r\n")
        scale.disappear()
        scale.reappear()
    assert fd_count() == before


def test_from_config_and_ground_truth_file(tmp_path: Path) -> None:
    cfg = {"kind": "scale", "path": str(tmp_path / "dev" / "scale7"), "seed": 1,
           "settle_readings": 1, "reading_interval_s": 0.01, "serial_number": "SN42",
           "schedule": [{"at_s": 0, "load_g": 12.5}]}
    scale = Scale.from_config("scale7", cfg, tmp_path / "truth")
    with scale, serial.Serial(cfg["path"], timeout=CLIENT_TIMEOUT_S) as client:
        assert scale.wait_client(CLIENT_TIMEOUT_S)
        assert ask(client, b"@") == b'I4 A "SN42"\r\n'
        assert ask(client, b"S") == b"S S      12.50 g\r\n"
        described = scale.describe()
        assert (described["name"], described["kind"], described["path"]) == \
            ("scale7", "scale", cfg["path"])
    entries = list(read_ground_truth(tmp_path / "truth" / "scale7.jsonl"))
    assert [(e["kind"], e["value"], e["unit"]) for e in entries if e["expect"]] == \
        [("weight", 12.5, "g")]


@pytest.mark.parametrize(("cfg", "words"), [
    ({"baudrate": 9601}, ["baudrate", "allowed"]),
    ({"kind": "scanner"}, ["kind", "'scanner'", "'scale'"]),
    ({"unit": "lb"}, ["unit", "'lb'", "g, kg"]),
    ({"decimals": 9}, ["decimals", "9", "0 to 5"]),
    ({"capacity_g": 0}, ["capacity_g", "0", "above 0"]),
    ({"capacity_g": 1e6, "decimals": 5}, ["capacity_g", "9 characters"]),
    ({"settle_readings": -1}, ["settle_readings", "-1"]),
    ({"stable_timeout_s": 0}, ["stable_timeout_s", "0", "seconds"]),
    ({"continuous": 1}, ["continuous", "1", "true or false"]),
    ({"continuous_rate_per_s": 500}, ["continuous_rate_per_s", "500", "at most 100"]),
    ({"serial_number": 'a"b'}, ["serial_number", "double quote"]),
    ({"schedule": [{"at_s": 1}]}, ["schedule[0]", "at_s", "load_g"]),
    ({"schedule": "soon"}, ["schedule", "'soon'"]),
])
def test_from_config_rejects_bad_keys_and_values(tmp_path: Path, cfg: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        Scale.from_config("scale7", {"path": str(tmp_path / "s"), **cfg}, None)
    message = str(info.value)
    assert "devices.scale7" in message
    for word in words:
        assert word in message, message
