"""Time sources for the agent on CPython: the system clock, or one the simulator steers.

The core never reads the time; it is handed an object with ``now_ms()`` (wall clock, ms
since the Unix epoch, for event stamps and the HLC) and ``monotonic_ms()`` (for timeouts,
backoff and keepalive, which must not care what the wall clock does).

``FileControlledClock`` lets another process skew, jump and drift this process's wall
clock without touching the host's: the simulator writes a small JSON control file

    {"offset_ms": -1500, "drift_ppm": 200.0, "since_ms": 1732331200000}

atomically (write a temporary file, then rename), and the agent's wall clock becomes

    now_ms = host_ms + offset_ms + drift_ppm * (host_ms - since_ms) / 1e6

where ``host_ms`` is the host's wall clock. Both sides evaluate that formula against the
same host clock, so they agree on the agent's time to the millisecond. The file is
re-read only when ``stat`` says it changed (inode, mtime or size), one ``stat`` per call.

Sharp edges:

- ``monotonic_ms()`` is the host's monotonic clock, never offset, jumped or drifted: a
  wall clock that jumps back must not stretch a timeout. (A real drifting crystal would
  also stretch monotonic time; not modelled.)
- A missing control file means no fault (offset 0, no drift). A malformed one keeps the
  last good values and logs a warning once per change, so a half-typed edit by hand
  cannot stop the agent. ``bad_reads`` counts them.
- A jump of the host's own wall clock (NTP step) moves both sides equally; not a fault.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ClockControl:
    """Offset and drift applied to a host wall-clock reading; the control file's content."""

    __slots__ = ("offset_ms", "drift_ppm", "since_ms")

    def __init__(self, offset_ms: float = 0.0, drift_ppm: float = 0.0, since_ms: int = 0) -> None:
        self.offset_ms = offset_ms
        self.drift_ppm = drift_ppm
        self.since_ms = since_ms

    def apply(self, host_ms: int) -> int:
        """The controlled wall time (ms) for a host wall-clock reading (ms)."""
        drift_ms = self.drift_ppm * (host_ms - self.since_ms) / 1e6 if self.drift_ppm else 0.0
        return int(host_ms + self.offset_ms + drift_ms)

    def to_json(self) -> dict[str, Any]:
        return {"offset_ms": self.offset_ms, "drift_ppm": self.drift_ppm,
                "since_ms": self.since_ms}

    @classmethod
    def from_json(cls, data: Any) -> ClockControl:
        """Parse the control file's object; ValueError names the bad field."""
        if not isinstance(data, dict):
            raise ValueError("clock control must be a JSON object")
        values: dict[str, float] = {}
        for key in ("offset_ms", "drift_ppm", "since_ms"):
            v = data.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"clock control {key}: {v!r} is not a number")
            values[key] = v
        unknown = set(data) - {"offset_ms", "drift_ppm", "since_ms"}
        if unknown:
            raise ValueError(f"clock control: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(values["offset_ms"], values["drift_ppm"], int(values["since_ms"]))

    def __repr__(self) -> str:
        return (f"ClockControl(offset_ms={self.offset_ms}, drift_ppm={self.drift_ppm}, "
                f"since_ms={self.since_ms})")


def host_wall_ms() -> int:
    return time.time_ns() // 1_000_000


def host_monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class SystemClock:
    """The host's clocks, unchanged: what the agent uses on a real gateway."""

    def now_ms(self) -> int:
        return host_wall_ms()

    def monotonic_ms(self) -> int:
        return host_monotonic_ms()


class FileControlledClock:
    """The host's wall clock with the offset and drift from a control file applied."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.control = ClockControl()
        self.reads = 0  # how often the file was actually opened (it should be rare)
        self.bad_reads = 0
        self._seen: tuple[int, int, int] | None = None

    def now_ms(self) -> int:
        self._refresh()
        return self.control.apply(host_wall_ms())

    def monotonic_ms(self) -> int:
        return host_monotonic_ms()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._seen is not None:
                log.info("clock control %s removed: back to the host clock", self.path)
                self._seen = None
                self.control = ClockControl()
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return
        self._seen = stamp
        self.reads += 1
        try:
            with open(self.path, encoding="utf-8") as f:
                self.control = ClockControl.from_json(json.load(f))
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            self.bad_reads += 1
            log.warning("clock control %s unreadable, keeping %r: %s", self.path, self.control, exc)
            return
        log.info("clock control %s: %r", self.path, self.control)
