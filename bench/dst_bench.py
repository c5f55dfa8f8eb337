"""Deterministic simulation benchmark: how fast the real core runs under seeded faults,
and whether every planted bug is found.

- ``faults_per_s``, ``events_per_s``: seeds of the default configuration (3 gateways, 2
  uplinks, 120 simulated seconds of faults, then the healed world until every durable
  record is in the ledger) run back to back; faults injected and heap events run per CPU
  second of the one thread (process time: on a shared machine, other processes' load does
  not halve the figure);
- ``simulated_to_real``: one run of 100 gateways for 300 simulated seconds of faults and
  the recovery after (a device burst every 20 s on average per gateway, of up to 4 scans on
  two gateways in three and up to 30 on the others, a fault in the world every 0.7 s on
  average across the fleet, one message hop in five lost, doubled or delayed): simulated
  seconds per wall second;
- ``planted_bugs_found`` of ``planted_bugs``: each known bug of
  ``midshift/simulator/dst/planted.py``, planted alone, run over at most ``FIND_WITHIN`` seeds.

The baseline in the same run is the simulation itself: every figure is the real core's
own code (journal, session, ledger verify) under the fault model, nothing stubbed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from midshift.simulator.dst.planted import FIND_WITHIN, PLANTED
from midshift.simulator.dst.world import Config, run_seed


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    seeds = 10 if quick else 60
    faults = events = 0
    t0 = time.process_time()
    for seed in range(seeds):
        r = run_seed(seed, Config())
        faults += r.faults
        events += r.events
    cpu_s = time.process_time() - t0
    say(f"{seeds} seeds: {faults} faults, {events} events in {cpu_s:.1f} CPU s")

    fleet = Config(gateways=100, fault_s=60 if quick else 300, burst_every_ms=20_000,
                   hop_fault=0.2)
    w0 = time.perf_counter()
    r = run_seed(1, fleet)
    wall_s = time.perf_counter() - w0
    say(f"100 gateways: {r.sim_s:.0f} simulated s in {wall_s:.1f} wall s "
        f"({'ok' if r.ok else r.violation})")

    found = 0
    for name, plant in PLANTED.items():
        with plant():
            for seed in range(FIND_WITHIN):
                if not run_seed(seed, Config(fault_s=60)).ok:
                    found += 1
                    say(f"planted {name}: found by seed {seed}")
                    break
            else:
                say(f"planted {name}: NOT found in {FIND_WITHIN} seeds")
    return {"faults_per_s": round(faults / cpu_s), "events_per_s": round(events / cpu_s),
            "simulated_to_real": round(r.sim_s / wall_s, 1),
            "planted_bugs_found": found, "planted_bugs": len(PLANTED)}
