"""Reading ground-truth logs: what emulated devices produced, one JSON object per line.

The simulator writes them (``simulator/ground_truth.py`` describes the fields); the
reconciliation report and the shift outcome read them here, so the host tools never
import the simulator. A torn last line (the writer lost power mid-line) is skipped, as is
any line that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_ground_truth(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the entries of a ground-truth file; a torn last line (power cut) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                continue
