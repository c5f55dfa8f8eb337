"""The ledger's side of the wire: decode a gateway's batch, encode the signed ack.

The codecs are specified in ``docs/wire-format.md``; the gateway's side (encode a batch,
decode an ack) and the shared constants are in ``wire.py``. Apart so that a MicroPython
node, which only sends batches and reads acks, never loads this into its RAM. The ledger
(``midshift/host_tools/ledger``), the simulated ledger and the tests use it.

Decoding checks the MAC before it trusts any length inside, and every length against the
bytes actually there, so a forged or truncated batch is a ``WireError`` with a reason,
never an exception from deep inside struct.
"""

import binascii
import json
import struct

from midshift.firmware.core.signing import DIGEST_SIZE
from midshift.firmware.core.wire import (
    ACK_DOMAIN,
    ACK_SIG,
    ACK_VERSION,
    FIXED,
    FIXED_SIZE,
    FLAG_ZLIB,
    MAGIC,
    RECORD,
    RECORD_SIZE,
    VERSION,
    Batch,
    WireError,
)


def peek_gateway(data):
    """The gateway id a batch claims (to look up its key before verifying); WireError."""
    if len(data) < 7 or bytes(data[:4]) != MAGIC:
        raise WireError("bad_magic", "not a midshift batch (magic %r)" % (bytes(data[:4]),))
    if data[4] != VERSION:
        raise WireError("bad_version", "batch version %d is not supported (want %d)" % (
            data[4], VERSION))
    n = data[6]
    if not 0 < n <= 32 or len(data) < 7 + n:
        raise WireError("truncated", "batch too short for its gateway id")
    try:
        return bytes(data[7:7 + n]).decode()
    except UnicodeError:
        raise WireError("bad_gateway", "gateway id is not UTF-8")


def peek_count(data):
    """How many records a batch says it holds, unverified (0 when it is too short to
    say): a hint for sizing work, never trusted for anything else."""
    if len(data) < 7:
        return 0
    at = 7 + data[6] + 24  # magic, version, flags, len(gw), gw, then epoch, first, last
    if len(data) < at + 2:
        return 0
    return struct.unpack_from("<H", data, at)[0]


def decode_batch(data, signer, decompress=None, max_payload=16 << 20, max_int=None):
    """A verified Batch from bytes; raises WireError (reason: bad_magic, bad_version,
    truncated, bad_mac, too_large, bad_payload, compressed, out_of_range).

    ``decompress`` (bytes -> bytes) must bound its own output (the ledger's stops at
    ``max_payload`` while inflating); a WireError it raises passes through as it is.
    ``max_int``: the largest seq, HLC and sent_ms the receiver can store (a ledger on a
    signed 64-bit INTEGER column: 2**63 - 1); larger is ``out_of_range``. An error
    raised after the HMAC verified carries ``signed`` = (epoch, first, last), so the
    receiver may answer the gateway with a ``rejected`` ack; before that it is None."""
    gw = peek_gateway(data)
    start = 7 + len(gw.encode())
    if len(data) < start + FIXED_SIZE + DIGEST_SIZE:
        raise WireError("truncated", "batch of %d bytes is shorter than its header" % len(data))
    epoch, first, last, count, sent_ms, plen = struct.unpack_from(FIXED, data, start)
    end = start + FIXED_SIZE + plen
    if len(data) != end + DIGEST_SIZE:
        raise WireError("truncated", "batch of %d bytes, but its header says %d (a payload "
                        "of %d bytes)" % (len(data), end + DIGEST_SIZE, plen))
    head = bytes(data[:start + FIXED_SIZE])
    payload = bytes(data[start + FIXED_SIZE:end])
    if not signer.verify(bytes(data[end:]), head, payload):
        raise WireError("bad_mac", "batch from %s fails its HMAC: forged, damaged or "
                        "signed with another key" % gw)
    signed = (epoch, first, last)
    if plen > max_payload:
        raise WireError("too_large", "batch payload of %d bytes is over the limit of %d"
                        % (plen, max_payload), signed)
    if max_int is not None:
        for name, v in (("first seq", first), ("last seq", last), ("sent_ms", sent_ms)):
            if v > max_int:
                raise WireError("out_of_range", "batch %s %d is over %d" % (name, v, max_int),
                                signed)
    if data[5] & FLAG_ZLIB:
        if decompress is None:
            raise WireError("compressed", "batch is compressed and no decompressor is set",
                            signed)
        try:
            payload = decompress(payload)
        except WireError as exc:
            exc.signed = signed
            raise
        except Exception as exc:  # noqa: BLE001 - any codec failure is a bad batch
            raise WireError("bad_payload", "batch payload does not decompress: %s" % exc,
                            signed)
        if len(payload) > max_payload:
            raise WireError("too_large", "batch payload inflates to %d bytes, over the limit "
                            "of %d" % (len(payload), max_payload), signed)
    records = []
    off = 0
    prev = -1
    # A drain decodes every record here: locals, and one range check for both ints.
    size, unpack, add = len(payload), struct.unpack_from, records.append
    top = (1 << 64) if max_int is None else max_int
    for _ in range(count):
        if off + RECORD_SIZE > size:
            raise WireError("bad_payload", "record header past the payload's end", signed)
        seq, cls, hlc, n = unpack(RECORD, payload, off)
        off += RECORD_SIZE
        end = off + n
        if end > size or seq <= prev or cls > 1:
            raise WireError("bad_payload", "record %d is malformed" % seq, signed)
        if seq > top or hlc > top:
            raise WireError("out_of_range", "record %d: seq or HLC %d is over %d" % (
                seq, max(seq, hlc), max_int), signed)
        add((seq, cls, hlc, payload[off:end]))
        off = end
        prev = seq
    if off != len(payload) or not records or records[0][0] < first or prev != last:
        raise WireError("bad_payload", "records do not match the header's count and seq range",
                        signed)
    return Batch(gw, epoch, records, sent_ms, first)


def encode_ack(signer, epoch, first, last, ledger_ms, status="ok", reason=None,
               duplicates=0):
    """The ledger's signed answer to one batch (``signer``: the gateway's key)."""
    doc = {"v": ACK_VERSION, "epoch": epoch, "first": first, "last": last,
           "ledger_ms": ledger_ms, "status": status, "dup": duplicates}
    if reason:
        doc["reason"] = reason
    body = json.dumps(doc, separators=(",", ":")).encode()
    tag = binascii.hexlify(signer.sign(ACK_DOMAIN, body))
    return body[:-1] + ACK_SIG + tag + b'"}'


def encode_resend(signer, ledger_ms):
    """The ledger's signed ``resend`` nudge (see ``ACK_STATUSES``)."""
    return encode_ack(signer, 0, 0, 0, ledger_ms, status="resend")
