"""The fault budget CI runs in ``make test``: seeds of the default configuration until at
least a million faults have been injected, every invariant holding in each. ``make dst
SEEDS=...`` runs longer.
"""

from __future__ import annotations

from midshift.simulator.dst.world import Config, run_seed

FAULTS = 1_000_000
# Its speed (faults_per_s, at least 10,000 a second on one core: a million in under two
# minutes) is held by ``python -m bench dst``, not timed here: a loaded CI machine would
# fail a correct run.


def test_a_million_faults_hold_every_invariant() -> None:
    faults = seed = 0
    failed = []
    while faults < FAULTS and seed < 2000:
        r = run_seed(seed, Config())
        faults += r.faults
        if r.violation is not None:
            failed.append(f"seed {seed}: {r.violation}")
        seed += 1
    assert not failed, "\n".join(failed)
    assert faults >= FAULTS
