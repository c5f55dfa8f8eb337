"""Proof of teeth: each known bug, planted alone, is found by the simulation within
``FIND_WITHIN`` seeds, and the seed that finds it replays the same violation."""

from __future__ import annotations

import pytest

from midshift.simulator.dst.planted import FIND_WITHIN, PLANTED
from midshift.simulator.dst.world import Config, run_seed

# The invariants each bug can break first (a reused seq shows as the durable record it
# replaced, or as the other body reaching the ledger under that seq).
FOUND_AS = {
    "commit-on-puback": {"commit_ahead"},
    "seq-reuse-after-crash": {"durable_lost", "seq_reused", "body_differs"},
    "ledger-skips-dedup": {"stored_twice"},
    "forget-resend-on-uplink-change": {"not_recovered"},
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_bug_is_found_and_its_seed_replays(bug: str) -> None:
    config = Config(fault_s=60)
    with PLANTED[bug]():
        found = None
        for seed in range(FIND_WITHIN):
            r = run_seed(seed, config)
            if not r.ok:
                found = r
                break
        assert found is not None, f"{bug} not found in {FIND_WITHIN} seeds"
        assert found.violation is not None and found.violation.kind in FOUND_AS[bug]
        again = run_seed(found.seed, config)
    assert again.violation is not None and str(again.violation) == str(found.violation)
    assert (again.events, again.faults) == (found.events, found.faults)


def test_the_planted_bugs_are_gone_once_their_context_closes() -> None:
    for bug in sorted(PLANTED):
        with PLANTED[bug]():
            pass
    r = run_seed(0, Config(fault_s=60))
    assert r.ok, r.violation
