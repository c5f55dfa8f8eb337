"""Opening a journal: format a storage, check its superblock, and recover the log.

Apart from ``journal.py`` (appending, the group commit, reading, commit points) because a
MicroPython node runs this once at boot and then drops it from RAM
(``midshift/firmware/mpy/boot.py``); callers use ``Journal.format`` and ``Journal.open``.

Recovery reads the newest valid commit point (two slots, each with a CRC and a
generation), then scans from the head hint it carries: only frames whose CRC holds, whose
seq is the next expected one and whose ``prev_crc`` chains to the frame before are taken;
the first frame that fails is the torn tail, cleared (``repair``) and reported in
``Journal.recovery``. Ghost frames past the end (a power cut during a flush) get their
headers zeroed; see ``journal.py``'s docstring for why they can only lie within two
segments of the end.
"""

import struct

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import JournalError
from midshift.firmware.core.journal import (
    CURSOR,
    CURSOR_MAGIC,
    CURSOR_SIZE,
    DATA_START,
    JOURNAL_VERSION,
    MIN_SEGMENT,
    SLOT_OFFSETS,
    SUPER,
    SUPER_MAGIC,
    SUPER_SIZE,
    Recovery,
    _crc,
    _cursor_bytes,
    storage_size,
)
from midshift.firmware.core.journal_damage import note_damage


class JournalCorrupt(JournalError):
    """The superblock is unreadable: refuse to guess."""

    code = "journal_corrupt"


class JournalUnformatted(JournalError):
    """Blank storage: format it first."""

    code = "journal_unformatted"


