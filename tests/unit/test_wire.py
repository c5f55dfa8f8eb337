"""The batch and ack codecs: round trip, and every forgery refused with its reason."""

from firmware.core.signing import Signer
from firmware.core.wire import (
    Batch,
    WireError,
    decode_ack,
    decode_batch,
    encode_ack,
    encode_batch,
)

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_batch_round_trip_and_every_forgery_refused():
    s = Signer(b"k" * 32)
    recs = [(5, 0, 111, b'{"a":1}'), (6, 1, 112, b""), (9, 0, 113, b"x" * 300)]
    data = encode_batch(s, Batch("gw-01", 0xABCDEF, recs, 1700000000000))
    b = decode_batch(data, s)
    assert (b.gateway, b.epoch, b.first_seq, b.last_seq, b.sent_ms) == (
        "gw-01", 0xABCDEF, 5, 9, 1700000000000)
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in b.records] == recs
    reasons = []
    for bad in (data[:-1], data + b"x", b"XXXX" + data[4:],
                data[:40] + bytes([data[40] ^ 1]) + data[41:],
                data[:-1] + bytes([data[-1] ^ 1])):
        try:
            decode_batch(bad, s)
        except WireError as exc:
            reasons.append(exc.reason)
    assert reasons == ["truncated", "truncated", "bad_magic", "bad_mac", "bad_mac"]
    try:
        decode_batch(data, Signer(b"q" * 32))
        raise AssertionError("another key verified")
    except WireError as exc:
        assert exc.reason == "bad_mac"
    assert decode_ack(encode_ack(7, 5, 9, 1700000000001)) == (7, 5, 9, 1700000000001, "ok")
    for bad in (b"{", b'{"v":1}', b'{"v":1,"epoch":1,"first":3,"last":2,"ledger_ms":0,"status":"ok"}'):
        try:
            decode_ack(bad)
            raise AssertionError("bad ack accepted")
        except WireError as exc:
            assert exc.reason == "bad_ack"
