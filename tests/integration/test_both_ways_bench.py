"""``python -m bench both_ways --json --quick`` as a user runs it: one JSON object with
issue 20's contract fields (``../shared/contracts/benches.tsv``), each beside its baseline,
and every run complete (nothing left in the outbox, no read failed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ("erp_delivery_p99_ms", "erp_backlog_drain_s", "refdata_apply_per_s",
            "refdata_read_p99_ms")


def test_the_quick_both_ways_bench_prints_every_contract_field() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "both_ways", "--json", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for f in (*CONTRACT, "erp_backlog_ideal_s", "erp_backlog_baseline_s",
              "refdata_apply_baseline_per_s",
              "refdata_read_baseline_p99_ms"):
        assert isinstance(out[f], (int, float)) and out[f] > 0, (f, out)
    assert out["backlog_left"] == 0 and out["backlog_txns"] == 10_000
    assert out["refdata_read_errors"] == 0
