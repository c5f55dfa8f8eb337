"""The batch and ack codecs: round trip, and every forgery refused with its reason."""

import binascii

from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import (
    ACK_DOMAIN,
    ACK_SIG,
    Batch,
    WireError,
    decode_ack,
    encode_batch,
)
from midshift.firmware.core.wire_ledger import decode_batch, encode_ack

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


def _reason_and_signed(data, signer, **kw):
    try:
        decode_batch(data, signer, **kw)
    except WireError as exc:
        return exc.reason, exc.signed, str(exc)
    raise AssertionError("decoded")


def test_batch_limits_are_checked_after_the_mac_and_say_what_is_wrong():
    s = Signer(b"k" * 32)
    data = encode_batch(s, Batch("gw-01", 7, [(5, 0, 1, b"x" * 300)], 1))
    reason, signed, text = _reason_and_signed(data, s, max_payload=100)
    assert (reason, signed) == ("too_large", (7, 5, 5))
    assert "321 bytes is over the limit of 100" in text
    reason, signed, text = _reason_and_signed(data + b"x", s)
    assert (reason, signed) == ("truncated", None)  # before the MAC: nothing is trusted
    assert f"batch of {len(data) + 1} bytes, but its header says {len(data)}" in text
    # a forgery under the same limit is still only bad_mac
    assert _reason_and_signed(data, Signer(b"q" * 32), max_payload=100)[:2] == ("bad_mac", None)


def test_fields_past_the_receivers_integers_are_out_of_range():
    s = Signer(b"k" * 32)
    top = (1 << 63) - 1
    ok = encode_batch(s, Batch("gw-01", 1, [(top, 0, top, b"{}")], top))
    assert decode_batch(ok, s, max_int=top).last_seq == top
    for recs, sent in (([(top + 1, 0, 1, b"{}")], 1), ([(1, 0, top + 1, b"{}")], 1),
                       ([(1, 0, 1, b"{}")], top + 1)):
        data = encode_batch(s, Batch("gw-01", 3, recs, sent))
        reason, signed, _ = _reason_and_signed(data, s, max_int=top)
        assert reason == "out_of_range" and signed[0] == 3, (recs, sent)
        decode_batch(data, s)  # the wire itself carries unsigned 64-bit values


def test_a_decompressor_error_passes_through_with_the_batch_range():
    s = Signer(b"k" * 32)

    def refuse(payload):
        raise WireError("too_large", "inflates past the limit")
    data = encode_batch(s, Batch("gw-01", 9, [(2, 0, 1, b"a" * 200)], 1),
                        compress=lambda b: b[:10])
    assert _reason_and_signed(data, s, decompress=refuse)[:2] == ("too_large", (9, 2, 2))


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
