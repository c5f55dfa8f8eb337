"""bench/devices_bench.py's RTU figure, briefly: two drivers on one emulated line really
poll, nothing goes wrong on the line, and the figure sits under what the wire allows."""

from __future__ import annotations

from pathlib import Path

from bench.devices_bench import measure_rtu, wire_limit_per_s


def test_rtu_polls_are_measured_on_one_line(tmp_path: Path) -> None:
    r = measure_rtu(tmp_path, 1.5)
    assert r["rtu_polls_offered_per_s"] == 200.0
    assert 20 < r["rtu_polls_per_s"] <= r["rtu_wire_limit_per_s"] * 1.05
    assert r["rtu_polls_per_s_bare"] > 0 and r["rtu_events"] > 0
    assert r["rtu_errors"] == {"m1": {}, "m2": {}}


def test_wire_limit_at_115200_8n2() -> None:
    # 21 characters of 11 bits and two 1.75 ms silences: about 5.5 ms a transaction.
    assert 175 < wire_limit_per_s() < 190
