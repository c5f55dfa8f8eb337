"""What every driver reports about its device: a state, the last error, and counters.

The contract between drivers and the rest of the agent:

- A driver is built as ``Driver(name, cfg, emit, clock)``: ``cfg`` is the device's validated
  table from the site config, ``emit(event)`` hands one ``midshift.firmware.core.event.Event`` to
  the pipeline and returns its seq once it is durable (it raises a ``MidshiftError`` such
  as ``JournalFull`` when the event is refused; ``Driver.emit`` turns either into an
  ``Emitted`` with a stable reason), ``clock`` has ``now_ms()`` (wall) and
  ``monotonic_ms()``.
- The driver's module (``midshift/firmware/edges/<type>.py``) exports ``TYPE``, ``DEFAULT_CLASS``
  and ``DRIVER``; the config loader and the agent find it by the type's name.
- ``start()`` starts its thread(s) and returns at once; ``stop()`` stops them and releases
  every port, socket and thread within a few seconds; ``status`` is a ``DeviceStatus``.
- An event's ``read_ms`` is the wall time the value was read from the device, never the
  time it was converted; a value not read again is never emitted again.

States: ``ok`` (talking, values fresh), ``stale`` (connected but no fresh value within
the configured stale time), ``error`` (the device answers with errors: exceptions,
overload, Bad status), ``disconnected`` (port gone, connection refused or lost).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

STATES = ("ok", "stale", "error", "disconnected")


class DeviceStatus:
    """Thread-safe state, last error and counters of one device."""

    def __init__(self, name: str, kind: str, now_ms: int = 0) -> None:
        self.name = name
        self.kind = kind
        self._lock = threading.Lock()
        self._state = "disconnected"
        self._since_ms = now_ms
        self._last_error: str | None = None
        self._last_error_ms: int | None = None
        self._counters: Counter[str] = Counter()

    def set(self, state: str, now_ms: int, error: str | None = None) -> bool:
        """Move to ``state``; ``error`` (if given) becomes the last error. True if it changed."""
        if state not in STATES:
            raise ValueError(f"device state {state!r} is not one of {', '.join(STATES)}")
        with self._lock:
            if error is not None:
                self._last_error = error
                self._last_error_ms = now_ms
            if state == self._state:
                return False
            self._state = state
            self._since_ms = now_ms
            self._counters[f"to_{state}"] += 1
            return True

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    @property
    def state(self) -> str:
        return self._state

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"name": self.name, "kind": self.kind, "state": self._state,
                    "since_ms": self._since_ms, "last_error": self._last_error,
                    "last_error_ms": self._last_error_ms, "counters": dict(self._counters)}
