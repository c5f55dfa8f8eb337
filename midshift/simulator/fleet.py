"""A fleet of virtual gateways speaking the wire format, for loading the ledger.

``Fleet`` plays N gateways, each with its own HMAC key, journal epoch and seq counter, the
way the agent's forwarder does: batches of up to ``batch_events`` records, at most
``window`` unacknowledged batches per gateway (the per-gateway drain cap; optionally also
``drain_events_per_s`` per gateway as a token bucket, as the agent's ``drain_rate``), a
batch resent when its ack has not come within ``ack_timeout_s``, the journal advanced only
by the ledger's ack. Each gateway starts with ``backlog`` events already journaled
(pre-encoded before the clock starts, so the generator spends its CPU on sending, not on
JSON) and may produce ``rate_per_s`` more (fleet total) for ``live_s`` seconds.

Reconnect storm: every gateway comes back at once after a shared outage; each starts
after its own random delay in ``[0, jitter_s)``, as the agent's jittered reconnect does.
``run()`` returns when every event has been acknowledged (or at ``timeout_s``) with the
time that took: ``drain_s``.

What it does not model: one MQTT connection per gateway. Gateways share ``connections``
client connections (gateway ``i`` on connection ``i % connections``), each publishing to
its gateways' own topics and subscribed to their ack topics, so a test can run thousands
of gateways without thousands of threads; the broker sees ``connections`` sessions.
No journal, no flash, no uplink failover: for those, run real agents beside it.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from midshift.firmware.core import topics
from midshift.firmware.core.broker_url import parse_broker_url
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, WireError, decode_ack, encode_batch
from midshift.firmware.edges import paho_client


@dataclass
class _Gateway:
    name: str
    key: bytes
    signer: Signer
    epoch: int
    start_at: float = 0.0  # monotonic time its reconnect delay ends
    next_seq: int = 1
    queued: list[tuple[int, int, bytes]] = field(default_factory=list)  # (first, n, bytes)
    live: list[tuple[int, int, int, bytes]] = field(default_factory=list)  # records not sent
    inflight: dict[int, tuple[int, float, bytes]] = field(default_factory=dict)  # first -> n
    tokens: float = 0.0
    last_fill: float = 0.0
    acked: int = 0


def _body(gw: str, seq: int, read_ms: int) -> bytes:
    # The agent's body shape (midshift/firmware/core/event.py), built without json for speed.
    return (b'{"v":1,"src":"%s/scanner","k":"scan","t":%d,"d":{"code":"%013d"}}'
            % (gw.encode(), read_ms, seq))


class Fleet:
    def __init__(self, broker_url: str, gateways: int, backlog: int = 0,
                 batch_events: int = 500, window: int = 8, rate_per_s: float = 0.0,
                 live_s: float = 0.0, jitter_s: float = 0.0,
                 drain_events_per_s: float | None = None, ack_timeout_s: float = 5.0,
                 connections: int | None = None, site: str = "fleet", prefix: str = "vgw",
                 seed: int = 1, compress: bool = False) -> None:
        self.host, self.port, _ = parse_broker_url(broker_url, tls=False)
        if gateways < 1 or batch_events < 1 or window < 1:
            raise ValueError("gateways, batch_events and window must be 1 or more")
        self.site, self.batch_events, self.window = site, batch_events, window
        self.backlog, self.rate_per_s, self.live_s = backlog, rate_per_s, live_s
        self.jitter_s, self.drain_rate = jitter_s, drain_events_per_s
        self.ack_timeout_s = ack_timeout_s
        self.compress = zlib.compress if compress else None
        rnd = random.Random(seed)
        self._rnd = rnd
        self.gateways = [self._make_gateway(f"{prefix}-{i:05d}", rnd) for i in range(gateways)]
        self.by_name = {g.name: g for g in self.gateways}
        self.connections = min(connections or min(gateways, 32), gateways)
        self.counters = {"batches": 0, "resends": 0, "acks": 0, "rejected_acks": 0,
                         "max_inflight_per_gateway": 0}
        self.backlog_batches: list[tuple[str, bytes]] = []  # (gateway, batch) as prepared
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._expected = 0
        self._acked = 0

    @staticmethod
    def _make_gateway(name: str, rnd: random.Random) -> _Gateway:
        key = rnd.randbytes(32)
        return _Gateway(name, key, Signer(key), rnd.getrandbits(64))

    def keys(self) -> dict[str, bytes]:
        """The key registry the ledger needs for this fleet."""
        return {g.name: g.key for g in self.gateways}

    def keys_toml(self) -> str:
        return "[gateways]\n" + "".join(f'"{g.name}" = "{g.key.hex()}"\n'
                                         for g in self.gateways)

    def expected(self) -> dict[str, tuple[str, int]]:
        """Per gateway: (epoch as the ledger stores it, highest seq sent)."""
        return {g.name: (f"{g.epoch:016x}", g.next_seq - 1) for g in self.gateways}

    def topic(self, g: _Gateway, leaf: str) -> str:
        return topics.topic(self.site, g.name, leaf)

    # -- preparing ------------------------------------------------------------------------
    def _records(self, g: _Gateway, n: int, now_ms: int) -> list[tuple[int, int, int, bytes]]:
        out = []
        for _ in range(n):
            s = g.next_seq
            out.append((s, 0, (now_ms << 16) | (s & 0xFFFF), _body(g.name, s, now_ms)))
            g.next_seq += 1
        return out

    def _encode(self, g: _Gateway, recs: list[tuple[int, int, int, bytes]]) -> tuple[int, int, bytes]:
        data = encode_batch(g.signer, Batch(g.name, g.epoch, recs, int(time.time() * 1000)),
                            self.compress)
        return recs[0][0], len(recs), data

    def prepare(self) -> Fleet:
        """Journal and encode every gateway's backlog (not timed by ``run``)."""
        now_ms = int(time.time() * 1000)
        for g in self.gateways:
            left = self.backlog
            while left > 0:
                n = min(left, self.batch_events)
                g.queued.append(self._encode(g, self._records(g, n, now_ms)))
                self.backlog_batches.append((g.name, g.queued[-1][2]))
                left -= n
        self._expected = self.backlog * len(self.gateways)
        return self

    # -- running ----------------------------------------------------------------------------
    def run(self, timeout_s: float = 120.0) -> dict[str, Any]:
        if self._expected == 0 and self.backlog:
            self.prepare()
        clients = self._connect_all(timeout_s=min(30.0, timeout_s))
        t0 = time.monotonic()
        for g in self.gateways:  # the storm: all back at once, each after its own delay
            g.start_at = t0 + self._rnd.random() * self.jitter_s
            g.last_fill = g.start_at
        live_events = int(self.rate_per_s * self.live_s)
        with self._lock:
            self._expected += live_events
        producer = threading.Thread(target=self._produce, args=(t0, live_events),
                                    daemon=True, name="fleet-producer")
        producer.start()
        deadline = t0 + timeout_s
        while not self._done.is_set() and time.monotonic() < deadline:  # bounded
            self._pump_all(clients)
            self._done.wait(0.02)  # a sweep for delays, drain caps and resends; acks
            # pump their own gateway at once
        drain_s = time.monotonic() - t0
        producer.join(5)
        for c in clients:
            c.disconnect()
            c.loop_stop()
        sent = sum(g.next_seq - 1 for g in self.gateways)
        return {"gateways": len(self.gateways), "connections": len(clients),
                "events": sent, "acked_events": self._acked, "drained": self._done.is_set(),
                "drain_s": round(drain_s, 3),
                "events_per_s": round(self._acked / drain_s, 1) if drain_s else None,
                **self.counters}

    def _connect_all(self, timeout_s: float) -> list[mqtt.Client]:
        subscribed = threading.Semaphore(0)
        clients = []
        for i in range(self.connections):
            mine = self.gateways[i::self.connections]
            c = paho_client.new_client(client_id=f"fleet-{self.site}-{i}",
                                       protocol=mqtt.MQTTv311, clean_session=True)
            c.max_inflight_messages_set(0)  # 0: unlimited; the per-gateway window caps it
            c.max_queued_messages_set(0)
            c.user_data_set(mine)
            c.on_connect = self._on_connect
            c.on_subscribe = lambda *a: subscribed.release()
            c.on_message = self._on_ack
            c.connect_async(self.host, self.port, keepalive=30)
            c.loop_start()
            clients.append(c)
        deadline = time.monotonic() + timeout_s
        for _ in clients:  # one SUBACK per connection before the clock starts
            if not subscribed.acquire(timeout=max(0.0, deadline - time.monotonic())):
                for c in clients:
                    c.loop_stop()
                raise RuntimeError(f"fleet: not every connection subscribed at {self.host}:"
                                   f"{self.port} within {timeout_s} s")
        return clients

    def _on_connect(self, client: mqtt.Client, mine: list[_Gateway], flags: Any,
                    reason: Any, props: Any = None) -> None:
        if not reason.is_failure:
            client.subscribe([(self.topic(g, "ack"), 1) for g in mine])
            # a reconnect: whatever was in flight goes again (the ledger absorbs repeats)
            with self._lock:
                for g in mine:
                    for first, (n, _, data) in g.inflight.items():
                        g.inflight[first] = (n, 0.0, data)

    def _on_ack(self, client: mqtt.Client, mine: list[_Gateway], msg: mqtt.MQTTMessage) -> None:
        where = topics.split(msg.topic)
        g = self.by_name.get(where[1]) if where else None
        try:
            if g is None:
                raise WireError("bad_ack", "an ack for no gateway of this fleet")
            _, first, _, _, status = decode_ack(msg.payload, g.signer)
        except WireError:
            with self._lock:
                self.counters["bad_acks"] = self.counters.get("bad_acks", 0) + 1
            return
        with self._lock:
            if status == "resend":  # the ledger lost what was sent before it subscribed
                self.counters["resend_asked"] = self.counters.get("resend_asked", 0) + 1
                for f, (n, _, data) in g.inflight.items():  # type: ignore[union-attr]
                    g.inflight[f] = (n, 0.0, data)  # type: ignore[union-attr]
                return
            self.counters["acks"] += 1
            if g is None or status != "ok":
                self.counters["rejected_acks"] += 1
                return
            entry = g.inflight.pop(first, None)
            if entry is None:
                return  # an ack for a resend already acknowledged
            g.acked += entry[0]
            self._acked += entry[0]
            if self._acked >= self._expected and not self._producing:
                self._done.set()
        self._pump(client, g)

    _producing = True

    def _produce(self, t0: float, total: int) -> None:
        """Live events, spread over the gateways, ``rate_per_s`` in all for ``live_s``."""
        made = 0
        gws = self.gateways
        while made < total and time.monotonic() - t0 < self.live_s + 5:  # bounded
            due = min(total, int((time.monotonic() - t0) * self.rate_per_s))
            now_ms = int(time.time() * 1000)
            with self._lock:
                while made < due:
                    g = gws[made % len(gws)]
                    g.live += self._records(g, 1, now_ms)
                    made += 1
            time.sleep(0.01)  # pacing the producer (not a synchronisation)
        with self._lock:
            self._producing = False
            if self._acked >= self._expected:
                self._done.set()

    def _pump_all(self, clients: list[mqtt.Client]) -> None:
        for i, c in enumerate(clients):
            for g in self.gateways[i::self.connections]:
                self._pump(c, g)

    def _pump(self, client: mqtt.Client, g: _Gateway) -> None:
        """Send what the window, the drain cap and the reconnect delay allow; resend what
        has waited past the ack timeout."""
        now = time.monotonic()
        if now < g.start_at:
            return
        out = []
        with self._lock:
            for first, (n, sent_at, data) in list(g.inflight.items()):
                if now - sent_at > self.ack_timeout_s:
                    g.inflight[first] = (n, now, data)
                    out.append(data)
                    self.counters["resends"] += 1
            if self.drain_rate:
                g.tokens = min(self.drain_rate, g.tokens + (now - g.last_fill) * self.drain_rate)
                g.last_fill = now
            while len(g.inflight) < self.window and (g.queued or g.live):
                if not g.queued:
                    recs, g.live = g.live[:self.batch_events], g.live[self.batch_events:]
                    g.queued.append(self._encode(g, recs))
                first, n, data = g.queued[0]
                if self.drain_rate and g.tokens < n and g.inflight:
                    break  # over this gateway's drain cap for now
                g.queued.pop(0)
                g.tokens -= n if self.drain_rate else 0
                g.inflight[first] = (n, now, data)
                out.append(data)
                self.counters["batches"] += 1
            if len(g.inflight) > self.counters["max_inflight_per_gateway"]:
                self.counters["max_inflight_per_gateway"] = len(g.inflight)
        for data in out:
            client.publish(self.topic(g, "events"), data, qos=1)

