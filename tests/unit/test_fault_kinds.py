"""Fault kinds as one table (midshift/simulator/faults.py): the loader knows a kind only through
its class, link modes are the fault proxy's, and a mistake names file, key and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from midshift.simulator import faults
from midshift.simulator import scenario as sc
from midshift.simulator.network import PARAMS

BASE = """
[scenario]
duration_s = 60
[devices.scanner1]
type = "scanner"
"""


def _load(tmp_path: Path, extra: str) -> sc.Scenario:
    f = tmp_path / "mine.toml"
    f.write_text(BASE + extra)
    return sc.load(str(f))


@pytest.mark.parametrize("mode", [m for m in PARAMS if m != "pass"])
def test_every_proxy_mode_is_a_link_fault(tmp_path: Path, mode: str) -> None:
    params = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in PARAMS[mode].items())
    s = _load(tmp_path, f'[[fault]]\nat_s = 1\nkind = "link"\nmode = "{mode}"\nfor_s = 5\n'
              + params)
    assert s.faults[0].params["mode"] == mode
    assert faults.KINDS["link"].label(s.faults[0].params) == f"all {mode}"


@pytest.mark.parametrize("extra, message", [
    ('[[fault]]\nat_s = 1\nkind = "link"\nmode = "bandwidth"\nms = 5\nfor_s = 5\n',
     "fault[0].ms: not a parameter of mode bandwidth; it takes: bytes_per_s"),
    ('[[fault]]\nat_s = 1\nkind = "link"\nmode = "stall"\nprobability = 2\nfor_s = 5\n',
     "fault[0].mode: mode stall: probability must be in [0, 1]"),
    ('[[fault]]\nat_s = 1\nkind = "link"\nmode = "blackhole"\n',
     "fault[0].for_s: a link fault needs a duration"),
    ('[[fault]]\nat_s = 1\nkind = "clock"\njump_s = 5\nfor_s = 3\n',
     "fault[0].for_s: not a known key"),
    ('[[fault]]\nat_s = 1\nkind = "broker"\nfor_s = 3\ngateways = [1]\n',
     "fault[0].gateways: not a known key"),
    ('[ledger]\ndb = "mysql"\n', "ledger.db: 'mysql' is not one of sqlite, postgresql"),
])
def test_a_fault_mistake_names_file_key_and_fix(tmp_path: Path, extra: str,
                                                message: str) -> None:
    with pytest.raises(sc.ScenarioError) as err:
        _load(tmp_path, extra)
    assert str(err.value).startswith("mine.toml: ") and message in str(err.value)


def test_the_ledger_is_sqlite_unless_the_file_says_postgresql(tmp_path: Path) -> None:
    assert _load(tmp_path, "").ledger_db == "sqlite"
    assert _load(tmp_path, '[ledger]\ndb = "postgresql"\n').ledger_db == "postgresql"


def test_a_new_kind_is_one_class(tmp_path: Path) -> None:
    class Dust(faults.FaultKind):
        name = "dust"
        keys = ("grams",)

        @classmethod
        def check(cls, params: dict[str, Any], s: sc.Scenario, t: faults.TableCheck) -> None:
            t.num("grams", lo=1, hi=10)

        @classmethod
        def label(cls, p: dict[str, Any]) -> str:
            return f"{p['grams']} g of dust"

    try:
        s = _load(tmp_path, '[[fault]]\nat_s = 1\nkind = "dust"\ngrams = 3\nfor_s = 2\n')
        assert (s.faults[0].kind, s.faults[0].params) == ("dust", {"grams": 3})
        with pytest.raises(sc.ScenarioError, match=r"fault\[0\]\.grams: 30 is not a number"):
            _load(tmp_path, '[[fault]]\nat_s = 1\nkind = "dust"\ngrams = 30\n')
    finally:
        del faults.KINDS["dust"]


def test_every_mode_parameter_has_a_proxy_set_flag() -> None:
    from midshift.simulator.network import PARAM_HELP

    assert set(PARAM_HELP) == {k for p in PARAMS.values() for k in p}
