"""Events handed to the journal by a few threads: in order per key, in parallel across keys.

A driver's ``emit`` returns only once the record is durable, about one journal sync. A
driver that reads faster than that (a CAN bus: thousands of frames a second) must not
wait for it on its receive thread, or heartbeats and answers queue behind the syncs and a
busy bus looks like a lost device. So it ``put``s each event with a key (the value's tag)
and returns at once. Each key keeps to one lane (assigned round robin as keys first
appear), and each lane is one thread emitting in arrival order, so the values of one tag
reach the journal in the order they were read, while the lanes' emits wait for the same
syncs (the journal's group commit makes one sync for all that wait): with N changing tags
per frame, N events share a sync.

Bounded: beyond ``capacity`` events waiting in a lane, ``put`` refuses (False) and the
caller counts the drop; nothing waits unbounded and nothing is dropped silently. On
``close``, what is queued is still emitted (up to ``drain_s``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from midshift.firmware.core.event import Event


class _Lane:
    def __init__(self) -> None:
        self.queue: deque[Event] = deque()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None


class EmitLanes:
    """``lanes`` threads calling ``emit(events)`` with what queued in their lane (in order;
    one call, one sync for them all); ``refused(event)`` is told of each event ``emit``
    returned falsy for (the journal refused it)."""

    def __init__(self, name: str, emit: Callable[[list[Event]], list[Any]],
                 refused: Callable[[Event], None], lanes: int = 4,
                 capacity: int = 5000) -> None:
        self.name = name
        self._emit = emit
        self._refused = refused
        self.capacity = capacity
        self._lanes = [_Lane() for _ in range(lanes)]
        self._lane_of: dict[str, _Lane] = {}
        self._assign = threading.Lock()
        self._closing = False

    def start(self) -> EmitLanes:
        self._closing = False
        for i, lane in enumerate(self._lanes):
            lane.thread = threading.Thread(target=self._run, args=(lane,), daemon=True,
                                           name=f"emit-{self.name}-{i}")
            lane.thread.start()
        return self

    def put(self, key: str, event: Event) -> bool:
        """Queue ``event`` behind the earlier events of ``key``; False if its lane is full."""
        lane = self._lane_of.get(key)
        if lane is None:
            with self._assign:
                lane = self._lane_of.setdefault(
                    key, self._lanes[len(self._lane_of) % len(self._lanes)])
        with lane.cond:
            if len(lane.queue) >= self.capacity:
                return False
            lane.queue.append(event)
            lane.cond.notify()
            return True

    def waiting(self) -> int:
        return sum(len(lane.queue) for lane in self._lanes)

    def close(self, drain_s: float = 5.0) -> None:
        """Emit what is queued (up to ``drain_s``), then end the threads."""
        self._closing = True
        for lane in self._lanes:
            with lane.cond:
                lane.cond.notify()
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join(drain_s)
                lane.thread = None

    def _run(self, lane: _Lane) -> None:
        while True:
            with lane.cond:
                while not lane.queue and not self._closing:
                    lane.cond.wait()
                if not lane.queue:
                    return
                events = list(lane.queue)  # all that queued during the last sync: one more
                lane.queue.clear()
            for event, ok in zip(events, self._emit(events), strict=True):
                if not ok:
                    self._refused(event)
