"""Hypothesis shrinks a failing history to a few faults, and the result replays."""

from __future__ import annotations

from midshift.simulator.dst.planted import PLANTED
from midshift.simulator.dst.shrink import shrink
from midshift.simulator.dst.world import Config, run_seed


def test_a_planted_seq_reuse_shrinks_to_one_power_cut() -> None:
    with PLANTED["seq-reuse-after-crash"]():
        got = shrink(max_examples=200)
        assert [kind for _, kind in got["schedule"]] == ["power_cut"]
        again = run_seed(got["seed"], Config(gateways=2, fault_s=20,
                                             hop_fault=got["hop_fault"]),
                         schedule=got["schedule"])
    assert str(again.violation) == got["violation"]
