"""Reading ground-truth logs: what emulated devices produced, one JSON object per line.

The simulator writes them (``midshift/simulator/ground_truth.py`` describes the fields); the
reconciliation report and the shift outcome read them here, so the host tools never
import the simulator. A torn last line (the writer lost power mid-line) is skipped, as is
any line that is not JSON.

A log is appended to, so it may hold several runs (each entry's ``run``; entries of logs
written before runs were tagged count as one run, ``""``): ``latest_run`` finds the one
to read, so that an old run's values are not reported lost from a new ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def read_ground_truth(path: str | Path, run: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield the entries of a ground-truth file (of one ``run`` if given); a torn last line
    (power cut) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (run is None or entry.get("run", "") == run):
                yield entry


def latest_run(paths: Iterable[str | Path]) -> str | None:
    """The run whose first entry is the latest, over all ``paths``; None if all are empty."""
    first: dict[str, int] = {}
    for path in paths:
        for entry in read_ground_truth(path):
            run = str(entry.get("run", ""))
            t = entry.get("t_ms")
            t = t if isinstance(t, int) and not isinstance(t, bool) else 0
            first[run] = min(first.get(run, t), t)
    return max(first, key=lambda r: (first[r], r)) if first else None
