"""Every shipped scenario, in its short version, as CI runs it: real agent processes,
mosquitto, the reference ledger as a process, emulated devices, the timeline's faults;
then the ground truth against the ledger. The JSON is the contract integrators script
against, so its fields are checked by name; the full-length runs are `make scenarios`."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from midshift.simulator.scenario import SCENARIO_DIR
from tests.short_runs import ShortRun

CONTRACT = ("events", "lost", "duplicates", "corrupt", "recovery_s_max", "latency_p99_ms",
            "failovers", "alarms", "passed")
SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def test_every_scenario_the_issue_names_is_shipped() -> None:
    assert set(SHIPPED) >= {"shift", "partition-2min", "flapping", "power-cuts",
                            "broker-restart", "clock-skew", "bad-input", "fleet"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.scenario(n))
                                  for n in SHIPPED])
def test_short_scenario_loses_and_duplicates_nothing(
        name: str, short_run: Callable[[str], ShortRun]) -> None:
    proc, r, report = short_run(name)  # bad-input's run is also read by the Chromium test
    for key in CONTRACT:
        assert key in r, f"{key} missing from the JSON"
    failed = [a for a in r["assertions"] if not a["passed"]]
    assert proc.returncode == 0 and r["passed"], (failed, r["notes"], r.get("till_twice_detail"),
                                                  proc.stderr[-3000:])
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["corrupt"] == 0
    assert r["produced"] > 0 and r["committed"] == r["produced"] - r["unobserved"]
    assert r["events"] >= r["committed"]
    assert (report / "report.html").stat().st_size > 5000
    assert json.loads((report / "result.json").read_text())["passed"] is True
    # Each lasting fault was played and ended (the timeline really ran).
    assert all(f["end_ms"] is not None for f in r["faults"])
    if name == "shift":
        kinds = {f["kind"] for f in r["faults"]}
        assert kinds == {"link", "power_cut", "clock", "broker", "bad_input"}
        assert r["torn_tails_repaired"] >= 1 and r["rejected_lines"] >= 5
        assert r["failovers"] >= 1
        assert "clock_offset" in {a["alarm"] for a in r["alarms"]}
    if name == "both-ways":  # issue 20's judge, each promise by name
        assert r["erp_transactions"] >= r["till_accepted"] > 50  # (+ any the till never heard)
        assert r["erp_missing"] == r["erp_extra"] == r["erp_altered"] == 0
        by_status = r["erp_requests_by_status"]
        assert by_status.get("429", 0) >= 1 and by_status.get("503", 0) >= 1  # paced, survived
        assert r["card_numbers_left_ledger"] == r["card_numbers_in_feed"] == 0
        assert r["full_pans_typed"] >= 1  # there was one to leak
        assert r["feed_messages"] >= r["erp_transactions"]
        assert r["price_versions_published"] == 3 and r["stale_prices_served_online"] == 0
        assert r["prices_served_offline_old"] >= 1  # sold at cached prices while offline
        assert {"1", "3"} <= set(r["price_versions_served"])
        assert r["webshop_orders"] > 0 and r["ghost_units"] >= 0
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
        page = (report / "morning" / "report.html").read_text()
        assert "store-1" in page and "Offline periods" in page
        figures = json.loads((report / "morning" / "report.json").read_text())
        assert figures["day"] == r["till_business_day"]
        store_day_across_the_clock_change(r, figures, page)
    if name == "fleet":
        assert r["fleet_lost"] == 0 and r["fleet_drained"] and r["fleet_events"] > 0
    if name == "e-mobility-line":  # each protocol of the line journaled through the outage
        rows = {row["device"]: row for row in r["devices"]}
        devices = ("cell1", "conveyor1", "meter1", "battery1")
        assert set(devices) <= set(rows)
        for dev in devices:  # unobserved: served before the agent's first read of it
            row = rows[dev]
            assert row["produced"] > 0 and row["lost"] == 0 and row["duplicates"] == 0, row
            assert row["committed"] == row["produced"] - row["unobserved"], row
        assert {f["kind"] for f in r["faults"]} >= {"link"}


def store_day_across_the_clock_change(r: dict, figures: dict, page: str) -> None:
    """store-day's clocks go back (03:00 CEST -> 02:00 CET) mid-run: sales under both
    offsets on one business day, each once in a 25-hour report with the hour twice."""
    assert r["till_business_day"] == "2026-10-25"
    by_offset = r["till_accepted_by_utc_offset"]
    assert set(by_offset) == {"+02:00", "+01:00"} and min(by_offset.values()) >= 10, by_offset
    assert r["till_rows_by_business_day"] == {"2026-10-25": r["till_ledger_rows"]}
    assert "clock_offset" not in {a["alarm"] for a in r["alarms"]}  # ledger and gateway agree
    s, = figures["stores"]
    assert s["day_hours"] == 25 and s["hourly"]["labels"][2:4] == ["02:00 CEST", "02:00 CET"]
    # Every transaction the ledger holds (each accepted one once, the judge says) counted
    # once, in the hour it was taken: both 02:00 hours, nothing outside the day.
    t = s["totals"]
    assert t["sales"]["count"] + t["refunds"]["count"] + t["voids"]["count"] \
        == r["till_ledger_rows"] == r["till_accepted"] + r["till_unknown_in_ledger"]
    sales = [sum(v[i] for v in s["hourly"]["sales_by_till"].values()) for i in range(25)]
    assert sales[2] > 0 and sales[3] > 0 and sum(sales) == t["sales"]["amount"]
    assert s["hourly"]["sales_outside_day"] == 0
    # The outage spans the change: it starts under CEST, ends under CET, lasts seconds
    # (a wall-clock subtraction would say minus an hour), and the ledger's clock agrees.
    p, = s["offline_periods"]
    assert p["start_local"].endswith("+02:00") and p["end_local"].endswith("+01:00")
    assert 0 < p["minutes"] < 1 and p["reached_ledger_local"].endswith("+01:00")
    assert "25 hours (the clocks changed)" in page
    assert " CEST</td><td class=''>02:00 CET</td>" in page  # offline from ... until ...
