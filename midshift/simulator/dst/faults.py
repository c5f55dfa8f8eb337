"""The world's fault kinds: each a function of (world, rng) that injects one fault and
schedules its end. ``KINDS`` weighs them; the per-message faults (lost, duplicated and
delayed messages, lost PUBACKs) are in ``World.hop``.

Every fault is counted (``World.fault``) by kind; a fault is only counted when it changes
something (a power cut armed on a gateway that is up, a link taken from up to down).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from midshift.simulator.dst.gateway import PING_TIMEOUT_MS
from midshift.simulator.dst.network import BLACKHOLE, DOWN, UP

if TYPE_CHECKING:
    from midshift.simulator.dst.gateway import SimGateway
    from midshift.simulator.dst.world import World


def _link(world: World, rng: random.Random) -> tuple[SimGateway, str]:
    gw = world.gateways[rng.randrange(len(world.gateways))]
    return gw, gw.uplink_names[rng.randrange(len(gw.uplink_names))]


def _break(world: World, gw: SimGateway, uplink: str, state: str, for_ms: int) -> None:
    if world.calm:
        return  # a flap's later step, after the world healed
    link = gw.links[uplink]
    link.gen += 1
    was = link.state
    link.state = state
    if was == UP and gw.alive:
        notice = world.rng.randrange(20, 300) if state == DOWN else world.rng.randrange(
            PING_TIMEOUT_MS // 2, PING_TIMEOUT_MS * 3 // 2)
        gw.link_broken(uplink, notice)
    world.loop.after(for_ms, _heal, world, gw, uplink, link.gen)


def _heal(world: World, gw: SimGateway, uplink: str, gen: int) -> None:
    link = gw.links[uplink]
    if link.gen == gen:
        link.state = UP


def partition(world: World, rng: random.Random) -> None:
    gw, u = _link(world, rng)
    world.fault("partition")
    _break(world, gw, u, DOWN, rng.randrange(500, 60000))


def blackhole(world: World, rng: random.Random) -> None:
    gw, u = _link(world, rng)
    world.fault("blackhole")
    _break(world, gw, u, BLACKHOLE, rng.randrange(500, 30000))


def flap(world: World, rng: random.Random) -> None:
    """A link that goes down and up several times within seconds."""
    gw, u = _link(world, rng)
    t = 0
    for _ in range(rng.randrange(2, 6)):
        world.fault("flap")
        world.loop.after(t, _break, world, gw, u, DOWN, rng.randrange(50, 1500))
        t += rng.randrange(1600, 4000)


def slow(world: World, rng: random.Random) -> None:
    """Latency and bandwidth of one link turn bad for a while (an LTE cell at the edge)."""
    gw, u = _link(world, rng)
    link = gw.links[u]
    world.fault("slow_link")
    world.loop.after(rng.randrange(2000, 30000), link.fast, link.slow(300, 1500, 5))


def both_links(world: World, rng: random.Random) -> None:
    """Every uplink of one gateway down at once: the backlog waits in the journal."""
    gw = world.gateways[rng.randrange(len(world.gateways))]
    for u in gw.uplink_names:
        world.fault("partition")
        _break(world, gw, u, rng.choice((DOWN, BLACKHOLE)), rng.randrange(2000, 90000))


def power_cut(world: World, rng: random.Random) -> None:
    """Power fails at one of the next few storage calls (a write torn at a byte)."""
    gw = world.gateways[rng.randrange(len(world.gateways))]
    if gw.alive and gw.flash.cut_in_ops is None:
        world.fault("power_cut")
        gw.flash.cut_in_ops = rng.randrange(1, 60)


def clock_jump(world: World, rng: random.Random) -> None:
    gw = world.gateways[rng.randrange(len(world.gateways))]
    world.fault("clock_jump")
    gw.offset_ms += rng.choice((-1, 1)) * rng.randrange(1000, 3_600_000)


def clock_drift(world: World, rng: random.Random) -> None:
    gw = world.gateways[rng.randrange(len(world.gateways))]
    world.fault("clock_drift")
    gw.drift_ppm = rng.randrange(-5000, 5001)


def broker_crash(world: World, rng: random.Random) -> None:
    if world.broker.alive:
        world.fault("broker_crash")
        world.broker.crash()
        world.loop.after(rng.randrange(500, 10000), world.restart_broker)


def ledger_crash(world: World, rng: random.Random) -> None:
    if world.ledger.alive:
        world.fault("ledger_crash")
        world.ledger.crash()
        world.loop.after(rng.randrange(200, 10000), world.ledger.restart)


def device_burst(world: World, rng: random.Random) -> None:
    gw = world.gateways[rng.randrange(len(world.gateways))]
    world.fault("device_burst")
    gw.device_burst(rng.randrange(10, 120))


KINDS = ((partition, 6), (blackhole, 5), (flap, 4), (slow, 3), (both_links, 2),
         (power_cut, 8), (clock_jump, 3), (clock_drift, 1), (broker_crash, 1),
         (ledger_crash, 2), (device_burst, 3))
