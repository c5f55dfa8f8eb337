"""The pipeline's place in driver tests: collects events, can refuse the next ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from midshift.firmware.core.errors import JournalFull
from midshift.firmware.core.event import Event

WAIT_S = 5.0


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refuse = 0  # refuse this many next events with JournalFull
        self.cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self.cond:
            if self.refuse:
                self.refuse -= 1
                raise JournalFull("txn", 100, 0)
            self.events.append(event)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout_s: float = WAIT_S) -> list[Event]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.events) >= n, timeout_s), \
                f"{len(self.events)} events, wanted {n}: {self.events}"
            return list(self.events)

    def snapshot(self) -> list[Event]:
        with self.cond:
            return list(self.events)

    def codes(self) -> list[str]:
        return [e.data["code"] for e in self.snapshot()]

    def values(self, tag: str) -> list[Any]:
        return [e.data["value"] for e in self.snapshot() if e.data.get("tag") == tag]


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll a condition another thread makes true (a counter, a state), bounded."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)
