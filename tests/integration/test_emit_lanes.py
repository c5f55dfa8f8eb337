"""Emit lanes: each key's events reach ``emit`` in order, keys go in parallel (their emits
wait at the same time), a full lane refuses, a refusal is reported, close drains."""

from __future__ import annotations

import threading

from firmware.core.event import Event
from firmware.edges.emit_lanes import EmitLanes


def _ev(tag: str, value: int) -> Event:
    return Event("d", "canopen", 1_700_000_000_000, {"tag": tag, "value": value})


def test_order_per_key_and_keys_in_parallel() -> None:
    gate = threading.Event()
    inside = threading.Semaphore(0)
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    def emit(e: Event) -> bool:
        inside.release()
        assert gate.wait(5)  # a sync that takes a while: every lane waits in it
        with lock:
            got.append((e.data["tag"], e.data["value"]))
        return True

    lanes = EmitLanes("t", emit, lambda e: None, lanes=2).start()
    for i in range(50):
        assert lanes.put("a", _ev("a", i)) and lanes.put("b", _ev("b", i))
    assert inside.acquire(timeout=5) and inside.acquire(timeout=5)  # both lanes at once
    gate.set()
    lanes.close()
    assert [v for t, v in got if t == "a"] == list(range(50))
    assert [v for t, v in got if t == "b"] == list(range(50))


def test_full_lane_refuses_and_refusals_are_reported_and_close_drains() -> None:
    gate = threading.Event()
    refused: list[int] = []
    done: list[int] = []

    def emit(e: Event) -> bool:
        assert gate.wait(5)
        done.append(e.data["value"])
        return e.data["value"] % 2 == 0  # odd values: the journal says no

    lanes = EmitLanes("t", emit, lambda e: refused.append(e.data["value"]), lanes=1,
                      capacity=3).start()
    results = [lanes.put("a", _ev("a", i)) for i in range(6)]
    # one is taken by the lane's thread at once or soon; at most 3 wait
    assert results[:3] == [True, True, True] and results.count(True) in (3, 4)
    gate.set()
    lanes.close()
    assert done == [i for i, ok in enumerate(results) if ok]
    assert refused == [v for v in done if v % 2]
    assert lanes.waiting() == 0
