"""Emit lanes: each key's events reach ``emit`` in order, keys go in parallel (their emits
wait at the same time), what queued during one emit goes in the next as one list, a full
lane refuses, a refusal is reported, close drains."""

from __future__ import annotations

import threading

from midshift.firmware.core.event import Event
from midshift.firmware.edges.emit_lanes import EmitLanes


def _ev(tag: str, value: int) -> Event:
    return Event("d", "canopen", 1_700_000_000_000, {"tag": tag, "value": value})


def test_order_per_key_and_keys_in_parallel() -> None:
    gate = threading.Event()
    inside = threading.Semaphore(0)
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    calls: list[int] = []

    def emit(events: list[Event]) -> list[bool]:
        inside.release()
        assert gate.wait(5)  # a sync that takes a while: every lane waits in it
        with lock:
            calls.append(len(events))
            got.extend((e.data["tag"], e.data["value"]) for e in events)
        return [True] * len(events)

    lanes = EmitLanes("t", emit, lambda e: None, lanes=2).start()
    for i in range(50):
        assert lanes.put("a", _ev("a", i)) and lanes.put("b", _ev("b", i))
    assert inside.acquire(timeout=5) and inside.acquire(timeout=5)  # both lanes at once
    gate.set()
    lanes.close()
    assert [v for t, v in got if t == "a"] == list(range(50))
    assert [v for t, v in got if t == "b"] == list(range(50))
    assert len(calls) <= 6  # what queued behind a waiting emit went in one call, not 100


def test_full_lane_refuses_and_refusals_are_reported_and_close_drains() -> None:
    gate = threading.Event()
    refused: list[int] = []
    done: list[int] = []

    def emit(events: list[Event]) -> list[bool]:
        assert gate.wait(5)
        done.extend(e.data["value"] for e in events)
        return [e.data["value"] % 2 == 0 for e in events]  # odd values: the journal says no

    lanes = EmitLanes("t", emit, lambda e: refused.append(e.data["value"]), lanes=1,
                      capacity=3).start()
    results = [lanes.put("a", _ev("a", i)) for i in range(6)]
    # the lane's thread may take what is queued (1 to 3) before it waits in emit; then at
    # most 3 more wait
    assert results[:3] == [True, True, True] and 3 <= results.count(True) <= 6
    gate.set()
    lanes.close()
    assert done == [i for i, ok in enumerate(results) if ok]
    assert refused == [v for v in done if v % 2]
    assert lanes.waiting() == 0
