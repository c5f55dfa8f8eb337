"""The simulated world between gateways and ledger: uplinks and an MQTT broker (QoS 1).

A ``Link`` is one uplink of one gateway: ``UP``, ``DOWN`` (connections refused or reset,
noticed within a fraction of a second) or ``BLACKHOLE`` (packets vanish; noticed only when
a ping times out), with latency, jitter and bandwidth. The ``Broker`` keeps, as mosquitto
does for persistent sessions: a queue for the ledger's subscription (capped, like
``max_queued_messages``), the ledger's deliveries awaiting its PUBACK (redelivered when it
reconnects: duplicates), and acks held for a gateway's uplink that is not connected.
Every hop can lose, duplicate or delay its message (``World.hop``); a PUBACK can be lost,
so the client sends its PUBLISH again. A broker crash drops every connection and loses
what it had not yet persisted (each queued or held message, with even odds).

Not modelled: TCP itself (a lost message stands for a connection hiccup the client
recovered from), QoS 2, retained messages and the status topic, last wills, MQTT 5
shared subscriptions (one ledger worker), TLS, the broker's ACL.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from midshift.simulator.dst.world import World

UP = "up"
DOWN = "down"
BLACKHOLE = "blackhole"
LEDGER_QUEUE_MAX = 1000  # mosquitto's max_queued_messages default
HELD_MAX = 100  # acks held per disconnected gateway uplink


class Link:
    __slots__ = ("name", "state", "latency_ms", "jitter_ms", "bytes_per_ms", "gen", "base",
                 "slow_gen")

    def __init__(self, name: str, latency_ms: int, jitter_ms: int, bytes_per_ms: int) -> None:
        self.name = name
        self.state = UP
        self.base = (latency_ms, jitter_ms, bytes_per_ms)
        self.latency_ms, self.jitter_ms, self.bytes_per_ms = self.base
        self.gen = 0  # bumped by every fault, so a stale heal does not undo a newer fault
        self.slow_gen = 0  # likewise for slowdowns, which overlap

    def slow(self, latency_ms: int, jitter_ms: int, bytes_per_ms: int) -> int:
        self.slow_gen += 1
        self.latency_ms, self.jitter_ms, self.bytes_per_ms = latency_ms, jitter_ms, bytes_per_ms
        return self.slow_gen

    def fast(self, gen: int | None = None) -> None:
        """Back to the link's own quality (``gen``: only if no later slowdown began)."""
        if gen is None or gen == self.slow_gen:
            self.latency_ms, self.jitter_ms, self.bytes_per_ms = self.base

    def delay(self, rng: Any, nbytes: int) -> int:
        return self.latency_ms + rng.randrange(self.jitter_ms + 1) + nbytes // self.bytes_per_ms


class Broker:
    def __init__(self, world: World) -> None:
        self.world = world
        self.alive = True
        self.conns: dict[tuple[str, str], int] = {}  # (gateway, uplink) -> that gateway's life
        self.held: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        self.queue: deque[tuple[int, str, bytes]] = deque()  # for the ledger, not delivered
        self.unacked: dict[int, tuple[str, bytes]] = {}  # delivered to the ledger, no PUBACK
        self.ledger_connected = False
        self._mid = 0

    # ---- gateways ----------------------------------------------------------------------

    def connect(self, gid: str, uplink: str, life: int) -> bool:
        if not self.alive:
            return False
        key = (gid, uplink)
        self.conns[key] = life
        held = self.held.pop(key, None)
        if held:
            gw = self.world.gateways_by_id[gid]
            for topic, payload in held:
                gw.deliver(life, uplink, topic, payload)
        return True

    def disconnect(self, gid: str, uplink: str) -> None:
        self.conns.pop((gid, uplink), None)

    def on_publish(self, gid: str, uplink: str, life: int, mid: int, topic: str,
                   payload: bytes) -> None:
        """A gateway's PUBLISH arrived: queue it for the ledger, PUBACK the client."""
        if not self.alive:
            return
        self._to_ledger(topic, payload)
        if self.conns.get((gid, uplink)) == life:
            self.world.gateways_by_id[gid].puback(life, uplink, mid)

    # ---- the ledger --------------------------------------------------------------------

    def _to_ledger(self, topic: str, payload: bytes) -> None:
        self._mid += 1
        if self.ledger_connected:
            self.unacked[self._mid] = (topic, payload)
            self.world.ledger_hop(self.world.ledger.on_deliver, self._mid, topic, payload)
        elif len(self.queue) < LEDGER_QUEUE_MAX:
            self.queue.append((self._mid, topic, payload))
        else:
            self.world.count("broker_queue_full")

    def ledger_connect(self) -> bool:
        if not self.alive:
            return False
        self.ledger_connected = True
        ledger = self.world.ledger
        for mid, (topic, payload) in list(self.unacked.items()):  # redelivered: duplicates
            self.world.ledger_hop(ledger.on_deliver, mid, topic, payload)
        while self.queue:
            mid, topic, payload = self.queue.popleft()
            self.unacked[mid] = (topic, payload)
            self.world.ledger_hop(ledger.on_deliver, mid, topic, payload)
        return True

    def ledger_disconnect(self) -> None:
        self.ledger_connected = False

    def ledger_puback(self, mid: int) -> None:
        if self.alive:
            self.unacked.pop(mid, None)

    def on_ack(self, topic: str, payload: bytes) -> None:
        """The ledger published an ack: to each of the gateway's uplinks, or held."""
        if not self.alive:
            return
        gid = topic.split("/")[3]
        gw = self.world.gateways_by_id[gid]
        for uplink in gw.uplink_names:
            key = (gid, uplink)
            life = self.conns.get(key)
            if life is not None:
                gw.deliver(life, uplink, topic, payload)
            else:
                held = self.held.setdefault(key, [])
                if len(held) < HELD_MAX:
                    held.append((topic, payload))

    # ---- faults ------------------------------------------------------------------------

    def crash(self) -> None:
        """Every connection drops; each message not yet persisted is lost (even odds)."""
        rng = self.world.rng
        self.alive = False
        for (gid, uplink), life in list(self.conns.items()):
            self.world.gateways_by_id[gid].broker_lost(life, uplink)
        self.conns.clear()
        self.ledger_connected = False
        self.world.ledger.broker_lost()
        self.queue = deque(m for m in self.queue if rng.random() < 0.5)
        self.unacked = {k: v for k, v in self.unacked.items() if rng.random() < 0.5}
        for key in list(self.held):
            self.held[key] = [m for m in self.held[key] if rng.random() < 0.5]

    def restart(self) -> None:
        self.alive = True


