"""The CANopen rate benchmark runs briefly: every TPDO sent becomes one journaled event."""

from __future__ import annotations

from bench.canopen_rate import tpdo_per_s


def test_tpdo_rate_runs_and_loses_nothing() -> None:
    r = tpdo_per_s(seconds=0.5, offered_per_s=400)
    assert set(r) >= {"canopen_tpdo_per_s", "canopen_offered_per_s", "canopen_sent_per_s",
                      "canopen_lost"}
    assert r["canopen_offered_per_s"] == 400 and r["canopen_tpdos_sent"] >= 150
    assert r["canopen_lost"] == 0 and r["canopen_bad_frames"] == 0
    assert r["canopen_events_journaled"] == 2 * r["canopen_tpdos_sent"]
    assert r["canopen_tpdo_per_s"] > 0
