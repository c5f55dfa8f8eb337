"""Clock faults: a wall clock the simulator skews, jumps and drifts, here or in an agent.

``SimClock`` is a time source (``now_ms()``, ``monotonic_ms()``) an in-process agent can
be given directly. With a ``control_path`` it also writes every change to a JSON control
file (atomically: temporary file, then rename) that an agent in another process follows
through ``midshift.firmware.edges.clock.FileControlledClock``; both evaluate the same formula
(``ClockControl.apply``) against the same host clock, so they read the same time.

Controls:

- ``skew(offset_ms)``: the clock reads host time plus ``offset_ms`` from now on (a gateway
  whose RTC was set wrong); drift accumulated so far is discarded.
- ``jump(delta_ms)``: the reading moves by ``delta_ms`` at once, forward or back (an NTP
  step, an RTC battery swap).
- ``drift(ppm)``: from now on the clock gains ``ppm`` microseconds per second (negative:
  loses), continuing from its current reading (a crystal off its nominal frequency).
- ``reset()``: back to the host clock (to the site's clock, with ``base_ms``).

A site clock. A scenario's ``[clock]`` sets every clock of the site (each agent's, the
ledger's, the tills') to read a chosen instant at a chosen scenario second, e.g. a store's
daylight-saving change in the middle of its day: one offset from the host's clock
(``site_offset_ms``, the only place it is worked out) given to each ``SimClock`` as
``base_ms``, written to the ledger's control file and handed to the tills. Clock faults
then skew, jump and drift an agent relative to that base. The offset never changes during
a run, so a time the ledger stamped is turned back into host time by subtracting it.

Not modelled: monotonic time never changes (a real drifting crystal would stretch it too);
leap seconds; the host's own clock steps (they move every process equally); clock faults
inside the simulator's own devices (their ground-truth log uses the host clock).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from midshift.firmware.edges.clock import ClockControl, host_monotonic_ms, host_wall_ms


def write_control(path: str | Path, control: ClockControl) -> None:
    """Write a clock control file atomically, so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(control.to_json(), f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # no stray temporary files beside the control file
        raise


def site_offset_ms(reads_ms: int, in_s: float, host_now_ms: int) -> int:
    """The offset (ms) that makes a clock read ``reads_ms`` ``in_s`` wall seconds after
    ``host_now_ms``."""
    return reads_ms - host_now_ms - round(in_s * 1000)


class SimClock:
    """A steerable wall clock over the host's clocks; see the module docstring."""

    def __init__(self, control_path: str | Path | None = None,
                 host_wall: Callable[[], int] = host_wall_ms,
                 host_monotonic: Callable[[], int] = host_monotonic_ms,
                 base_ms: float = 0.0) -> None:
        """``host_wall``/``host_monotonic`` are injectable so drift can be tested exactly;
        ``base_ms``: the site clock's offset from the host's, which faults start from."""
        self.control_path = Path(control_path) if control_path is not None else None
        self._host_wall = host_wall
        self._host_monotonic = host_monotonic
        self.base_ms = base_ms
        self.control = ClockControl(base_ms, since_ms=host_wall())
        self._publish()

    def now_ms(self) -> int:
        return self.control.apply(self._host_wall())

    def monotonic_ms(self) -> int:
        return self._host_monotonic()

    @property
    def offset_ms(self) -> float:
        """How far this clock is from the host's right now (ms, drift and base included)."""
        host = self._host_wall()
        return self.control.apply(host) - host

    def skew(self, offset_ms: float) -> None:
        self.control = ClockControl(self.base_ms + offset_ms, self.control.drift_ppm,
                                    self._host_wall())
        self._publish()

    def jump(self, delta_ms: float) -> None:
        self._rebase()
        self.control.offset_ms += delta_ms
        self._publish()

    def drift(self, ppm: float) -> None:
        self._rebase()
        self.control.drift_ppm = ppm
        self._publish()

    def reset(self) -> None:
        self.control = ClockControl(self.base_ms, since_ms=self._host_wall())
        self._publish()

    def _rebase(self) -> None:
        """Fold the drift accumulated so far into the offset and restart drift from now."""
        host = self._host_wall()
        c = self.control
        drifted_ms = c.drift_ppm * (host - c.since_ms) / 1e6
        self.control = ClockControl(c.offset_ms + drifted_ms, c.drift_ppm, host)

    def _publish(self) -> None:
        if self.control_path is not None:
            write_control(self.control_path, self.control)
