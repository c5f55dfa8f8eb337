"""Batch and acknowledgement codecs: the bytes between a gateway and the ledger.

``docs/wire-format.md`` is the specification; in short, a batch is

    "MSB1" | version | flags | len(gw) | gw | epoch | first_seq | last_seq | count
           | sent_ms | len(payload) | payload | HMAC-SHA256(key, everything before it)

and the payload (zlib-compressed when flag bit 0 is set) holds ``count`` records, each
``seq | class | hlc | len(body) | body``, in ascending seq. Seqs inside a batch need not
be contiguous (a record lost to flash damage leaves a visible gap); ``first_seq`` and
``last_seq`` bound them. An acknowledgement is a small JSON object on the ``ack`` topic,
signed by the ledger with the gateway's own key (only the ledger and that gateway hold
it), so a process that can publish on the topic cannot make a gateway reclaim records
the ledger never stored.

Decoding checks the MAC before it trusts any length inside, and every length against the
bytes actually there, so a forged or truncated batch is a ``WireError`` with a reason,
never an exception from deep inside struct.
"""

import binascii
import json
import struct

from midshift.firmware.core.errors import MidshiftError
from midshift.firmware.core.signing import DIGEST_SIZE

MAGIC = b"MSB1"
VERSION = 1
FLAG_ZLIB = 1
FIXED = "<QQQHQI"  # epoch, first, last, count, sent_ms, payload length
FIXED_SIZE = struct.calcsize(FIXED)  # 42
RECORD = "<QBQI"  # seq, class, hlc, body length
RECORD_SIZE = struct.calcsize(RECORD)  # 21
MAX_COUNT = 65535
ACK_VERSION = 2  # 2: signed (``sig``); a version 1 ack is unsigned and refused
# ``resend`` answers no batch (epoch 0, range 0..0): the ledger has just subscribed on a
# session the broker had not kept, so batches sent before may have reached no one.
ACK_STATUSES = ("ok", "rejected", "resend")
ACK_DOMAIN = b"midshift-ack\n"  # a batch MAC can never pass as an ack MAC, nor back
ACK_SIG = b',"sig":"'
MAX_ACK = 512  # bytes: an ack is about 150; anything larger is refused unparsed


class WireError(MidshiftError):
    code = "wire"

    def __init__(self, reason, text, signed=None):
        super().__init__(text)
        self.reason = reason
        self.signed = signed  # (epoch, first, last) once the batch's HMAC verified


class Batch:
    def __init__(self, gateway, epoch, records, sent_ms, first_seq=None):
        """``records``: [(seq, cls, hlc, body)] in ascending seq. ``first_seq`` may be
        below the first record's seq: the batch then also accounts for seqs lost to
        flash damage just before it, so the ledger's acknowledgement covers them."""
        self.gateway = gateway
        self.epoch = epoch
        self.records = records
        self.sent_ms = sent_ms
        self.first_seq = records[0][0] if first_seq is None else first_seq

    @property
    def last_seq(self):
        return self.records[-1][0]


def encode_batch(signer, batch, compress=None):
    """Batch bytes; ``compress`` (bytes -> bytes, e.g. zlib.compress) is used when it
    makes the payload smaller."""
    recs = batch.records
    if not recs or len(recs) > MAX_COUNT:
        raise ValueError("a batch holds 1 to %d records, not %d" % (MAX_COUNT, len(recs)))
    if batch.first_seq > recs[0][0]:
        raise ValueError("first_seq %d is past the first record" % batch.first_seq)
    gw = batch.gateway.encode()
    if not 0 < len(gw) <= 32:
        raise ValueError("gateway id must be 1 to 32 bytes")
    parts = []
    last = -1
    add, pack = parts.append, struct.pack  # per record in a drain: locals
    for seq, cls, hlc, body in recs:
        if seq <= last:
            raise ValueError("records must be in ascending seq")
        last = seq
        add(pack(RECORD, seq, cls, hlc, len(body)))
        add(body)  # join takes bytes, bytearray or memoryview as they are
    payload = b"".join(parts)
    flags = 0
    if compress is not None:
        packed = compress(payload)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_ZLIB
    head = (MAGIC + bytes((VERSION, flags, len(gw))) + gw
            + struct.pack(FIXED, batch.epoch, batch.first_seq, recs[-1][0], len(recs),
                          batch.sent_ms, len(payload)))
    return head + payload + signer.sign(head, payload)


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


def decode_ack(data, signer):
    """(epoch, first, last, ledger_ms, status) from a signed ack; WireError (reason
    ``bad_ack``, or ``bad_ack_mac`` when the signature does not verify). The signature
    is checked over the bytes as sent, before anything is parsed."""
    data = bytes(data)
    if len(data) > MAX_ACK:
        raise WireError("bad_ack", "ack of %d bytes is over %d" % (len(data), MAX_ACK))
    cut = data.rfind(ACK_SIG)
    if cut < 0 or not data.endswith(b'"}'):
        raise WireError("bad_ack_mac", "ack is not signed")
    try:
        tag = binascii.unhexlify(data[cut + len(ACK_SIG):-2])
    except ValueError:
        raise WireError("bad_ack_mac", "ack signature is not hex")
    body = data[:cut] + b"}"
    if not signer.verify(tag, ACK_DOMAIN, body):
        raise WireError("bad_ack_mac", "ack fails its signature: forged, or another key")
    try:
        doc = json.loads(body.decode())
    except (ValueError, UnicodeError):
        raise WireError("bad_ack", "ack is not JSON")
    if not isinstance(doc, dict) or doc.get("v") != ACK_VERSION:
        raise WireError("bad_ack", "ack version is not %d" % ACK_VERSION)
    out = []
    for key in ("epoch", "first", "last", "ledger_ms"):
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise WireError("bad_ack", "ack field %s is %r" % (key, v))
        out.append(v)
    if out[1] > out[2]:
        raise WireError("bad_ack", "ack range %d..%d is empty" % (out[1], out[2]))
    status = doc.get("status")
    if status not in ACK_STATUSES:
        raise WireError("bad_ack", "ack status %r" % (status,))
    out.append(status)
    return tuple(out)
