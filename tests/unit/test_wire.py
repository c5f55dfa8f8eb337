"""The batch and ack codecs: round trip, and every forgery refused with its reason."""

import binascii

from firmware.core.signing import Signer
from firmware.core.wire import (
    ACK_DOMAIN,
    ACK_SIG,
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
    ledger = Signer(b"k" * 32)  # the ledger signs with the gateway's key
    assert decode_ack(encode_ack(ledger, 7, 5, 9, 1700000000001), ledger) == (
        7, 5, 9, 1700000000001, "ok")
    for bad in (b'{"v":2}', b'{"v":2,"epoch":1,"first":3,"last":2,"ledger_ms":0,"status":"ok"}',
                b'{"v":2,"epoch":1,"first":1,"last":2,"ledger_ms":0,"status":"maybe"}',
                b'{"v":2,"epoch":-1,"first":1,"last":2,"ledger_ms":0,"status":"ok"}',
                b'{"v":1,"epoch":1,"first":1,"last":2,"ledger_ms":0,"status":"ok"}',
                b'{"v":2,"epoch":1,', b'{"v":2,"epoch":1,"first":1,"last":2,"ledger_ms":true,'
                b'"status":"ok"}'):
        # correctly signed, so only the body's checks can refuse it
        tag = binascii.hexlify(ledger.sign(ACK_DOMAIN, bad[:-1] + b"}"))
        try:
            decode_ack(bad[:-1] + ACK_SIG + tag + b'"}', ledger)
            raise AssertionError("bad ack accepted")
        except WireError as exc:
            assert exc.reason == "bad_ack"


def test_an_ack_is_accepted_only_under_the_gateways_key_and_unaltered():
    ledger = Signer(b"k" * 32)
    good = encode_ack(ledger, 7, 5, 9, 1700000000001)
    cases = [
        (encode_ack(Signer(b"x" * 32), 7, 5, 9, 1700000000001), "bad_ack_mac"),  # other key
        (good.replace(b'"last":9', b'"last":90'), "bad_ack_mac"),  # altered range
        (good[:good.rfind(b',"sig"')] + b"}", "bad_ack_mac"),  # signature stripped
        (good[:-4] + b'zz"}', "bad_ack_mac"),  # not hex
        (b'{"v":2,"pad":"' + b"x" * 600 + b'"}', "bad_ack"),  # too large to parse
    ]
    for data, reason in cases:
        try:
            decode_ack(data, ledger)
            raise AssertionError("accepted " + repr(data[:40]))
        except WireError as exc:
            assert exc.reason == reason, (exc.reason, reason)
    rejected = encode_ack(ledger, 7, 5, 9, 1, status="rejected", reason="out_of_range")
    assert decode_ack(rejected, ledger)[4] == "rejected"
