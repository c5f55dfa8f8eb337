"""``python -m bench till --quick`` runs end to end and reports every contract figure."""

from __future__ import annotations

from bench.till_bench import run

FIELDS = ("till_post_p50_ms", "till_post_p99_ms", "replay_p99_ms", "rss_added_mb",
          "offline_drain_s", "offline_drain_baseline_s", "offline_drain_ledger_cpu_s",
          "offline_drain_agent_cpu_s")


def test_the_quick_till_bench_reports_every_figure() -> None:
    out = run(quick=True)
    for f in FIELDS:
        assert isinstance(out[f], (int, float)), (f, out)
    assert out["till_post_errors"] == 0 and out["replay_errors"] == 0
    assert out["drain_complete"] and out["drain_txns"] == 3000
    assert out["till_post_rate_achieved"] > 40
