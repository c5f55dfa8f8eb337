"""A scenario whose ledger is PostgreSQL (``[ledger] db = "postgresql"``): the runner
starts a throwaway cluster, the ledger process writes to it, and the judge reads it through
the store, with nothing lost and nothing doubled across an outage of both uplinks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
[scenario]
name = "pg-ledger"
duration_s = 16
settle_s = 30

[ledger]
db = "postgresql"

[devices.scanner1]
type = "scanner"
rate_per_s = 4

[[fault]]
at_s = 4
kind = "link"
uplink = "all"
mode = "blackhole"
for_s = 6

[expect]
lost = 0
duplicates = 0
corrupt = 0
"""


def test_a_scenario_on_a_postgresql_ledger_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "pg-ledger.toml"
    path.write_text(SCENARIO)
    proc = subprocess.run([sys.executable, "-m", "midshift.simulator", "run", str(path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.stdout.strip(), f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    r = json.loads(proc.stdout)
    assert r["ledger_db"] == "postgresql"
    assert "a PostgreSQL cluster of its own" in proc.stderr
    assert proc.returncode == 0 and r["passed"], (r["assertions"], r["notes"])
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["corrupt"] == 0
    assert r["produced"] > 0 and r["committed"] == r["produced"] and r["events"] >= r["produced"]
