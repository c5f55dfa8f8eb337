"""``python -m bench both_ways``: issue 20's figures, both directions, in one run.

- Down (``bench/refdata_bench.py``): ``refdata_apply_per_s`` (price operations applied on
  the gateway, 100,000 SKUs; baseline a bare SQLite insert) and ``refdata_read_p99_ms`` (a
  till's price lookup over HTTP, open loop; baseline a trivial GET of the same server).
- Out (``bench/erp_bench.py``): ``erp_delivery_p99_ms`` (ledger commit to the ERP's 2xx in
  steady state, open loop) and ``erp_backlog_drain_s`` (100,000 transactions queued by an
  ERP outage, against an ERP limit of 50 requests/s of 500: ``erp_backlog_ideal_s`` and
  ``erp_backlog_ratio`` beside it).

Each half also runs alone: ``python -m bench refdata``, ``python -m bench erp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from bench import erp_bench, refdata_bench
    out: dict[str, Any] = {}
    out.update(refdata_bench.measure(quick, progress))
    out.update(erp_bench.measure(quick, progress))
    return out
