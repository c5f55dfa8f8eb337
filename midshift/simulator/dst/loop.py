"""The virtual clock: a heap of timed calls, run in (time, insertion) order.

Ties are broken by insertion order, never by comparing the callables, so a run depends on
the seed alone. Time is integer milliseconds since the start of the run.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self) -> None:
        self.now_ms = 0
        self.events = 0
        self._heap: list[tuple[int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._n = 0

    def at(self, t_ms: int, fn: Callable[..., Any], *args: Any) -> None:
        self._n += 1
        heapq.heappush(self._heap, (max(t_ms, self.now_ms), self._n, fn, args))

    def after(self, delay_ms: int, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now_ms + delay_ms, fn, *args)

    def run_until(self, end_ms: int, stop: Callable[[], bool]) -> None:
        """Run calls due up to ``end_ms``; returns early once ``stop()`` is true (it is
        asked after each call) or nothing is left."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= end_ms:
            t, _, fn, args = pop(heap)
            self.now_ms = t
            self.events += 1
            fn(*args)
            if stop():
                return
        if not stop():
            self.now_ms = max(self.now_ms, end_ms)