def format_storage(storage, segment_size, epoch, gateway_id="", created_ms=0):
    """``Journal.format``: a fresh superblock and commit point on ``storage``."""
    if segment_size < MIN_SEGMENT or segment_size % 512:
        raise ValueError("segment_size %d must be a multiple of 512, at least %d" % (
            segment_size, MIN_SEGMENT))
    room = storage.size() - DATA_START
    if room < 2 * segment_size or room % segment_size:
        raise ValueError("storage of %d bytes is not %d + N x %d with N >= 2" % (
            storage.size(), DATA_START, segment_size))
    if not 0 < epoch < (1 << 64):
        raise ValueError("epoch must be a non-zero 64-bit integer")
    gw = gateway_id.encode()
    if len(gw) > 32:
        raise ValueError("gateway_id %r is longer than 32 bytes" % gateway_id)
    head = struct.pack(SUPER, SUPER_MAGIC, JOURNAL_VERSION, 0, segment_size,
                       room // segment_size, epoch, gw, created_ms)
    storage.write(0, head + struct.pack("<I", _crc(head)))
    blank = bytes(512)
    storage.write(SLOT_OFFSETS[1], blank)
    storage.write(SLOT_OFFSETS[0], _cursor_bytes(rec.epoch_seed(epoch), 1, 0, 1, 0, 0, 0, 0, 1, 0))
    storage.sync()


def open_journal(cls, storage, max_body=16384, repair=True, read_window=4096):
    """``Journal.open``: an instance of ``cls`` (a Journal) over ``storage``, recovered."""
    raw = storage.read(0, SUPER_SIZE + 4)
    if raw == bytes(len(raw)):
        raise JournalUnformatted("journal storage is blank: format it first")
    fields = struct.unpack_from(SUPER, raw, 0)
    if fields[0] != SUPER_MAGIC or _crc(raw[:SUPER_SIZE]) != struct.unpack_from(
            "<I", raw, SUPER_SIZE)[0]:
        raise JournalCorrupt("journal superblock is damaged (magic %r); refusing to guess "
                             "its geometry" % (bytes(fields[0]),))
    if fields[1] != JOURNAL_VERSION:
        raise JournalCorrupt("journal version %d is not supported (want %d)" % (
            fields[1], JOURNAL_VERSION))
    seg_size, seg_count, epoch = fields[3], fields[4], fields[5]
    if storage.size() < storage_size(seg_size, seg_count):
        raise JournalCorrupt("storage of %d bytes is smaller than the journal's %d" % (
            storage.size(), storage_size(seg_size, seg_count)))
    gw = bytes(fields[6]).rstrip(b"\0").decode()
    j = cls(storage, seg_size, seg_count, epoch, gw, max_body, read_window)
    recover(j, repair)
    return j


def recover(j, repair):
    """Find the end of journal ``j``'s log from its commit point and set its positions."""
    r = Recovery()
    best, torn = None, False
    for i in (0, 1):
        raw = j.storage.read(SLOT_OFFSETS[i], CURSOR_SIZE + 4)
        c = _parse_cursor(raw, j._seed)
        if c is None:
            torn = torn or raw != bytes(len(raw))
        elif best is None or c[0] > best[0]:
            best = c
            r.cursor_slot = i
    if best is None:  # format was cut before its commit point became durable
        best = (0, 0, 1, 0, 0, 0, 0, 1, 0)
    r.cursor_fallback = torn and best[0] > 0
    (j._gen, j.tail_pos, j.tail_seq, j.committed_seq, j.dropped,
     cursor_hlc, hint_pos, hint_seq, hint_crc) = best
    j._slot = r.cursor_slot if r.cursor_slot is not None else 1

    pos, seq, prev = j.tail_pos, j.tail_seq, None
    r.first_seq = seq
    if hint_seq > seq and hint_pos > pos:
        # Frames before the hint were durable when it was written: they are CRC-checked
        # when read, not here, so opening costs at most about a segment of scanning.
        # The hint carries the CRC of the frame before it, so the chain holds across it.
        r.records = hint_seq - seq
        pos, seq, prev = hint_pos, hint_seq, hint_crc
    j._hint_pos = pos
    last_hlc = 0
    walk = j._frames(pos, seq, prev)
    while True:
        kind, item, pos, seq, prev = next(walk)
        if kind == "record":
            last_hlc = item.hlc
            r.records += 1
        elif kind == "corrupt":
            r.corrupt_seqs.append(item)
            note_damage(j, item, item)
        elif kind == "end":
            if item[1] is not None:
                r.cut_pos, r.cut_bytes, r.cut_reason = pos, item[0], item[1]
            break
    r.last_seq = seq - 1
    j.head_pos = j.durable_pos = pos
    j.next_seq = seq
    j.durable_seq = seq - 1
    j._last_crc = j._durable_crc = prev if prev is not None else 0
    j.last_hlc = max(last_hlc, cursor_hlc)
    if repair and r.cut_bytes:
        # Zero the torn frame so a later open does not report it again.
        j._write_span(pos, bytes(r.cut_bytes))
        j.storage.sync()
        j._cache_off = -1
    ghosts = ghost_frames(j, pos)
    r.ghost_frames = len(ghosts)
    if repair:
        if ghosts:
            # Last first, one sync. Any subset of these writes may survive a power cut
            # (torn, reordered): a header partly zeroed is no longer a whole frame, and
            # the frame at the end itself is never touched, so the next open ends the
            # log at the same place and finds whatever is left whole.
            for at in reversed(ghosts):
                j._write_span(at, bytes(rec.HEADER_SIZE))
            j.storage.sync()
            j._cache_off = -1
        # A new generation per life: pads carry it, so a pad this life writes is never
        # byte-identical to one an earlier life wrote at the same place and lost, and a
        # frame left behind that chained to that one cannot chain to this one.
        j._persist_cursor(j.tail_pos, j.tail_seq, j.committed_seq, j.dropped)
    j.recovery = r


def ghost_frames(j, end):
    """Positions of the whole frames after ``end`` (the end of the log) that carry a seq
    the log has not reached: frames of an earlier life that a power cut left behind.
    The frame at ``end`` itself is not one of them: recovery looked at it and stopped
    (it does not chain), and clearing it could leave it half-zeroed, which the next
    recovery would take for damage and resync past. Only the rest of the end's segment
    and the next one are scanned, never past the tail: a flush never writes further
    before its sync (``Journal.take_pending``)."""
    seg = j.segment_size
    limit = min(end - end % seg + 2 * seg, j.tail_pos + j.data_size)
    found = []
    start = end + 1
    while start < limit:
        stop = min(start - start % seg + seg, limit)
        span = bytes(j.storage.read(j._phys(start), stop - start))
        i = span.find(rec.MAGIC)
        while 0 <= i <= len(span) - rec.HEADER_SIZE:
            h = rec.FrameHeader(span[i:i + rec.HEADER_SIZE])
            body_end = i + rec.HEADER_SIZE + h.length
            if (h.plausible() and h.seq >= j.next_seq and body_end <= len(span)
                    and h.crc_ok(j._seed, span[i + rec.HEADER_SIZE:body_end])):
                found.append(start + i)
            i = span.find(rec.MAGIC, i + 1)
        start = stop
    return found


def _parse_cursor(raw, seed):
    if len(raw) < CURSOR_SIZE + 4:
        return None
    (magic, gen, tail_pos, tail_seq, committed_seq, dropped, hlc, hint_pos,
     hint_seq, hint_crc) = struct.unpack_from(CURSOR, raw, 0)
    if magic != CURSOR_MAGIC or _crc(raw[:CURSOR_SIZE], seed) != struct.unpack_from(
            "<I", raw, CURSOR_SIZE)[0]:
        return None
    return (gen, tail_pos, tail_seq, committed_seq, dropped, hlc, hint_pos, hint_seq, hint_crc)
