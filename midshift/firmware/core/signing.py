"""HMAC-SHA256 (RFC 2104) on hashlib alone, so the same code signs on a microcontroller.

CPython's ``hmac`` module is not in MicroPython; the construction is ten lines. Compare
digests with ``digest_equal`` (constant time in the length) so a forger cannot learn a
valid tag byte by byte from response timing.
"""

import hashlib

BLOCK = 64
DIGEST_SIZE = 32
_IPAD = 0x36
_OPAD = 0x5C


def _pad(key, byte):
    # computed per key, not from a 256-byte table: a node keeps no table in RAM for this
    return bytes(b ^ byte for b in key)


class Signer:
    """Precomputes the padded keys once; ``sign(*parts)`` MACs the concatenation."""

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("an HMAC key must be at least 16 bytes")
        if len(key) > BLOCK:
            key = hashlib.sha256(key).digest()
        key = bytes(key) + bytes(BLOCK - len(key))
        self._inner = _pad(key, _IPAD)
        self._outer = _pad(key, _OPAD)

    def sign(self, *parts):
        h = hashlib.sha256(self._inner)
        for p in parts:
            h.update(p)
        return hashlib.sha256(self._outer + h.digest()).digest()

    def verify(self, tag, *parts):
        return digest_equal(self.sign(*parts), tag)


def hmac_sha256(key, data):
    return Signer(key).sign(data)


def digest_equal(a, b):
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):  # no zip(strict=) on MicroPython
        diff |= a[i] ^ b[i]
    return diff == 0
