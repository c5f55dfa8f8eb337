"""The invariants, checked while the run goes: the first one broken stops it.

What a gateway reported durable (a flush returned) is the oracle's truth; against it:

- ``durable_lost``: after a power cut the journal recovered less than was reported durable;
- ``seq_reused``: a seq of an epoch became durable, or was recovered, with another body;
- ``ghost_record``: recovery brought back a record a power cut had taken in an earlier
  life (found in the core and fixed: tests/unit/test_journal_ghost_resync.py);
- ``stored_twice``: the ledger inserted a (gateway, epoch, seq) it already held;
- ``body_differs``: the ledger stored a body that is not the one the gateway journaled and
  signed (or a record that was never durable);
- ``commit_ahead``: a gateway committed (reclaimed) a seq the ledger has not stored;
- ``memory``: a gateway holds more batches in flight, or more acknowledged ranges, than its
  configuration allows;
- ``ledger_rejected``: the ledger refused a batch of an honest gateway;
- ``not_recovered``: once the world healed, some durable record did not reach the ledger
  within the recovery bound (checked at the end: "exactly once once the world heals").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from midshift.firmware.core.forwarder import WINDOW_STRETCH
from midshift.firmware.core.wire import WireError

if TYPE_CHECKING:
    from midshift.simulator.dst.world import World


class Violation(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Oracle:
    def __init__(self, world: World) -> None:
        self.world = world
        self.durable: dict[str, dict[tuple[int, int], bytes]] = {}  # gw -> (epoch, seq) -> body
        self.durable_seq: dict[str, int] = {}
        self.stored: dict[str, set[tuple[int, int]]] = {}  # membership only, never iterated
        self.committed: dict[str, int] = {}  # gw -> highest seq checked against the ledger
        self.missing = 0  # durable records not (yet) stored, over all gateways

    def add_gateway(self, gid: str) -> None:
        self.durable[gid] = {}
        self.durable_seq[gid] = 0
        self.stored[gid] = set()
        self.committed[gid] = 0

    def fail(self, kind: str, detail: str) -> None:
        self.world.note("VIOLATION %s: %s", kind, detail)
        raise Violation(kind, detail)

    def on_durable(self, gid: str, epoch: int, records: list[tuple[int, bytes]]) -> None:
        known = self.durable[gid]
        stored = self.stored[gid]
        for seq, body in records:
            key = (epoch, seq)
            old = known.get(key)
            if old is not None:
                if old != body:
                    self.fail("seq_reused", f"{gid} epoch {epoch:x} seq {seq} was durable with "
                              f"another body")
                continue
            known[key] = body
            if key not in stored:
                self.missing += 1
            if seq > self.durable_seq[gid]:
                self.durable_seq[gid] = seq

    def on_boot(self, gid: str, epoch: int, durable_seq: int, tail_seq: int) -> None:
        if durable_seq < self.durable_seq[gid]:
            self.fail("durable_lost", f"{gid} recovered its journal to seq {durable_seq}, but "
                      f"seq {self.durable_seq[gid]} had been reported durable")
        self.committed[gid] = max(self.committed[gid], tail_seq - 1)

    def on_insert(self, gid: str, epoch: int, seq: int, body: bytes) -> None:
        key = (epoch, seq)
        stored = self.stored[gid]
        if key in stored:
            self.fail("stored_twice", f"the ledger inserted {gid} epoch {epoch:x} seq {seq} "
                      f"a second time")
        want = self.durable[gid].get(key)
        if want is None:
            self.fail("body_differs", f"the ledger stored {gid} seq {seq}, which was never "
                      f"durable on the gateway")
        if want != body:
            self.fail("body_differs", f"the ledger stored {gid} seq {seq} with a body that "
                      f"differs from the journaled one")
        stored.add(key)
        self.missing -= 1

    def on_commit(self, gid: str, epoch: int, seq: int) -> None:
        stored = self.stored[gid]
        durable = self.durable[gid]
        for s in range(self.committed[gid] + 1, seq + 1):
            # A seq never reported durable (lost in a power cut before its sync) may be
            # committed as a gap: no device was told it was kept.
            if (epoch, s) not in stored and (epoch, s) in durable:
                self.fail("commit_ahead", f"{gid} commits seq {seq}, but the ledger has not "
                          f"stored seq {s}")
        if seq > self.committed[gid]:
            self.committed[gid] = seq

    def check_memory(self, gid: str, forwarder: object, window: int, ring_records: int) -> None:
        """In flight: at most the window, stretched to ``WINDOW_STRETCH`` windows only by
        small batches (``Forwarder._window_open``). Acknowledged ranges past a gap are
        kept one per batch (they merge only into the commit point), so their bound is what
        the ring can hold, not a constant."""
        inflight = len(forwarder.inflight)  # type: ignore[attr-defined]
        acked = len(forwarder.acked)  # type: ignore[attr-defined]
        if inflight > window * WINDOW_STRETCH or acked > ring_records:
            self.fail("memory", f"{gid} holds {inflight} batches in flight (window {window}) "
                      f"and {acked} acknowledged ranges (the ring holds {ring_records} "
                      "records at most)")

    def rejected(self, topic: str, exc: WireError) -> None:
        self.fail("ledger_rejected", f"the ledger refused a batch on {topic}: {exc.reason}: "
                  f"{exc}")

    def undelivered(self) -> list[tuple[str, int]]:
        """(gateway, first durable seq the ledger lacks), for the report."""
        out = []
        for gid, known in self.durable.items():
            stored = self.stored[gid]
            lacking = [seq for (epoch, seq) in known if (epoch, seq) not in stored]
            if lacking:
                out.append((gid, min(lacking)))
        return out
