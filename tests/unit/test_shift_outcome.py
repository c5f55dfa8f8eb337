"""The judge of a scenario can fail: given ground truth and ledger rows it counts exactly
what was lost, duplicated, altered, unobserved while powered off, and how long a fault
held events; and it pairs repeated telemetry values with their own occurrence."""

from __future__ import annotations

import json
from pathlib import Path

from midshift.simulator.outcome import evaluate, match
from midshift.simulator.timeline import FaultWindow

DEVICES = {"scanner1": {"type": "scanner"}, "plc1": {"type": "modbus"}}
T0 = 1_800_000_000_000


def _truth(d: Path, device: str, entries: list[tuple[int, object, bool, dict]]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{device}.jsonl", "w") as f:
        for i, (t, v, expect, extra) in enumerate(entries):
            kind = "scan" if device.startswith("scanner") else "register"
            f.write(json.dumps({"t_ms": T0 + t, "device": device, "n": i + 1, "kind": kind,
                                "value": v, "expect": expect, **extra}) + "\n")


def _scan(code: str, at: int, gw: str = "gw-01") -> tuple:
    return (gw, "scanner1", "scan", T0 + at, {"code": code})


def _reg(value: int, at: int) -> tuple:
    return ("gw-01", "plc1", "register", T0 + at, {"tag": "count", "value": value})


def _evaluate(tmp: Path, rows: list[tuple], windows=(), samples=()) -> dict:
    return evaluate({"gw-01": tmp}, DEVICES, rows, list(windows), list(samples),
                    T0, T0 + 100_000, {"events": len(rows)})


def test_lost_duplicated_and_corrupt_are_counted(tmp_path: Path) -> None:
    _truth(tmp_path, "scanner1", [(1000, "A", True, {}), (2000, "B", True, {}),
                                  (3000, "C", True, {}), (4000, "X", False, {})])
    _truth(tmp_path, "plc1", [])
    rows = [_scan("A", 1005), _scan("A", 1500), _scan("C", 3010), _scan("ZZZ", 3500),
            ("gw-01", None, None, T0 + 3600, None)]
    r = _evaluate(tmp_path, rows)
    assert (r["produced"], r["committed"], r["lost"], r["duplicates"], r["corrupt"]) == (
        3, 2, 1, 1, 2)


def test_card_numbers_in_the_truth_match_the_masked_ledger(tmp_path: Path) -> None:
    _truth(tmp_path, "scanner1", [(1000, "4111111111111111", True, {})])
    _truth(tmp_path, "plc1", [])
    r = _evaluate(tmp_path, [_scan("411111******1111", 1004)])
    assert (r["lost"], r["corrupt"], r["committed"]) == (0, 0, 1)


def test_values_produced_while_powered_off_are_unobserved_not_lost(tmp_path: Path) -> None:
    _truth(tmp_path, "scanner1", [])
    _truth(tmp_path, "plc1", [(500, 1, True, {"tag": "count"}), (10_000, 2, True, {"tag": "count"}),
                              (12_000, 3, True, {"tag": "count"}), (30_000, 4, True, {"tag": "count"})])
    cut = FaultWindow("power_cut", "power cut", ["gw-01"], T0 + 9_000, T0 + 14_000)
    ok = [(T0 + t, "gw-01", {"devices": [{"name": "plc1", "state": "ok"}]})
          for t in (400, 15_000)]
    r = _evaluate(tmp_path, [_reg(1, 520), _reg(3, 15_100)], [cut], ok)
    # 2 (during the cut) was never read: unobserved; 3 was read after power-on; 4 is lost.
    assert (r["unobserved"], r["lost"], r["committed"]) == (1, 1, 2)
    (rec,) = r["recoveries"]
    assert rec["recovery_s"] == 1.1  # 3 was held by the cut and committed 1.1 s after it


def test_a_telemetry_value_read_again_is_reobserved_not_duplicate(tmp_path: Path) -> None:
    _truth(tmp_path, "scanner1", [])
    _truth(tmp_path, "plc1", [(1000, 7, True, {"tag": "count"})])
    r = _evaluate(tmp_path, [_reg(7, 1010), _reg(7, 9000)])
    assert (r["duplicates"], r["reobserved"], r["lost"]) == (0, 1, 0)


def test_repeated_values_pair_with_their_own_occurrence() -> None:
    # "RUNNING" at 0 was never delivered; at 10 s it was, 5 ms later.
    pairs, unpaired, extra = match([0, 10_000], [10_005])
    assert pairs == [(10_000, 10_005)] and unpaired == [0] and extra == 0
    pairs, unpaired, extra = match([200], [50, 205])  # a commit before any production
    assert pairs == [(200, 205)] and extra == 1
