"""Every shipped scenario, in its short version, as CI runs it: real agent processes,
mosquitto, the reference ledger as a process, emulated devices, the timeline's faults;
then the ground truth against the ledger. The JSON is the contract integrators script
against, so its fields are checked by name; the full-length runs are `make scenarios`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.scenario import SCENARIO_DIR

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ("events", "lost", "duplicates", "corrupt", "recovery_s_max", "latency_p99_ms",
            "failovers", "alarms", "passed")
SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def run_short(name: str, tmp: Path) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, "-m", "simulator", "run", name, "--short", "--json",
                           "--report", str(tmp)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.stdout.strip(), f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(proc.stdout)


def test_every_scenario_the_issue_names_is_shipped() -> None:
    assert set(SHIPPED) >= {"shift", "partition-2min", "flapping", "power-cuts",
                            "broker-restart", "clock-skew", "bad-input", "fleet"}


@pytest.mark.parametrize("name", SHIPPED)
def test_short_scenario_loses_and_duplicates_nothing(name: str, tmp_path: Path) -> None:
    proc, r = run_short(name, tmp_path)
    for key in CONTRACT:
        assert key in r, f"{key} missing from the JSON"
    failed = [a for a in r["assertions"] if not a["passed"]]
    assert proc.returncode == 0 and r["passed"], (failed, r["notes"], proc.stderr[-3000:])
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["corrupt"] == 0
    assert r["produced"] > 0 and r["committed"] == r["produced"] - r["unobserved"]
    assert r["events"] >= r["committed"]
    assert (tmp_path / "report.html").stat().st_size > 5000
    assert json.loads((tmp_path / "result.json").read_text())["passed"] is True
    # Each lasting fault was played and ended (the timeline really ran).
    assert all(f["end_ms"] is not None for f in r["faults"])
    if name == "shift":
        kinds = {f["kind"] for f in r["faults"]}
        assert kinds == {"link", "power_cut", "clock", "broker", "bad_input"}
        assert r["torn_tails_repaired"] >= 1 and r["rejected_lines"] >= 5
        assert r["failovers"] >= 1
        assert "clock_offset" in {a["alarm"] for a in r["alarms"]}
    if name == "store-day":  # the tills' judge, each promise of the issue by name
        assert r["till_accepted"] > 50 and r["till_accepted_missing"] == 0
        assert r["till_accepted_twice"] == 0 and r["till_altered"] == 0
        assert r["till_refused"] > 0 and r["till_refused_in_ledger"] == 0
        assert r["till_refusals_by_rule"].get("card_data", 0) >= 1  # a typed PAN refused
        assert r["full_pans_typed"] >= 1 and r["full_pans_found"] == 0
        assert r["till_conflicts_injected"] >= 1 and r["till_conflicts_unflagged"] == 0
        assert r["till_unknown_originals_unflagged"] == 0
        assert {f["kind"] for f in r["faults"]} == {"link", "power_cut"}
        cut, = (f for f in r["faults"] if f["kind"] == "power_cut")
        assert cut["mid_post"], "the power went while no till was waiting for an answer"
        assert r["morning_report"]["exit"] == 0
        page = (tmp_path / "morning" / "report.html").read_text()
        assert "store-1" in page and "Offline periods" in page
        figures = json.loads((tmp_path / "morning" / "report.json").read_text())
        assert figures["day"] == r["till_business_day"]
    if name == "fleet":
        assert r["fleet_lost"] == 0 and r["fleet_drained"] and r["fleet_events"] > 0
