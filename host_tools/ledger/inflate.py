"""Bounded decompression of a batch payload: a zip bomb costs the ledger the limit, no more.

``zlib.decompress`` inflates whatever it is given: a 1 MiB payload of zeros becomes 1 GiB
of RAM before any check can run. ``bounded_inflate(limit)`` returns the decompressor the
ledger hands ``decode_batch``: it stops as soon as the output passes ``limit`` (zlib's
``max_length``, enforced while inflating) and raises ``WireError("too_large")`` naming the
limit and the size the payload would reach, estimated from how much of the compressed
input produced that much (inflating the rest only to count it would cost a second of CPU
per bomb).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from firmware.core.wire import WireError


def bounded_inflate(limit: int) -> Callable[[bytes], bytes]:
    def inflate(data: bytes) -> bytes:
        d = zlib.decompressobj()
        out = d.decompress(data, limit + 1)
        if len(out) <= limit:
            if d.unconsumed_tail or not d.eof:
                # a stream cut short, or trailing garbage: the codec's own error
                out += d.flush()
                if not d.eof:
                    raise zlib.error("incomplete or truncated stream")
            return out
        used = len(data) - len(d.unconsumed_tail)
        estimate = len(out) * len(data) // max(used, 1)
        raise WireError("too_large", f"batch payload inflates past the limit of {limit} bytes:"
                        f" {len(out)} bytes from the first {used} of its {len(data)} "
                        f"compressed bytes, about {estimate} bytes in all")
    return inflate
