"""One seeded run: build the fleet, inject faults for ``fault_s``, heal, check recovery.

``run_seed(seed, config)`` returns a ``Result``; the same seed and config give the same
run, event for event (``trace_hash``). The run has two phases:

1. faults (``Config.fault_s`` simulated seconds): devices produce bursts, the world
   injects faults (``faults.KINDS``) and every message hop may be lost, duplicated or
   delayed (``Config.hop_fault``);
2. healed: every link up, broker and ledger running, no more faults or device events.
   Every durable record must reach the ledger within ``Config.recovery_bound_s``.

The oracle checks the invariants throughout; the first violation ends the run.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from midshift.simulator.dst import faults
from midshift.simulator.dst.gateway import SimGateway
from midshift.simulator.dst.ledger import SimLedger
from midshift.simulator.dst.loop import EventLoop
from midshift.simulator.dst.network import UP, Broker
from midshift.simulator.dst.oracle import Oracle, Violation

LEDGER_HOP_MS = 1  # broker and ledger share a host


class Config:
    def __init__(self, gateways: int = 3, uplinks: int = 2, fault_s: float = 120.0,
                 recovery_bound_s: float = 60.0, hop_fault: float = 0.5,
                 fault_every_ms: int = 700, burst_every_ms: int = 1500) -> None:
        if gateways < 1 or not 2 <= uplinks <= 3:
            raise ValueError("a run needs at least 1 gateway and 2 or 3 uplinks each")
        self.gateways = gateways
        self.uplinks = uplinks
        self.fault_s = fault_s
        self.recovery_bound_s = recovery_bound_s
        self.hop_fault = hop_fault  # chance that a message hop is lost, doubled or delayed
        self.fault_every_ms = fault_every_ms  # mean time between world faults, whole fleet
        self.burst_every_ms = burst_every_ms  # mean time between device bursts, per gateway

    def describe(self) -> dict[str, Any]:
        return dict(vars(self))


class Result:
    def __init__(self, seed: int, violation: Violation | None, world: World,
                 wall_s: float) -> None:
        self.seed = seed
        self.violation = violation
        self.ok = violation is None
        self.events = world.loop.events
        self.faults = world.faults_total
        self.fault_kinds = dict(sorted(world.fault_kinds.items()))
        self.sim_s = world.loop.now_ms / 1000.0
        self.wall_s = wall_s
        self.recovery_s = world.recovery_s
        self.trace = world.trace
        self.trace_hash = world.trace_hash()
        self.stored = len(world.ledger.store.rows)

    def summary(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": self.ok,
                "violation": None if self.violation is None else str(self.violation),
                "events": self.events, "faults": self.faults, "sim_s": round(self.sim_s, 1),
                "wall_s": round(self.wall_s, 3), "stored": self.stored,
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 1),
                "trace_hash": self.trace_hash}


class World:
    def __init__(self, seed: int, config: Config, trace: bool = False,
                 schedule: list[tuple[int, str]] | None = None) -> None:
        """``schedule``: the world's faults as (ms, kind name) instead of drawn from the
        seed (``shrink.py`` hands Hypothesis this to make smaller)."""
        self.seed = seed
        self.config = config
        self.schedule = schedule
        self.rng = random.Random(seed)
        self.loop = EventLoop()
        self.trace: list[str] | None = [] if trace else None
        self._hash = hashlib.sha256()
        self.faults_total = 0
        self.fault_kinds: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.calm = False
        self.recovery_s: float | None = None
        self._mid = 0
        self.oracle = Oracle(self)
        self.broker = Broker(self)
        rng = self.rng
        keys = {}
        self.gateways: list[SimGateway] = []
        self.gateways_by_id: dict[str, SimGateway] = {}
        for i in range(config.gateways):
            gid = f"gw-{i + 1:03d}"
            keys[gid] = rng.randbytes(32)
            self.oracle.add_gateway(gid)
        self.ledger = SimLedger(self, keys)
        self.broker.ledger_connect()
        for gid, key in keys.items():
            gw = SimGateway(self, gid, key, rng)
            self.gateways.append(gw)
            self.gateways_by_id[gid] = gw
        self._weights = [w for _, w in faults.KINDS]
        self._kinds = [k for k, _ in faults.KINDS]

    # ---- bookkeeping -------------------------------------------------------------------

    def note(self, fmt: str, *args: Any) -> None:
        if self.trace is not None:
            line = f"{self.loop.now_ms:9d} " + fmt % args
            self.trace.append(line)
            self._hash.update(line.encode() + b"\n")

    def trace_hash(self) -> str | None:
        return self._hash.hexdigest()[:16] if self.trace is not None else None

    def fault(self, kind: str) -> None:
        self.faults_total += 1
        self.fault_kinds[kind] = self.fault_kinds.get(kind, 0) + 1
        if self.trace is not None:
            self.note("fault %s", kind)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def next_mid(self) -> int:
        self._mid += 1
        return self._mid

    def ledger_wall_ms(self) -> int:
        return 1_767_225_600_000 + self.loop.now_ms

    # ---- message hops ------------------------------------------------------------------

    def hop(self, delay_ms: int, what: str) -> tuple[int, ...]:
        """When copies of a message arrive: () lost, (d,) once, (d1, d2) duplicated."""
        rng = self.rng
        if self.calm or rng.random() >= self.config.hop_fault:
            return (delay_ms,)
        r = rng.random()
        if r < 0.3:
            self.fault(what + "_lost")
            return ()
        if r < 0.6:
            self.fault(what + "_duplicated")
            return (delay_ms, delay_ms + rng.randrange(1, 3000))
        self.fault(what + "_delayed")
        return (delay_ms + rng.randrange(100, 8000),)

    def ledger_hop(self, fn: Callable[..., Any], *args: Any) -> None:
        for d in self.hop(LEDGER_HOP_MS, "ledger"):
            self.loop.after(d, fn, *args)

    def restart_broker(self) -> None:
        if self.broker.alive:
            return
        self.broker.restart()
        self.ledger.reconnect()

    # ---- the run -----------------------------------------------------------------------

    def _next_fault(self) -> None:
        if self.calm:
            return
        kind = self.rng.choices(self._kinds, self._weights)[0]
        kind(self, self.rng)
        self.loop.after(int(self.rng.expovariate(1.0 / self.config.fault_every_ms)) + 1,
                        self._next_fault)

    def _next_burst(self, gw: SimGateway) -> None:
        if self.calm:
            return
        gw.device_burst(self.rng.randrange(1, gw.burst_max + 1))
        self.loop.after(int(self.rng.expovariate(1.0 / self.config.burst_every_ms)) + 1,
                        self._next_burst, gw)

    def _heal(self) -> None:
        self.calm = True
        self.note("world heals")
        for gw in self.gateways:
            gw.flash.cut_in_ops = None
            for link in gw.links.values():
                link.gen += 1
                link.state = UP
                link.fast()
        if not self.broker.alive:
            self.restart_broker()
        if not self.ledger.alive:
            self.ledger.restart()

    def run(self) -> Violation | None:
        cfg = self.config
        fault_ms = int(cfg.fault_s * 1000)
        bound_ms = int(cfg.recovery_bound_s * 1000)
        if self.schedule is None:
            self.loop.after(1, self._next_fault)
        else:
            by_name = {k.__name__: k for k in self._kinds}
            for at_ms, name in self.schedule:
                self.loop.at(min(at_ms, fault_ms - 1), by_name[name], self, self.rng)
        for gw in self.gateways:
            self.loop.after(self.rng.randrange(1, 1000), self._next_burst, gw)
        self.loop.at(fault_ms, self._heal)
        oracle = self.oracle
        try:
            self.loop.run_until(fault_ms, lambda: False)
            # Healed: run until every durable record is in the ledger, or the bound passes.
            self.loop.run_until(fault_ms + bound_ms, lambda: oracle.missing == 0 and all(
                gw.alive and not gw.unsynced for gw in self.gateways))
            if oracle.missing or not all(gw.alive for gw in self.gateways):
                lacking = oracle.undelivered()
                first = ", ".join(f"{gid} seq {seq}" for gid, seq in lacking[:3])
                oracle.fail("not_recovered", f"{oracle.missing} durable records not in the "
                            f"ledger {cfg.recovery_bound_s:g} s after the world healed "
                            f"(first: {first})")
            self.recovery_s = (self.loop.now_ms - fault_ms) / 1000.0
            self.note("recovered in %.1f s; ledger holds %d records", self.recovery_s,
                      len(self.ledger.store.rows))
        except Violation as exc:
            return exc
        return None


def run_seed(seed: int, config: Config | None = None, trace: bool = False,
             schedule: list[tuple[int, str]] | None = None) -> Result:
    t0 = time.perf_counter()
    world = World(seed, config or Config(), trace, schedule)
    violation = world.run()
    return Result(seed, violation, world, time.perf_counter() - t0)
