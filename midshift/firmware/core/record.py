"""Journal record frames: header + body, CRC-32 protected, chained to the previous frame.

Layout (little-endian, 36-byte header; docs/journal-format.md is the specification):

    off size field
      0    2 magic      b"MR"
      2    1 version    FRAME_VERSION (1)
      3    1 type       1 = record, 2 = pad (rest of the segment unused)
      4    1 cls        0 = txn, 1 = telemetry
      5    1 flags      reserved bits, 0
      6    2 reserved   0
      8    4 length     body length in bytes
     12    8 seq        sequence number within the journal's epoch
     20    8 hlc        hybrid logical clock timestamp (48-bit ms | 16-bit counter)
     28    4 prev_crc   crc of the frame before this one (0 for the first after format)
     32    4 crc        CRC-32 of bytes 0..31 and the body, seeded with the epoch

Seeding the CRC with the epoch makes frames left over from an earlier format invalid;
the prev_crc chain makes a frame left over from before a crash invalid after the frames
before it were rewritten (a "ghost" that happens to carry the next seq).
"""

import binascii
import struct

MAGIC = b"MR"
FRAME_VERSION = 1
HEADER = "<2sBBBBHIQQII"  # format strings: MicroPython has no struct.Struct
HEADER_SIZE = struct.calcsize(HEADER)  # 36
TYPE_RECORD = 1
TYPE_PAD = 2

TXN = 0
TELEMETRY = 1
CLASS_NAMES = ("txn", "telemetry")


def class_code(name):
    if name == "txn":
        return TXN
    if name == "telemetry":
        return TELEMETRY
    raise ValueError("record class %r is not one of txn, telemetry" % (name,))


def epoch_seed(epoch):
    return (epoch ^ (epoch >> 32)) & 0xFFFFFFFF


def encode_frame(seed, ftype, cls, seq, hlc, prev_crc, body, flags=0):
    """Frame bytes for one record (or pad, with an empty body)."""
    head = struct.pack(HEADER, MAGIC, FRAME_VERSION, ftype, cls, flags, 0, len(body), seq, hlc, prev_crc, 0)
    crc = binascii.crc32(body, binascii.crc32(head[:32], seed)) & 0xFFFFFFFF
    return head[:32] + struct.pack("<I", crc) + body


class FrameHeader:
    """A parsed header; ``body_crc_ok`` is checked separately once the body is read."""

    def __init__(self, raw):
        (magic, self.version, self.ftype, self.cls, self.flags, _r, self.length, self.seq,
         self.hlc, self.prev_crc, self.crc) = struct.unpack_from(HEADER, raw, 0)
        self.magic = bytes(magic)
        self.raw = raw

    def plausible(self):
        return (self.magic == MAGIC and self.version == FRAME_VERSION
                and self.ftype in (TYPE_RECORD, TYPE_PAD) and self.cls in (TXN, TELEMETRY))

    def computed_crc(self, seed, body):
        return binascii.crc32(body, binascii.crc32(bytes(self.raw[:32]), seed)) & 0xFFFFFFFF

    def crc_ok(self, seed, body):
        return self.computed_crc(seed, body) == self.crc


class Record:
    """One journaled record as read back: identity, class, clock, body and position."""

    def __init__(self, seq, cls, hlc, flags, body, pos, end_pos):
        self.seq = seq
        self.cls = cls
        self.hlc = hlc
        self.flags = flags
        self.body = body
        self.pos = pos
        self.end_pos = end_pos

    def __repr__(self):
        return "Record(seq=%d, cls=%s, hlc=%d, %d bytes)" % (
            self.seq, CLASS_NAMES[self.cls], self.hlc, len(self.body))
