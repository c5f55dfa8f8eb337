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

The gateway's side is here (encode a batch, decode an ack); the ledger's side (decode a
batch, encode an ack) is ``wire_ledger.py``, so that a MicroPython node never holds it.
"""

import binascii
import json
import struct

from midshift.firmware.core.errors import MidshiftError

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
