"""Scenario files: every shipped one loads; a mistake names the file, the key and the fix;
--short scales every time; expectations compare as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from midshift.simulator import scenario as sc


@pytest.mark.parametrize("path", sorted(sc.SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_load_and_shorten(path: Path) -> None:
    s = sc.load(str(path))
    short = s.shortened()
    assert short.duration_s == pytest.approx(s.duration_s * s.short_scale)
    for f, g in zip(s.faults, short.faults, strict=True):
        assert g.at_s == pytest.approx(f.at_s * s.short_scale)
        assert g.for_s == pytest.approx(f.for_s * s.short_scale)
    assert s.expect, "a scenario states what must hold"


BASE = """
[scenario]
duration_s = 60
[devices.scanner1]
type = "scanner"
"""


@pytest.mark.parametrize("extra, message", [
    ("[[fault]]\nat_s = 10\nkind = \"meteor\"\n", "fault[0].kind: must be one of link"),
    ("[[fault]]\nat_s = 10\nkind = \"link\"\nmode = \"blackhole\"\nfor_s = 100\n",
     "ends after the scenario's duration_s 60"),
    ("[[fault]]\nat_s = 10\nkind = \"link\"\nmode = \"cut\"\nfor_s = 5\n",
     "fault[0].mode: must be one of blackhole"),
    ("[[fault]]\nat_s = 10\nkind = \"bad_input\"\ndevice = \"scanner1\"\ninput = \"overload\"\n",
     "a scanner can send: garbage, overlong, partial, noise"),
    ("[[fault]]\nat_s = 10\nkind = \"clock\"\njump_s = 5\nskew_s = 3\n",
     "give exactly one of jump_s, skew_s, drift_ppm"),
    ("[expect]\nlots = 0\n", "expect.lots: not a known metric"),
    ("[expect]\nlost = \"about none\"\n", "is not a number or \"OP number\""),
    ("[devices.s2]\ntype = \"scanner\"\nrate = 3\n", "devices.s2.rate: not a known key"),
    ("[gateways]\ncount = 0\n", "gateways.count: 0 is not a number from 1"),
    ("[tills]\nbusy = [10, 90, 3]\n", "tills.busy: [10, 90, 3] is not [from_s, to_s, factor]"),
    ("[tills]\nbusiness_day = \"5.12.2026\"\n", "tills.business_day: '5.12.2026' is not YYYY"),
    ("[tills]\ncount = 2\nwrong_clock_till = \"till-3\"\n",
     "tills.wrong_clock_till: 'till-3' is not one of till-1, till-2"),
    ("[tills]\nrate = 3\n", "tills.rate: not a known key"),
    ("[clock]\nat_s = 30\nreads = \"2026-10-25T03:00\"\n",
     "clock.reads: '2026-10-25T03:00' is not ISO 8601 with a UTC offset"),
    ("[clock]\nat_s = 90\nreads = \"2026-10-25T01:00:00Z\"\n",
     "clock.at_s: 90 is not a number from 0 to 60"),
    ("[clock]\nat = 30\n", "clock.at: not a known key"),
])
def test_a_mistake_names_file_key_and_fix(tmp_path: Path, extra: str, message: str) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(BASE + extra)
    with pytest.raises(sc.ScenarioError) as err:
        sc.load(str(f))
    assert str(err.value).startswith("mine.toml: ") and message in str(err.value)


def test_unknown_scenario_lists_the_shipped_ones() -> None:
    with pytest.raises(sc.ScenarioError, match="shipped scenarios: .*partition-2min.*shift"):
        sc.load("no-such-shift")


@pytest.mark.parametrize("text, actual, holds", [
    ("<= 5", 5.0, True), ("<= 5", 5.01, False), ("> 0", 0, False), (">= 1", 3, True),
    ("== 0", 0, True), ("< 120", None, False),
])
def test_expectations_compare_as_written(tmp_path: Path, text: str, actual, holds) -> None:
    f = tmp_path / "e.toml"
    f.write_text(BASE + f'[expect]\nrecovery_s_max = "{text}"\n')
    (e,) = sc.load(str(f)).expect
    assert e.holds(actual) is holds


def test_tills_shorten_their_busy_hour_but_not_its_factor() -> None:
    s = sc.load("store-day")
    short = s.shortened()
    k = s.short_scale
    assert short.tills["busy"] == pytest.approx([s.tills["busy"][0] * k,
                                                 s.tills["busy"][1] * k, s.tills["busy"][2]])
    assert s.tills["names"] == ["till-1", "till-2", "till-3", "till-4"]


def test_clock_shortens_and_sets_the_business_day() -> None:
    """store-day's clock reads the CEST->CET change at the same share of the run, long or
    short, and "today" is the store's date when the run starts by that clock."""
    s = sc.load("store-day")
    short = s.shortened()
    assert s.clock["reads_ms"] == 1_792_890_000_000 == short.clock["reads_ms"]  # 01:00 UTC
    assert short.clock["at_s"] / short.duration_s == s.clock["at_s"] / s.duration_s
    assert s.tills["business_day"] == "2026-10-25"
