"""Shrinking a failing history with Hypothesis.

A seed draws everything; to make a failure smaller, Hypothesis draws the parts a person
reads instead: the seed (device traffic and message-hop luck), the chance that a hop is
faulty, and the world's faults as an explicit schedule of (ms, kind). ``shrink`` asks
``hypothesis.find`` for a history that breaks an invariant (of the kind given, if one is)
and makes it as small as it can: fewer world faults, earlier, hop faults rarer or none.
Each example is an ordinary deterministic run, so the result replays with
``run_seed(seed, Config(hop_fault=...), schedule=...)``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, find, settings
from hypothesis import strategies as st

from midshift.simulator.dst.faults import KINDS
from midshift.simulator.dst.world import Config, run_seed

KIND_NAMES = [k.__name__ for k, _ in KINDS]


def histories(fault_s: float) -> st.SearchStrategy[tuple[int, float, list[tuple[int, str]]]]:
    fault_ms = int(fault_s * 1000)
    return st.tuples(
        st.integers(0, 2**16),
        st.sampled_from([0.0, 0.1, 0.3, 0.5]),
        st.lists(st.tuples(st.integers(1, fault_ms - 1), st.sampled_from(KIND_NAMES)),
                 max_size=60).map(sorted))


def shrink(kind: str | None = None, fault_s: float = 20.0, gateways: int = 2,
           max_examples: int = 400) -> dict[str, Any]:
    """The smallest history found that breaks an invariant (``kind``, if given):
    {"seed", "hop_fault", "schedule", "violation"}. Raises hypothesis's NoSuchExample
    when none is found within ``max_examples``."""

    def fails(history: tuple[int, float, list[tuple[int, str]]]) -> bool:
        seed, hop_fault, schedule = history
        r = run_seed(seed, Config(gateways=gateways, fault_s=fault_s, hop_fault=hop_fault),
                     schedule=schedule)
        return r.violation is not None and (kind is None or r.violation.kind == kind)

    found = find(histories(fault_s), fails, settings=settings(
        max_examples=max_examples, database=None, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
    seed, hop_fault, schedule = found
    r = run_seed(seed, Config(gateways=gateways, fault_s=fault_s, hop_fault=hop_fault),
                 schedule=schedule)
    return {"seed": seed, "hop_fault": hop_fault, "schedule": schedule,
            "violation": str(r.violation)}
