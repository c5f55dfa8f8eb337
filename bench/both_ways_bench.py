"""``python -m bench both_ways``: issue 20's figures, both directions. Reference data down
(``bench/refdata_bench.py``: ``refdata_apply_per_s``, ``refdata_read_p99_ms`` and their
baselines); the ledger out to the ERP adds its fields here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from bench import refdata_bench
    out: dict[str, Any] = {}
    out.update(refdata_bench.measure(quick, progress))
    return out
