"""Bounded decompression of a batch payload: a zip bomb costs the ledger the limit, no more.

``zlib.decompress`` inflates whatever it is given: a 1 MiB payload of zeros becomes 1 GiB
of RAM before any check can run. ``bounded_inflate(limit)`` returns the decompressor the
ledger hands ``decode_batch``: it inflates a chunk at a time (zlib's ``max_length``) and
stops as soon as the output passes ``limit`` and raises ``WireError("too_large")`` naming the
limit and the size the payload would reach, estimated from how much of the compressed
input produced that much (inflating the rest only to count it would cost a second of CPU
per bomb).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from midshift.firmware.core.wire import WireError

CHUNK = 1 << 20  # inflated a MiB at a time: zlib grows one buffer by doubling otherwise


def bounded_inflate(limit: int) -> Callable[[bytes], bytes]:
    def inflate(data: bytes) -> bytes:
        d = zlib.decompressobj()
        chunks, total, tail = [], 0, data
        while True:
            out = d.decompress(tail, CHUNK)
            total += len(out)
            if total > limit:
                used = len(data) - len(d.unconsumed_tail)
                estimate = total * len(data) // max(used, 1)
                raise WireError("too_large", f"batch payload inflates past the limit of "
                                f"{limit} bytes: {total} bytes from the first {used} of its "
                                f"{len(data)} compressed bytes, about {estimate} bytes in all")
            chunks.append(out)
            tail = d.unconsumed_tail
            if d.eof or (not tail and len(out) < CHUNK):
                break
        if not d.eof:
            raise zlib.error("incomplete or truncated stream")
        return b"".join(chunks)
    return inflate
