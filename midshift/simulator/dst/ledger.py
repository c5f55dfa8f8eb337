"""The simulated ledger: the production batch decision over an in-memory store.

Each batch the broker delivers is decided by ``midshift/host_tools/ledger/verify.py`` (topic,
gateway, HMAC, storable), stored in ``MemoryStore`` under the unique key
``(gateway, epoch, seq)`` exactly as ``INSERT OR IGNORE`` does, then acknowledged with the
production ``encode_ack``; the broker's PUBACK goes last, as in ``service.py``. Batches are
stored in groups (group commit) every ``TICK_MS``. A crash loses the inbox (batches
received, not yet stored and PUBACKed: the broker redelivers them); the store survives, as
a synced SQLite file would.

Not modelled: rejection tallies, receipts, till transactions, several workers, a store
that is down while the worker runs (``store.transient``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, WireError
from midshift.firmware.core.wire_ledger import encode_ack
from midshift.host_tools.ledger.store import MAX_INT
from midshift.host_tools.ledger.verify import verify_batch

if TYPE_CHECKING:
    from midshift.simulator.dst.world import World

TICK_MS = 3
MAX_GROUP = 64  # as service.MAX_GROUP


class MemoryStore:
    """Events under a unique (gateway, epoch, seq): a second insert of a key is a duplicate
    and changes nothing. ``on_insert`` sees every row actually inserted."""

    def __init__(self, on_insert: object) -> None:
        self.rows: dict[tuple[str, int, int], bytes] = {}
        self.on_insert = on_insert

    def store_many(self, batches: list[Batch], ledger_ms: int) -> list[tuple[int, int]]:
        out = []
        rows = self.rows
        on_insert = self.on_insert
        for b in batches:
            new = dup = 0
            gw, epoch = b.gateway, b.epoch
            for seq, _cls, _hlc, body in b.records:
                key = (gw, epoch, seq)
                if key in rows:
                    dup += 1
                    continue
                rows[key] = bytes(body)
                new += 1
                on_insert(gw, epoch, seq, bytes(body))  # type: ignore[operator]
            out.append((new, dup))
        return out


class SimLedger:
    def __init__(self, world: World, keys: dict[str, bytes]) -> None:
        self.world = world
        self.signers = {gw: Signer(k) for gw, k in keys.items()}
        self.store = MemoryStore(world.oracle.on_insert)
        self.alive = True
        self.inbox: list[tuple[int, str, bytes]] = []
        self._tick_due = False
        self.counters = {"batches": 0, "events": 0, "duplicates": 0, "rejected": 0}

    def on_deliver(self, mid: int, topic: str, payload: bytes) -> None:
        if not self.alive:
            return
        self.inbox.append((mid, topic, payload))
        if not self._tick_due:
            self._tick_due = True
            self.world.loop.after(TICK_MS, self._tick)

    def _tick(self) -> None:
        self._tick_due = False
        if not self.alive or not self.inbox:
            return
        group, self.inbox = self.inbox[:MAX_GROUP], self.inbox[MAX_GROUP:]
        if self.inbox:
            self._tick_due = True
            self.world.loop.after(TICK_MS, self._tick)
        world = self.world
        now = world.ledger_wall_ms()
        verified = []
        for _mid, topic, payload in group:
            try:
                verified.append((topic, verify_batch(topic, payload, self.signers, MAX_INT)))
            except WireError as exc:
                self.counters["rejected"] += 1
                world.oracle.rejected(topic, exc)
        results = self.store.store_many([b for _, b in verified], now)
        broker = world.broker
        for (topic, batch), (new, dup) in zip(verified, results, strict=True):
            self.counters["batches"] += 1
            self.counters["events"] += new
            self.counters["duplicates"] += dup
            ack = encode_ack(self.signers[batch.gateway], batch.epoch, batch.first_seq,
                             batch.last_seq, now, duplicates=dup)
            world.note("ledger stored %s %d..%d new=%d dup=%d", batch.gateway,
                       batch.first_seq, batch.last_seq, new, dup)
            world.ledger_hop(broker.on_ack, topic[:-6] + "ack", ack)
        for mid, _, _ in group:  # released at the broker only now, as service.py does
            world.ledger_hop(broker.ledger_puback, mid)

    def crash(self) -> None:
        self.alive = False
        self.inbox = []
        self.world.broker.ledger_disconnect()

    def restart(self) -> None:
        self.alive = True
        self.world.loop.after(50, self.reconnect)

    def broker_lost(self) -> None:
        self.inbox = []  # not PUBACKed: the broker has them (or lost them in its crash)
        if self.alive:
            self.world.loop.after(500, self.reconnect)

    def reconnect(self) -> None:
        if not self.alive or self.world.broker.ledger_connected:
            return
        if not self.world.broker.ledger_connect():
            self.world.loop.after(500, self.reconnect)
