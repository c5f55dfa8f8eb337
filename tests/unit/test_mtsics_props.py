"""MT-SICS properties (hypothesis, CPython only): the emulator's reply format round-trips,
and arbitrary or near-miss bytes never raise nor pass for a weight."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from midshift.firmware.core.mtsics import UNITS, MtSicsReader, parse_reply

GRAMS = {"g": 1.0, "kg": 1000.0}


def emulator_line(status, grams, decimals, unit):
    """How midshift/simulator/devices/scale.py formats a reply (10-character right-aligned field)."""
    factor = GRAMS[unit]
    return f"S {status} {grams / factor:>10.{decimals}f} {unit}\r\n".encode()


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from("SD"), grams=st.floats(-99999, 99999, allow_nan=False),
       decimals=st.integers(0, 3), unit=st.sampled_from(["g", "kg"]))
def test_emulator_format_round_trips(status, grams, decimals, unit):
    line = emulator_line(status, grams, decimals, unit)
    [r] = MtSicsReader().feed(line)
    assert r.kind == "weight" and r.status == status and r.unit == unit
    shown = f"{grams / GRAMS[unit]:.{decimals}f}"
    assert r.value_text == shown and r.weight == float(shown)


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=10))
def test_arbitrary_bytes_never_raise_nor_pass_for_a_weight(chunks):
    reader = MtSicsReader()
    stream = b"".join(chunks)
    for data in chunks:
        for r in reader.feed(data) + [parse_reply(data)]:
            assert r.kind in ("weight", "overload", "underload", "not_executable", "error",
                              "other", "malformed")
            if r.kind == "weight":
                assert isinstance(r.weight, float) and math.isfinite(r.weight)
                assert r.unit in UNITS and r.status in ("S", "D")
                assert r.value_text.replace("-", "", 1).replace("+", "", 1).replace(".", "", 1) \
                    .isdigit()
                assert r.value_text.encode() in stream.replace(b" ", b"")
            else:
                assert r.weight is None


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="S D+-.0123456789gk \r\n", max_size=40))
def test_near_miss_text_never_raises(text):
    reader = MtSicsReader()
    for r in reader.feed(text.encode()):
        if r.kind == "weight":
            assert r.weight == float(r.value_text)
