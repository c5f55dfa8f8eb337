"""``reconcile --ground-truth`` reads one run: a log appended to by an earlier run of the
emulators (same directory, same device names) must not show that run's values as lost."""

from __future__ import annotations

import json
from pathlib import Path

from midshift.host_tools.__main__ import main as host_main
from midshift.host_tools.ground_truth import latest_run
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.reconcile import reconcile


def _log(path: Path, run: str | None, t0: int, values: list[str]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for i, v in enumerate(values):
            entry = {"t_ms": t0 + i, "device": path.stem, "n": i + 1, "kind": "scan",
                     "value": v, "expect": True}
            if run is not None:
                entry["run"] = run
            f.write(json.dumps(entry) + "\n")


def test_only_the_latest_run_counts_unless_another_is_named(tmp_path: Path, capsys) -> None:
    scan, plc = tmp_path / "scan1.jsonl", tmp_path / "plc1.jsonl"
    _log(scan, None, 1_000, ["A", "B"])            # before runs were tagged
    _log(scan, "old", 2_000, ["C", "D", "E"])
    _log(plc, "old", 2_000, ["1", "2"])            # a device the new run does not have
    _log(scan, "new", 9_000, ["F"])
    assert latest_run([scan, plc]) == "new"
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = open_store(db, migrate=True)
    try:
        r = reconcile(store, [scan, plc])
        assert (r["ground_truth_run"], r["lost"]) == ("new", 1)
        assert r["ground_truth"]["scan1"]["lost_examples"] == ["F"]
        assert "plc1" not in r["ground_truth"]
        assert reconcile(store, [scan, plc], "old")["lost"] == 5
        assert reconcile(store, [scan], "")["lost"] == 2
    finally:
        store.close()
    assert host_main(["reconcile", "--db", db, "--ground-truth", str(scan), str(plc),
                      "--run", "old"]) == 1
    assert "against ground truth (run old): 5 lost" in capsys.readouterr().out
