"""A simulated gateway: the production core driven by the event heap, a third thin loop
around the link session beside ``midshift/firmware/forwarding.py`` and ``midshift/firmware/mpy/node.py``.

Per gateway: ``SimFlash`` (the crash-simulating storage) under the core ``Journal``, the
``HybridLogicalClock`` on a wall clock that drifts and jumps, the ``Pipeline`` for device
events, and a ``LinkSession`` over two or more uplinks. The edge parts are simulated: one
MQTT client per uplink (PUBLISH kept until PUBACK, sent again after ``RETRY_MS`` and on
reconnect), health detection (a reset is noticed at once, a blackhole after a ping
timeout), reconnect attempts, and the group commit (a flush ``FLUSH_MS`` after the first
append). A power cut can hit any storage call: everything in RAM is gone, the gateway boots
again from what the flash holds.

Not carried out: status publishes, incidents (``Incident``: telemetry the journal may
drop, which would blur the exactly-once check), commands, notes (the sync log).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from midshift.firmware.core import record as rec
from midshift.firmware.core import session as s
from midshift.firmware.core.crash_storage import PowerCut
from midshift.firmware.core.errors import JournalFull
from midshift.firmware.core.event import Event
from midshift.firmware.core.hlc import HybridLogicalClock
from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.pipeline import Pipeline
from midshift.firmware.core.signing import Signer
from midshift.simulator.dst.flash import SimFlash
from midshift.simulator.dst.network import UP, Link

if TYPE_CHECKING:
    from midshift.simulator.dst.world import World

SITE = "dst"
BASE_WALL_MS = 1_767_225_600_000  # 2026-01-01, a plausible read time for the pipeline
FLUSH_MS = 10  # group commit window
RETRY_MS = 2000  # an MQTT client sends a PUBLISH again when no PUBACK came
MAX_ATTEMPTS = 3
OUTBOX_MAX = 32  # PUBLISHes awaiting PUBACK per client; beyond, publish is refused
RECONNECT_MS = 1000
PING_TIMEOUT_MS = 2500  # a blackholed link is noticed about this late
SEGMENT = 4096
SEGMENTS_MAX = 8  # journals of 3 to 8 segments (about 100 to 250 records): outages fill them
BATCH_SIZES = (2, 5, 20, 100)  # max_events, one per gateway
BURST_MAX = (4, 4, 30)  # scans per device burst at most, one per gateway: quiet or busy


class Client:
    __slots__ = ("connected", "outbox", "connecting")

    def __init__(self) -> None:
        self.connected = False
        self.connecting = False
        self.outbox: dict[int, list[Any]] = {}  # mid -> [topic, payload, attempts]


class SimGateway:
    def __init__(self, world: World, gid: str, key: bytes, rng: random.Random) -> None:
        self.world = world
        self.gid = gid
        self.key = key
        self.signer = Signer(key)
        self.uplink_names = ["eth", "lte", "wifi"][:world.config.uplinks]
        self.links = {u: Link(u, rng.randrange(2, 40), rng.randrange(1, 20),
                              rng.choice((50, 200, 1000))) for u in self.uplink_names}
        self.segments = rng.randrange(3, SEGMENTS_MAX + 1)
        self.window = rng.choice((2, 4, 8))
        self.max_events = rng.choice(BATCH_SIZES)
        self.burst_max = rng.choice(BURST_MAX)
        self.ack_timeout_ms = rng.choice((1000, 3000, 5000))
        self.hold_ms = rng.choice((2000, 10000, 30000))
        self.flash = SimFlash(storage_size(SEGMENT, self.segments), rng)
        self.ring_records = SEGMENT * self.segments // rec.HEADER_SIZE  # at most, empty bodies
        self.epoch = rng.randrange(1, 1 << 64)
        Journal.format(self.flash, SEGMENT, self.epoch, gid, BASE_WALL_MS)
        self.drift_ppm = rng.randrange(-200, 201)
        self.offset_ms = rng.randrange(-2000, 2001)
        self.alive = False
        self.life = 0
        self.code = 0  # device event counter (scanned codes)
        self.counters = {"power_cuts": 0, "journal_full": 0, "boots": 0}
        self.journal: Any = None
        self.session: Any = None
        self.unsynced: dict[int, bytes] = {}  # appended, not yet reported durable
        self.lost: dict[bytes, int] = {}  # bodies of unsynced appends a power cut took
        self.cut = False
        self._dispatch = {s.Publish: self._publish, s.Commit: self._commit,
                          s.Observe: self._observe}
        self.boot()

    # ---- clocks ------------------------------------------------------------------------

    def wall_ms(self) -> int:
        now = self.world.loop.now_ms
        return BASE_WALL_MS + now + now * self.drift_ppm // 1_000_000 + self.offset_ms

    # ---- life --------------------------------------------------------------------------

    def boot(self) -> None:
        world = self.world
        if self.cut:
            self.flash = SimFlash(self.flash.size(), world.rng, self.flash.image_after_cut())
            self.cut = False
            if not world.calm and world.rng.random() < 0.2:
                world.fault("power_cut_in_recovery")
                self.flash.cut_in_ops = world.rng.randrange(1, 40)
        try:
            j = Journal.open(self.flash)
        except PowerCut:
            self._die()
            return
        except Exception as exc:  # noqa: BLE001 - any other failure to open is a finding
            world.oracle.fail("journal_unopenable", f"{self.gid}: {type(exc).__name__}: {exc}")
            return
        self._recovered(j)
        self.life += 1
        self.alive = True
        self.counters["boots"] += 1
        self.journal = j
        self.hlc = HybridLogicalClock(self.wall_ms, j.last_hlc)
        self.pipeline = Pipeline({"scanner": "txn"}, j.max_body)
        now = world.loop.now_ms
        self.session = s.LinkSession(
            j, SITE, self.gid, self.signer, self.uplink_names, now, hold_ms=self.hold_ms,
            max_events=self.max_events, linger_ms=5, window=self.window,
            ack_timeout_ms=self.ack_timeout_ms, status_period_ms=1 << 40)
        self.clients = {u: Client() for u in self.uplink_names}
        self.timer_at: int | None = None
        self.flush_due = False
        world.note("%s boot life=%d durable=%d tail=%d", self.gid, self.life, j.durable_seq,
                   j.tail_seq)
        for u in self.uplink_names:
            self._try_connect(self.life, u)

    def _recovered(self, j: Journal) -> None:
        """Every record reported durable and not yet committed must read back as it was
        journaled; records past that are unsynced appends that survived the cut (then
        durable), with the bodies appended under their seqs."""
        world = self.world
        oracle = world.oracle
        known = oracle.durable_seq[self.gid]
        oracle.on_boot(self.gid, j.epoch, j.durable_seq, j.tail_seq)
        armed, self.flash.cut_in_ops = self.flash.cut_in_ops, None  # the oracle's own read
        found = [(r.seq, bytes(r.body)) for r in j.records()]
        self.flash.cut_in_ops = armed
        durable = oracle.durable[self.gid]
        expect = j.tail_seq
        for seq, body in found:
            for gap in range(expect, seq):  # a torn unsynced record kept its successors
                if (j.epoch, gap) in durable:
                    oracle.fail("durable_lost", f"{self.gid} lost seq {gap} in a power cut "
                                f"after reporting it durable (the journal counts "
                                f"{j.lost_to_damage} lost to damage)")
                world.count("unsynced_gap")
            want = durable.get((j.epoch, seq)) if seq <= known else self.unsynced.get(seq)
            if want != body and body in self.lost:
                oracle.fail("ghost_record", f"{self.gid} recovered seq {seq} holding the record "
                            f"appended as seq {self.lost[body]} before an earlier power cut "
                            "(tests/unit/test_journal_ghost_resync.py)")
            if want != body:
                oracle.fail("seq_reused", f"{self.gid} recovered seq {seq} with a body that "
                            "was never journaled under that seq")
            expect = seq + 1
        if known >= j.tail_seq and expect <= known:
            oracle.fail("durable_lost", f"{self.gid} reads back to seq {expect - 1} after a "
                        f"power cut, but seq {known} was reported durable")
        oracle.on_durable(self.gid, j.epoch, [(q, b) for q, b in found if q > known])
        kept = {b for q, b in found if q > known}
        for seq, body in self.unsynced.items():
            if body not in kept:
                self.lost[body] = seq
        self.unsynced = {}

    def _die(self) -> None:
        """Power is gone: RAM, connections and timers with it; boot again later."""
        world = self.world
        self.alive = False
        self.cut = True
        self.counters["power_cuts"] += 1
        self.life += 1
        for u in self.uplink_names:
            world.broker.disconnect(self.gid, u)
        self.flash.cut_in_ops = None
        world.note("%s power cut", self.gid)
        world.loop.after(world.rng.randrange(100, 3000), self.boot)

    def guarded(self, fn: Any, *args: Any) -> None:
        """Run one handler; a power cut anywhere inside it kills the gateway."""
        try:
            fn(*args)
        except PowerCut:
            self._die()

    # ---- devices and the group commit --------------------------------------------------

    def device_burst(self, n: int) -> None:
        if not self.alive:
            return
        self.guarded(self._burst, n)

    def _burst(self, n: int) -> None:
        j = self.journal
        wall = self.wall_ms()
        for _ in range(n):
            self.code += 1
            # A UPC-A (12 digits): never taken for a card number, so bodies are unique.
            body, cls = self.pipeline.prepare(Event("scanner", "scan", wall,
                                                    {"code": f"{self.code:012d}"}))
            try:
                seq = j.append(body, cls, self.hlc.now())
            except JournalFull:
                self.counters["journal_full"] += 1  # the device is told no: not durable
                continue
            self.unsynced[seq] = body
        if not self.flush_due and self.unsynced:
            self.flush_due = True
            self.world.loop.after(FLUSH_MS, self._flush_timer, self.life)

    def _flush_timer(self, life: int) -> None:
        if life != self.life:
            return
        self.flush_due = False
        self.guarded(self._flush)

    def _flush(self) -> None:
        j = self.journal
        j.flush()
        if self.unsynced:
            self.world.oracle.on_durable(self.gid, j.epoch, list(self.unsynced.items()))
            self.unsynced = {}
        self._poll()

    # ---- the session -------------------------------------------------------------------

    def _poll(self) -> None:
        world = self.world
        now = world.loop.now_ms
        self._carry_out(self.session.poll(now, self.wall_ms()))
        world.oracle.check_memory(self.gid, self.session.forwarder, self.window,
                                  self.ring_records)
        self._arm(now)

    def _arm(self, now: int) -> None:
        d = self.session.next_deadline_ms(now)
        if d is None:
            return
        d = max(d, now + 1)
        if self.timer_at is None or d < self.timer_at:
            self.timer_at = d
            self.world.loop.at(d, self._timer, self.life, d)

    def _timer(self, life: int, at: int) -> None:
        if life != self.life or at != self.timer_at:
            return
        self.timer_at = None
        self.guarded(self._poll)

    def _carry_out(self, actions: list[Any]) -> None:
        dispatch = self._dispatch
        tracing = self.world.trace is not None
        for a in actions:
            fn = dispatch.get(type(a))
            if fn is not None:
                fn(a)
            elif tracing and type(a) is s.Note:  # the sync log's line, into the trace
                self.world.note("%s %s %s", self.gid, a.what,
                                " ".join(f"{k}={v}" for k, v in a.fields.items()))

    def _publish(self, a: s.Publish) -> None:
        if not self.publish(a.uplink, a.topic, a.payload):
            self.session.publish_failed(a.uplink)

    def _commit(self, a: s.Commit) -> None:
        self.world.note("%s commit %d", self.gid, a.seq)
        self.world.oracle.on_commit(self.gid, self.journal.epoch, a.seq)
        self.journal.commit(a.seq, a.pos)

    def _observe(self, a: s.Observe) -> None:
        self.hlc.observe(a.hlc)

    # ---- the MQTT clients (edge) -------------------------------------------------------

    def publish(self, uplink: str, topic: str, payload: bytes) -> bool:
        c = self.clients[uplink]
        if not c.connected or len(c.outbox) >= OUTBOX_MAX:
            return False
        world = self.world
        mid = world.next_mid()
        c.outbox[mid] = [topic, payload, 1]
        self._send(uplink, mid, topic, payload)
        world.loop.after(RETRY_MS, self._retry, self.life, uplink, mid)
        return True

    def _send(self, uplink: str, mid: int, topic: str, payload: bytes) -> None:
        link = self.links[uplink]
        if link.state != UP:
            return  # into the void (blackhole) or a dead socket (not noticed yet)
        world = self.world
        for d in world.hop(link.delay(world.rng, len(payload)), "publish"):
            world.loop.after(d, world.broker.on_publish, self.gid, uplink, self.life, mid,
                             topic, payload)

    def _retry(self, life: int, uplink: str, mid: int) -> None:
        if life != self.life:
            return
        c = self.clients[uplink]
        entry = c.outbox.get(mid)
        if entry is None or not c.connected:
            return
        if entry[2] >= MAX_ATTEMPTS:
            del c.outbox[mid]  # the session's ack timeout sends the batch again
            return
        entry[2] += 1
        self._send(uplink, mid, entry[0], entry[1])
        self.world.loop.after(RETRY_MS, self._retry, life, uplink, mid)

    def puback(self, life: int, uplink: str, mid: int) -> None:
        """The broker sends a PUBACK over the link (it may be lost on the way)."""
        link = self.links[uplink]
        if link.state != UP:
            return
        world = self.world
        for d in world.hop(link.delay(world.rng, 4), "puback"):
            world.loop.after(d, self.on_puback, life, uplink, mid)

    def on_puback(self, life: int, uplink: str, mid: int) -> None:
        if life == self.life:
            self.clients[uplink].outbox.pop(mid, None)

    def deliver(self, life: int, uplink: str, topic: str, payload: bytes) -> None:
        """The broker sends an ack to this uplink's connection (it may be lost)."""
        link = self.links[uplink]
        if link.state != UP:
            return
        world = self.world
        for d in world.hop(link.delay(world.rng, len(payload)), "ack"):
            world.loop.after(d, self.on_message, life, uplink, topic, payload)

    def on_message(self, life: int, uplink: str, topic: str, payload: bytes) -> None:
        if life != self.life or not self.clients[uplink].connected:
            return
        self.guarded(self._message, uplink, topic, payload)

    def _message(self, uplink: str, topic: str, payload: bytes) -> None:
        now = self.world.loop.now_ms
        self._carry_out(self.session.message(uplink, topic, payload, now, self.wall_ms()))
        self._poll()

    # ---- connections -------------------------------------------------------------------

    def _try_connect(self, life: int, uplink: str) -> None:
        if life != self.life or not self.alive:
            return
        c = self.clients[uplink]
        if c.connected:
            c.connecting = False
            return
        c.connecting = True
        world = self.world
        link = self.links[uplink]
        if link.state == UP and world.broker.alive:
            world.loop.after(2 * link.latency_ms, self._handshake, life, uplink)
        else:
            world.loop.after(RECONNECT_MS + world.rng.randrange(200), self._try_connect, life,
                             uplink)

    def _handshake(self, life: int, uplink: str) -> None:
        if life != self.life:
            return
        world = self.world
        if self.links[uplink].state != UP or not world.broker.connect(self.gid, uplink, life):
            world.loop.after(RECONNECT_MS, self._try_connect, life, uplink)
            return
        c = self.clients[uplink]
        c.connected = True
        c.connecting = False
        world.note("%s %s connected", self.gid, uplink)
        for mid, (topic, payload, _) in list(c.outbox.items()):  # DUP: sent again
            self._send(uplink, mid, topic, payload)
        now = world.loop.now_ms
        self.session.uplink_changed(uplink, True, now)
        self.guarded(self._poll)

    def link_broken(self, uplink: str, notice_ms: int) -> None:
        """The uplink stopped carrying packets: the client notices after ``notice_ms``."""
        self.world.loop.after(notice_ms, self._lost, self.life, uplink, self.links[uplink].gen)

    def broker_lost(self, life: int, uplink: str) -> None:
        self.world.loop.after(self.world.rng.randrange(10, 200), self._lost, life, uplink, None)

    def _lost(self, life: int, uplink: str, gen: int | None) -> None:
        if life != self.life:
            return
        link = self.links[uplink]
        if gen is not None and (link.gen != gen or link.state == UP):
            return  # healed before the client noticed
        c = self.clients[uplink]
        self.world.broker.disconnect(self.gid, uplink)
        if c.connected:
            c.connected = False
            self.world.note("%s %s lost", self.gid, uplink)
            self.session.uplink_changed(uplink, False, self.world.loop.now_ms, "lost")
            self.guarded(self._poll)
        if not c.connecting and self.alive and life == self.life:
            self._try_connect(life, uplink)
