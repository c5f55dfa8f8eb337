"""The fault budget CI runs in ``make test``: seeds of the default configuration until at
least a million faults have been injected, every invariant holding in each. ``make dst
SEEDS=...`` runs longer.
"""

from __future__ import annotations

import time

from simulator.dst.world import Config, run_seed

FAULTS = 1_000_000
CPU_S = 120  # at most, on one core (process time: other processes on the machine do not count)


def test_a_million_faults_hold_every_invariant() -> None:
    t0 = time.process_time()
    faults = seed = 0
    failed = []
    while faults < FAULTS and seed < 2000:
        r = run_seed(seed, Config())
        faults += r.faults
        if r.violation is not None:
            failed.append(f"seed {seed}: {r.violation}")
        seed += 1
    cpu_s = time.process_time() - t0
    assert not failed, "\n".join(failed)
    assert faults >= FAULTS
    assert cpu_s <= CPU_S, f"{faults} faults took {cpu_s:.0f} s of CPU"
