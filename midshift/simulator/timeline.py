"""Plays a scenario's timeline on a running site: faults on and off, the scales' items,
at scenario times divided by the speed. What each fault kind does is its class in
``midshift/simulator/faults.py``; this module only orders them in time.

Every action happens on this one thread, in time order, so two faults never race. Each
fault that lasts leaves a window (kind, label, gateways, wall-clock start and end in ms)
for the outcome and the report; moments (a clock jump, garbage from a scanner) leave a
window with start == end.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from midshift.simulator.faults import KINDS, PowerCut, Undo
from midshift.simulator.scenario import Fault
from midshift.simulator.site import Gateway, SimulatedSite

log = logging.getLogger(__name__)


@dataclass
class FaultWindow:
    kind: str
    label: str
    gateways: list[str]
    start_ms: int
    end_ms: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "gateways": self.gateways,
                "start_ms": self.start_ms, "end_ms": self.end_ms, **self.detail}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Timeline:
    def __init__(self, site: SimulatedSite, speed: float, seed: int = 1) -> None:
        self.site = site
        self.speed = speed
        self.rng = random.Random(seed)
        self.windows: list[FaultWindow] = []
        self.notes: list[str] = []
        self.fleet_result: dict[str, Any] | None = None
        self._fleet_thread: threading.Thread | None = None
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def at(self, scenario_s: float, action: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._queue, (scenario_s / self.speed, self._n, action))

    def plan(self) -> None:
        sc = self.site.scenario
        for f in sc.faults:
            gws = [self.site.gateways[i] for i in (f.gateways if f.gateways is not None
                                                   else range(len(self.site.gateways)))]
            self.at(f.at_s, lambda f=f, gws=gws: self._start(f, gws))
        if self.site.fleet is not None:
            self.site.fleet.prepare()  # encoded now, so the storm times sending, not JSON
            self.at(sc.fleet["at_s"], self._storm)
        for name, spec in sc.devices.items():
            if spec["type"] == "scale" and spec.get("loads_per_min", 4) > 0:
                self._plan_scale(name, spec, sc.duration_s)

    def _plan_scale(self, name: str, spec: dict[str, Any], duration_s: float) -> None:
        """Items placed, weighed and removed; none while the gateway is powered off (nobody
        weighs at a dead till), so an item is never on the plate when an agent restarts."""
        every_s = 60.0 / spec.get("loads_per_min", 4)
        lo, hi = spec.get("min_g", 50), spec.get("max_g", 5000)
        sc = self.site.scenario
        for g in self.site.gateways:
            off = [(f.at_s - 2, f.at_s + f.for_s + 10) for f in sc.faults
                   if f.kind == PowerCut.name and (f.gateways is None or g.index in f.gateways)]
            scale = g.devices[name]
            t = every_s * self.rng.uniform(0.2, 1.0)
            while t + every_s / 2 < duration_s:
                if not any(a < t + every_s / 2 and t < b for a, b in off):
                    w = round(self.rng.uniform(lo, hi), 1)
                    self.at(t, lambda s=scale, w=w: s.place(w))
                    self.at(t + every_s / 2, scale.remove)
                t += every_s

    def run(self, start_monotonic: float, stop: Callable[[], bool]) -> None:
        """Play every action at its time; ``stop()`` ends early (Ctrl-C)."""
        while self._queue and not stop():
            due, _, action = self._queue[0]
            wait = start_monotonic + due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.2))  # the timeline's own clock, not a sync
                continue
            heapq.heappop(self._queue)
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - a failed action is reported, not fatal
                log.exception("timeline action failed")
                self.notes.append(f"a timeline action failed: {exc}")

    def _storm(self) -> None:
        """The virtual fleet comes back at once with its backlog, on a thread of its own."""
        fleet = self.site.fleet
        assert fleet is not None
        w = FaultWindow("fleet", f"fleet storm: {len(fleet.gateways)} virtual gateways", [],
                        _now_ms())
        self.windows.append(w)

        def run() -> None:
            self.fleet_result = fleet.run(timeout_s=300)
            w.end_ms = _now_ms()
        self._fleet_thread = threading.Thread(target=run, name="fleet", daemon=True)
        self._fleet_thread.start()

    def join_fleet(self, timeout_s: float) -> None:
        if self._fleet_thread is not None:
            self._fleet_thread.join(timeout_s)

    # ---- faults ------------------------------------------------------------------------

    def _start(self, f: Fault, gws: list[Gateway]) -> None:
        kind = KINDS[f.kind]
        w = FaultWindow(f.kind, kind.label(f.params), [g.gw_id for g in gws], _now_ms())
        self.windows.append(w)
        undo = kind.start(f.params, self.site, gws, self.rng, w.detail)
        if f.for_s > 0 and undo is not None:
            def end(w: FaultWindow = w, undo: Undo = undo) -> None:
                undo()
                w.end_ms = _now_ms()
            self.at(f.at_s + f.for_s, end)
        else:
            w.end_ms = w.start_ms
