"""Reference data down: the datasets a store sells from (prices, promotions, stock, the
sell rules), each at one increasing version, and the decision whether a delta applies.

Sans-I/O: bytes in, a verdict out; the store (``midshift/firmware/edges/refdata_store.py``) keeps
the rows and the version and hands this module the hash of a row it is about to replace.

A message is ``<64 hex digits of HMAC-SHA256>\\n<JSON body>``, signed under the gateway's
command key (``commands.py``'s key, ``signing.py``'s HMAC) over a domain tag and the body's
exact bytes. Unlike a command the body is not canonicalized before signing: a delta of
100,000 prices would cost more to re-serialize than to apply. The signature is checked
before the body is parsed, so a forger cannot make the gateway parse anything.

Bodies (``kind``): ``delta`` {dataset, from, to, ops, checksum}, ``pointer`` {dataset,
version, checksum, chunks, oldest_from, published_ms} (the latest version, retained),
``chunk`` {dataset, version, index, count, checksum, rows}. An op is ``[key, value]``
(set) or ``[key, null]`` (delete); a snapshot row is ``[key, value]``.

The checksum of a dataset is the sum modulo 2**64 of its rows' hashes (the first 8 bytes of
sha256 over ``key\\n`` and the value's canonical JSON): independent of row order and
updated per operation (minus the old row, plus the new), so applying 100,000 prices never
rehashes the whole table. Written as 16 hex digits.

The apply decision, in order: signature (``bad_signature``), shape (``malformed``), for
this gateway (``wrong_gateway``), then against the local version: ``to`` not above it is
``stale`` (a duplicate or an old delta: ignored), ``from`` not equal to it is ``gap`` (ask
for what was missed), and the checksum of the result must match (``bad_checksum``: nothing
is written). Every rejection is counted by reason.
"""

import binascii
import hashlib
import json

from midshift.firmware.core.commands import dump_canonical
from midshift.firmware.core.errors import MidshiftError

VERSION = 1
DOMAIN = b"midshift-refdata-v1\n"
DATASETS = ("prices", "promotions", "stock", "sell_rules")
KINDS = ("delta", "pointer", "chunk")
REASONS = ("bad_signature", "malformed", "wrong_gateway", "stale", "gap", "bad_checksum")
MASK = (1 << 64) - 1
EMPTY = "%016x" % 0


class RefdataRejected(MidshiftError):
    code = "refdata_rejected"

    def __init__(self, reason, text):
        super().__init__(text)
        self.reason = reason


def row_text(value):
    """The stored and hashed form of a row's value: canonical JSON."""
    return dump_canonical(value)


def row_hash(key, text):
    """A row's 64-bit hash from its key and ``row_text``."""
    return int.from_bytes(hashlib.sha256((key + "\n" + text).encode()).digest()[:8], "big")


def checksum_hex(total):
    return "%016x" % (total & MASK)


def checksum_of(rows):
    """The checksum of a whole dataset, ``{key: value}`` (the publisher's side)."""
    total = 0
    for key in rows:
        total += row_hash(key, row_text(rows[key]))
    return checksum_hex(total)


def sign_message(signer, doc):
    """The bytes of a signed message (the publisher's side, and tests)."""
    body = json.dumps(doc).encode()
    return binascii.hexlify(signer.sign(DOMAIN, body)) + b"\n" + body


def _int(v):
    return not isinstance(v, bool) and isinstance(v, int) and v >= 0


