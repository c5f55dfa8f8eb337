"""The core's HMAC-SHA256 against RFC 4231, and the signer (test_hmac_vs_stdlib.py
compares it with CPython's hmac on random inputs)."""

import binascii

from midshift.firmware.core.signing import Signer, digest_equal, hmac_sha256

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_hmac_sha256_matches_rfc4231():
    # RFC 4231 test case 2 has a 4-byte key, below our minimum: case 1 and 6 fit.
    key = b"\x0b" * 20
    tag = hmac_sha256(key, b"Hi There")
    assert binascii.hexlify(tag) == (b"b0344c61d8db38535ca8afceaf0bf12b"
                                     b"881dc200c9833da726e9376c2e32cff7")
    big = b"\xaa" * 131  # longer than a block: hashed first
    tag = hmac_sha256(big, b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert binascii.hexlify(tag) == (b"60e431591ee0b67f0d8a26aacbf5b77f"
                                     b"8e0bc6213728c5140546040f0ee37f54")
    s = Signer(key)
    assert s.verify(s.sign(b"a", b"b"), b"ab") and not s.verify(bytes(32), b"ab")
    assert not digest_equal(b"ab", b"abc")
