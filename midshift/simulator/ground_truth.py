"""Ground-truth log: every value an emulated device produced or served, with time.

One JSON object per line, appended and flushed as the device produces it, so a scenario
can later compare what the devices did with what the ledger holds. Fields:

- ``t_ms``: wall-clock time (ms since the Unix epoch) at which the device produced it;
- ``device``: the device's configured name;
- ``n``: per-device counter from 1, so two equal values stay two entries;
- ``kind``: ``scan``, ``weight``, ``register``, ``coil``, ``opcua``, ``fault`` ...;
- ``value``: the value as the device produced it (a barcode string, grams, a number);
- ``expect``: whether a correct agent should turn it into exactly one journaled event
  (garbage bytes, unstable weights and injected faults are logged with ``expect: false``);
- ``run``: the run that produced it: ``$MIDSHIFT_RUN_ID`` when set, else one id per
  simulator process (start time and pid). The logs are appended to, so a directory used
  twice holds two runs; ``reconcile --ground-truth`` reads only the latest (or ``--run``);
- optional extra fields per device (``unit``, ``address``, ``node``, ``fault``...).

Not modelled: the device's own clock; ``t_ms`` is the host's wall clock. The reader,
``read_ground_truth``, lives in ``midshift.host_tools.ground_truth`` (the reconciliation report
reads these logs, and host tools never import the simulator); it is re-exported here.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from midshift.host_tools.ground_truth import read_ground_truth

__all__ = ["RUN_ID", "GroundTruthLog", "read_ground_truth"]

# Hex milliseconds first, so runs sort by when they started.
RUN_ID = os.environ.get("MIDSHIFT_RUN_ID") or f"{int(time.time() * 1000):x}-{os.getpid()}"


class GroundTruthLog:
    """Thread-safe append-only JSON-lines log for one device (or many, by name)."""

    def __init__(self, path: str | Path | None, device: str) -> None:
        self.device = device
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._n = 0
        self._file = open(self.path, "a", encoding="utf-8") if self.path else None  # noqa: SIM115
        self.entries: list[dict[str, Any]] = []  # kept in memory too, for in-process tests

    def record(self, kind: str, value: Any, expect: bool = True, **extra: Any) -> dict[str, Any]:
        with self._lock:
            self._n += 1
            entry = {
                "t_ms": int(time.time() * 1000),
                "device": self.device,
                "n": self._n,
                "kind": kind,
                "value": value,
                "expect": expect,
                "run": RUN_ID,
            }
            entry.update(extra)
            self.entries.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
                self._file.flush()
            return entry

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