class RefdataGate:
    """Verifies messages for ``gateway`` and decides deltas; counts every rejection."""

    def __init__(self, signer, gateway):
        self.signer = signer
        self.gateway = gateway
        self.rejected = {}
        for r in REASONS:
            self.rejected[r] = 0
        self.applied = 0

    def reject(self, reason, text):
        self.rejected[reason] += 1
        return RefdataRejected(reason, text)

    def read(self, payload):
        """The body of a signed message for this gateway; raises RefdataRejected."""
        data = bytes(payload)
        if len(data) < 66 or data[64:65] != b"\n":
            raise self.reject("bad_signature", "message is not signed")
        try:
            tag = binascii.unhexlify(data[:64])
        except (TypeError, ValueError):
            raise self.reject("bad_signature", "message signature is not hex")
        body = data[65:]
        if not self.signer.verify(tag, DOMAIN, body):
            raise self.reject("bad_signature", "message signature does not verify")
        try:
            doc = json.loads(body.decode())  # MicroPython's json.loads wants str
        except (ValueError, UnicodeError):
            raise self.reject("malformed", "message is not JSON")
        if not isinstance(doc, dict) or doc.get("v") != VERSION or doc.get("kind") not in KINDS:
            raise self.reject("malformed", "message is not a refdata object of version %d" % (
                VERSION,))
        if doc.get("gateway") != self.gateway:
            raise self.reject("wrong_gateway", "message is for %r, this is %r" % (
                doc.get("gateway"), self.gateway))
        if doc.get("dataset") not in DATASETS:
            raise self.reject("malformed", "dataset %r is not one of %s" % (
                doc.get("dataset"), ", ".join(DATASETS)))
        kind = doc["kind"]
        need = {"delta": ("from", "to"), "pointer": ("version", "chunks", "oldest_from"),
                "chunk": ("version", "index", "count")}[kind]
        for k in need:
            if not _int(doc.get(k)):
                raise self.reject("malformed", "%s.%s %r is not an integer >= 0" % (
                    kind, k, doc.get(k)))
        if not isinstance(doc.get("checksum"), str) or len(doc["checksum"]) != 16:
            raise self.reject("malformed", "%s.checksum is not 16 hex digits" % (kind,))
        if kind == "delta" and (doc["to"] <= doc["from"] or not isinstance(doc.get("ops"), list)):
            raise self.reject("malformed", "delta needs to > from and a list of ops")
        if kind == "chunk" and (doc["index"] >= doc["count"] or
                                not isinstance(doc.get("rows"), list)):
            raise self.reject("malformed", "chunk needs index < count and a list of rows")
        return doc

    def order(self, local_version, doc):
        """Whether a delta follows ``local_version``: raises ``stale`` or ``gap``."""
        if doc["to"] <= local_version:
            raise self.reject("stale", "%s delta %d->%d is not newer than %d" % (
                doc["dataset"], doc["from"], doc["to"], local_version))
        if doc["from"] != local_version:
            raise self.reject("gap", "%s delta %d->%d does not follow %d" % (
                doc["dataset"], doc["from"], doc["to"], local_version))

    def plan(self, doc, checksum, old_hash):
        """The rows to write for a delta that follows: ``[(key, text or None, hash)]``.
        ``checksum``: the dataset's now (hex); ``old_hash(key)``: the stored row's hash or
        None. Raises ``malformed`` or ``bad_checksum``; nothing is to be written then."""
        total = int(checksum, 16)
        writes = []
        seen = set()
        for op in doc["ops"]:
            if not isinstance(op, list) or len(op) != 2 or not isinstance(op[0], str) or \
                    op[0] in seen:
                raise self.reject("malformed", "an op is [key, value] or [key, null], each "
                                  "key once")
            key = op[0]
            seen.add(key)
            old = old_hash(key)
            if old is not None:
                total -= old
            if op[1] is None:
                writes.append((key, None, 0))
            else:
                text = row_text(op[1])
                h = row_hash(key, text)
                total += h
                writes.append((key, text, h))
        got = checksum_hex(total)
        if got != doc["checksum"]:
            raise self.reject("bad_checksum", "%s %d->%d: the result's checksum is %s, the "
                              "delta says %s" % (doc["dataset"], doc["from"], doc["to"], got,
                                                 doc["checksum"]))
        return got, writes

    def snapshot_rows(self, chunks):
        """Rows of a complete snapshot (its chunks in order): ``[(key, text, hash)]`` and
        the checksum; raises ``bad_checksum`` when the whole does not match."""
        total = 0
        rows = []
        for doc in chunks:
            for row in doc["rows"]:
                if not isinstance(row, list) or len(row) != 2 or not isinstance(row[0], str):
                    raise self.reject("malformed", "a snapshot row is [key, value]")
                text = row_text(row[1])
                h = row_hash(row[0], text)
                total += h
                rows.append((row[0], text, h))
        got = checksum_hex(total)
        want = chunks[0]["checksum"] if chunks else EMPTY
        if got != want:
            raise self.reject("bad_checksum", "snapshot %s: checksum %s, it says %s" % (
                chunks[0]["version"] if chunks else 0, got, want))
        return got, rows
