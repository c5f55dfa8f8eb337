"""A gateway's flash for a long simulated run: the crash-simulating storage, bounded.

``SimFlash`` is ``midshift/firmware/core/crash_storage.py``'s ``CrashStorage`` with two changes
for runs of millions of operations: at every sync the trace is folded into the base image
(what a power cut can lose is only what was written since the last sync, so nothing is
lost to the model), and power can be cut at the Nth storage call from now (a write is
torn at a random byte, as ``cut_after_bytes`` does). After a cut, ``image_after_cut``
gives what the medium holds, with unsynced writes lost, reordered and torn as the seed
decides.
"""

from __future__ import annotations

import random

from midshift.firmware.core.crash_storage import CrashStorage


class SimFlash(CrashStorage):
    def __init__(self, size: int, rng: random.Random, base: bytes | None = None) -> None:
        super().__init__(size, base)
        self.base = bytearray(self.base)
        self.rng = rng
        self.cut_in_ops: int | None = None  # power fails at that many more storage calls

    def _countdown(self) -> bool:
        if self.cut_in_ops is None:
            return False
        self.cut_in_ops -= 1
        return self.cut_in_ops <= 0

    def read(self, offset: int, n: int) -> bytes:
        if self._countdown():
            self.powered = False
        return super().read(offset, n)

    def write(self, offset: int, data: bytes) -> None:
        if self._countdown() and self.powered:
            self.cut_after_bytes = self.bytes_written + self.rng.randrange(len(data) + 1)
        super().write(offset, data)

    def sync(self) -> None:
        if self._countdown():
            self.powered = False
        self._check_power()
        base = self.base
        for op in self.trace:
            base[op[1]:op[1] + len(op[2])] = op[2]
        self.trace = []

    def image_after_cut(self) -> bytes:
        rng = self.rng
        return self.image_at(len(self.trace), rng, lose_unsynced=rng.random() < 0.5,
                             reorder=rng.random() < 0.5, tear=rng.random() < 0.5)

