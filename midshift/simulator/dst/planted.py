"""Known bugs, planted one at a time, to show the simulation has teeth.

Each is a context manager that swaps one method (of the simulated runtime, the core or
the simulated ledger store) for a broken one while it is open; production code is never
edited. ``PLANTED`` names them for ``python -m midshift.simulator dst --plant NAME`` and the test
(``tests/unit/test_dst_planted.py``) that shows each is found within ``FIND_WITHIN`` seeds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from midshift.firmware.core import session as s
from midshift.firmware.core.forwarder import Forwarder
from midshift.firmware.core.journal import Journal
from midshift.firmware.core.wire import FIXED, MAGIC
from midshift.simulator.dst import gateway as gateway_module
from midshift.simulator.dst.gateway import SimGateway
from midshift.simulator.dst.ledger import MemoryStore

FIND_WITHIN = 20  # seeds of the default configuration


@contextmanager
def _swapped(owner: Any, name: str, new: Any) -> Iterator[None]:
    old = owner.__dict__[name]
    setattr(owner, name, new)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _range(payload: bytes) -> tuple[int, int] | None:
    """(first, last) of a batch, read from its header."""
    if payload[:4] != MAGIC:
        return None
    start = 7 + payload[6]
    _, first, last = struct.unpack_from(FIXED[:4], payload, start)
    return first, last


@contextmanager
def commit_on_puback() -> Iterator[None]:
    """The runtime takes the broker's PUBACK for the ledger's ack and commits on it."""
    def on_puback(self: SimGateway, life: int, uplink: str, mid: int) -> None:
        if life != self.life:
            return
        entry = self.clients[uplink].outbox.pop(mid, None)
        got = _range(entry[1]) if entry is not None else None
        if got is None or not self.alive:
            return
        commit = self.session.forwarder.on_ack(got[0], got[1], "ok", self.world.loop.now_ms)
        if commit is not None:
            self.guarded(self._carry_out, [s.Commit(*commit)])
    with _swapped(SimGateway, "on_puback", on_puback):
        yield


@contextmanager
def seq_reuse_after_crash() -> Iterator[None]:
    """Recovery loses count by one: the next append reuses the last durable seq."""
    class Forgetful(Journal):
        @classmethod
        def open(cls, storage: Any, max_body: int = 16384, repair: bool = True,
                 read_window: int = 4096) -> Journal:
            j = Journal.open(storage, max_body, repair, read_window)
            if j.durable_seq >= j.tail_seq:
                j.next_seq -= 1
                j.durable_seq -= 1
            return j
    with _module_attr(gateway_module, "Journal", Forgetful):
        yield


@contextmanager
def _module_attr(module: Any, name: str, new: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, new)
    try:
        yield
    finally:
        setattr(module, name, old)


@contextmanager
def ledger_skips_dedup() -> Iterator[None]:
    """The ledger inserts every record it receives, resends included."""
    def store_many(self: MemoryStore, batches: list[Any], ledger_ms: int) -> list[Any]:
        out = []
        for b in batches:
            for seq, _cls, _hlc, body in b.records:
                self.rows[(b.gateway, b.epoch, seq)] = bytes(body)
                self.on_insert(b.gateway, b.epoch, seq, bytes(body))  # type: ignore[operator]
            out.append((len(b.records), 0))
        return out
    with _swapped(MemoryStore, "store_many", store_many):
        yield


@contextmanager
def forget_resend_on_uplink_change() -> Iterator[None]:
    """On an uplink change the batches in flight are forgotten instead of sent again."""
    def set_uplink(self: Forwarder, name: str | None, now_ms: int,
                   txn_only: bool = False) -> None:
        if name == self.uplink:
            return
        self.uplink = name
        self.txn_only = txn_only
        if name is not None:
            self.inflight = []
    with _swapped(Forwarder, "set_uplink", set_uplink):
        yield


PLANTED: dict[str, Callable[[], Any]] = {
    "commit-on-puback": commit_on_puback,
    "seq-reuse-after-crash": seq_reuse_after_crash,
    "ledger-skips-dedup": ledger_skips_dedup,
    "forget-resend-on-uplink-change": forget_resend_on_uplink_change,
}
