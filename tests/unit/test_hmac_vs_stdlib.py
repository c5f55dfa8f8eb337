"""The core's HMAC-SHA256 (hashlib only, so it runs on MicroPython, which has no ``hmac``)
equals CPython's ``hmac`` on many random keys and messages, across the block-size edges:
keys of 16 to 200 bytes (64 is the SHA-256 block: longer keys are hashed first),
messages of 0 to 2000 bytes, and messages given in parts."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from midshift.firmware.core.signing import Signer, digest_equal, hmac_sha256

EDGE_KEYS = (16, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200)
EDGE_MSGS = (0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 2000)


def test_random_keys_and_messages() -> None:
    rng = random.Random(20261123)
    for _ in range(1500):
        key = rng.randbytes(rng.randint(16, 200))
        msg = rng.randbytes(rng.randint(0, 2000))
        assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@pytest.mark.parametrize("key_len", EDGE_KEYS)
def test_block_size_edges(key_len: int) -> None:
    rng = random.Random(key_len)
    key = rng.randbytes(key_len)
    signer = Signer(key)
    for n in EDGE_MSGS:
        msg = rng.randbytes(n)
        want = hmac.new(key, msg, hashlib.sha256).digest()
        assert signer.sign(msg) == want
        cut = rng.randint(0, n)  # signed in parts, as a batch is (head, payload)
        assert signer.sign(msg[:cut], msg[cut:]) == want
        assert signer.verify(want, msg)
        assert not signer.verify(bytes([want[0] ^ 1]) + want[1:], msg)


def test_keys_as_bytearray_and_digest_compare() -> None:
    key = bytearray(range(48))
    assert Signer(key).sign(b"x") == hmac.new(bytes(key), b"x", hashlib.sha256).digest()
    assert digest_equal(b"abc", b"abc") and not digest_equal(b"abc", b"abd")
    assert not digest_equal(b"abc", b"ab")
    with pytest.raises(ValueError):
        Signer(b"short")
