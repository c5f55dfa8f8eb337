"""The journal: a ring of fixed-size segments on flash holding every event until the
ledger has acknowledged it.

Layout over a storage (see storage.py and docs/journal-format.md):

    [0, 512)        superblock: geometry, epoch, gateway id (written once, at format)
    [512, 1024)     cursor slot A  } commit points, written alternately, each with a CRC
    [1024, 1536)    cursor slot B  } and a generation: the newest valid one wins
    [4096, ...)     segment_count segments of segment_size bytes, used as a ring

Positions are logical byte counts that only grow; a position maps to
``DATA_START + pos % data_size``. A frame never crosses a segment end: the rest of a
segment is marked by a pad frame, or skipped when too small to hold a header.

Two cursors: ``durable`` (everything appended and synced) and ``tail`` (the first
record the ledger has not acknowledged, persisted in the cursor slots). Space behind the
tail is reclaimed; nothing ahead of it is overwritten, except that telemetry may give up
its own oldest records to make room (each one counted). Appends are buffered and become
durable together at ``flush()``: that is the group commit, paced by the caller.

Recovery scans from the tail, accepting only frames whose CRC holds, whose seq is the
next expected one and whose ``prev_crc`` chains to the frame before; it stops at the
first frame that fails, which is the torn tail, and reports what it cut. Formatting,
opening and recovery are in ``journal_open.py`` (``Journal.format`` and ``Journal.open``
call it), what reading does on damage (resync past a flipped bit, skip a lost stretch)
in ``journal_damage.py``: a MicroPython node drops both from RAM after boot.

Ghost frames: a power cut during a flush can leave whole frames past the end recovery
finds (the write of an earlier frame was lost or torn, a later one survived). They are
never part of the log, but a later life writing over them could tear a header before its
CRC field, leaving the old frame's CRC there, and recovery's resync (meant for a bit flip)
would follow it to the old frame's successor. So opening zeroes their headers. A flush
writes at most up to the end of the segment after the one holding the durable end before
it syncs (``take_pending``), so they can only lie there: opening scans at most two
segments past the end.
"""

import binascii
import struct

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import JournalFull, RecordTooLarge

SUPER = "<4sHHIIQ32sQ"  # magic, version, flags, seg size, seg count, epoch, gw, created
SUPER_SIZE = struct.calcsize(SUPER)
SUPER_MAGIC = b"MSJ1"
JOURNAL_VERSION = 1
SLOT_OFFSETS = (512, 1024)
# magic, gen, tail_pos, tail_seq, committed, dropped, hlc, hint_pos, hint_seq, hint_prev_crc
CURSOR = "<4sQQQQQQQQI"
CURSOR_SIZE = struct.calcsize(CURSOR)
CURSOR_MAGIC = b"MSCP"
DATA_START = 4096
MIN_SEGMENT = 4096


def storage_size(segment_size, segment_count):
    return DATA_START + segment_size * segment_count


def _crc(data, seed=0):
    return binascii.crc32(data, seed) & 0xFFFFFFFF


class Recovery:
    """What opening the journal found: how many records, and what was cut and why."""

    def __init__(self):
        self.records = 0
        self.first_seq = 0
        self.last_seq = 0
        self.cut_pos = None      # position of the torn tail, if any
        self.cut_bytes = 0       # bytes of the torn frame that were discarded
        self.cut_reason = None   # "bad crc", "short frame", "broken chain", "bad header"
        self.corrupt_seqs = []   # records skipped mid-log because their CRC failed
        self.cursor_slot = None  # which slot held the newest valid commit point
        self.cursor_fallback = False  # newest slot was torn; the older one was used
        self.ghost_frames = 0    # whole frames of an earlier life past the end (zeroed)

    def as_dict(self):
        return {"records": self.records, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "cut_pos": self.cut_pos, "cut_bytes": self.cut_bytes,
                "cut_reason": self.cut_reason, "corrupt_seqs": list(self.corrupt_seqs),
                "cursor_slot": self.cursor_slot, "cursor_fallback": self.cursor_fallback,
                "ghost_frames": self.ghost_frames}


class Journal:
    """Open with ``Journal.open(storage)`` after ``Journal.format(storage, ...)`` once."""

    def __init__(self, storage, segment_size, segment_count, epoch, gateway_id, max_body,
                 read_window=4096):
        self.storage = storage
        self.segment_size = segment_size
        self.segment_count = segment_count
        self.data_size = segment_size * segment_count
        self.epoch = epoch
        self.gateway_id = gateway_id
        self.max_body = max_body
        self.read_window = read_window
        self._seed = rec.epoch_seed(epoch)
        self._hint_pos = 0        # durable position last recorded in a commit point
        self._durable_crc = 0     # CRC of the last durable frame (chains the next one)
        self._inflight_crc = 0    # CRC of the last frame handed to a flusher
        self._cache_off = -1      # read window: storage offset and bytes
        self._cache = b""
        self._gen = 0
        self._slot = 0
        self.tail_pos = 0
        self.tail_seq = 1
        self.committed_seq = 0
        self.dropped = 0          # telemetry records given up to make room (persisted)
        self.refused = 0          # appends refused with JournalFull (this run)
        self.lost_to_damage = 0   # durable records found unreadable when read (bit rot)
        self.damaged = []         # [(first seq, last seq)] of those, the latest 64
        self.head_pos = 0         # where the next frame goes (pending included)
        self.next_seq = 1
        self.durable_pos = 0
        self.durable_seq = 0
        self.last_hlc = 0
        self._last_crc = 0
        self._pending = []        # [(pos, frame bytes)] appended, not yet written
        self.recovery = None

    # ---- format and open (the code is in journal_open.py: a node drops it after boot) -----

    @staticmethod
    def format(storage, segment_size, epoch, gateway_id="", created_ms=0):
        """Write a fresh superblock and commit point. Data from an earlier format cannot be
        mistaken for new records: frames are CRC-seeded with the epoch."""
        from midshift.firmware.core.journal_open import format_storage
        format_storage(storage, segment_size, epoch, gateway_id, created_ms)

    @classmethod
    def open(cls, storage, max_body=16384, repair=True, read_window=4096):
        """The journal on ``storage``, recovered (``recovery`` says what was found)."""
        from midshift.firmware.core.journal_open import open_journal
        return open_journal(cls, storage, max_body, repair, read_window)

    # ---- the ring ----------------------------------------------------------------

    def _phys(self, pos):
        return DATA_START + pos % self.data_size

    def _seg_room(self, pos):
        return self.segment_size - pos % self.segment_size

    def _read(self, offset, n, seg_left):
        """Read through a window of ``read_window`` bytes (never past the segment end,
        ``seg_left`` bytes away), so scanning many small frames costs few storage reads."""
        start = offset - self._cache_off
        if self._cache_off < 0 or start < 0 or start + n > len(self._cache):
            want = max(n, min(seg_left, self.read_window))
            self._cache = self.storage.read(offset, want)
            self._cache_off = offset
            start = 0
        return self._cache[start:start + n]

    def _write_span(self, pos, data):
        room = self._seg_room(pos)
        self.storage.write(self._phys(pos), data[:room])

    def _frames(self, pos, seq, prev):
        """The frame iterator: walk the log from ``pos``, expecting ``seq`` after a frame
        whose CRC was ``prev`` (None: don't check the chain). Yields
        ``(kind, item, pos, seq, prev)`` per frame, the last three being where to go on
        from: ("record", Record, ...), ("pad", None, ...), ("corrupt", the seq given up,
        ...), and last ("end", (cut_bytes, reason or None), ...) with the walk's position
        unchanged. Lazy: a frame is read only when the caller asks for it."""
        while True:
            step = self._walk(pos, seq, prev)
            kind = step[0]
            if kind == "end":
                yield kind, (step[1], step[2]), pos, seq, prev
                return
            if kind == "record":
                item = step[1]
                prev, pos, seq = step[2], item.end_pos, seq + 1
            else:
                item = seq if kind == "corrupt" else None
                prev, pos = step[1], step[2]
                if kind == "corrupt":
                    seq += 1
            yield kind, item, pos, seq, prev

    def _walk(self, pos, seq, prev, resync=True):
        """Examine the frame at ``pos`` expecting ``seq`` after a frame whose CRC was
        ``prev`` (None: don't check the chain). Returns one of
        ("record", Record, crc), ("pad", crc, next_pos), ("corrupt", crc, next_pos),
        ("end", cut_bytes, reason or None)."""
        if pos - self.tail_pos >= self.data_size:
            return ("end", 0, None)
        room = self._seg_room(pos)
        if room < rec.HEADER_SIZE:
            return ("pad", prev, pos + room)  # implicit skip: no room for a pad header
        raw = self._read(self._phys(pos), rec.HEADER_SIZE, room)
        h = rec.FrameHeader(raw)
        computed = None
        if h.plausible() and h.length <= room - rec.HEADER_SIZE:
            body = self._read(self._phys(pos) + rec.HEADER_SIZE, h.length, room - rec.HEADER_SIZE)
            computed = h.computed_crc(self._seed, body)
            if computed == h.crc:
                if h.seq != seq:
                    return ("end", 0, None)  # an older lap's frame: the clean end of the log
                if prev is not None and h.prev_crc != prev:
                    return ("end", 0, None)  # a ghost from before an earlier crash
                if h.ftype == rec.TYPE_PAD:
                    return ("pad", h.crc, pos + room)
                return ("record", rec.Record(seq, h.cls, h.hlc, h.flags, body, pos,
                                             pos + rec.HEADER_SIZE + h.length), h.crc)
        if raw == bytes(rec.HEADER_SIZE):
            return ("end", 0, None)  # never written: the clean end
        # Not a whole frame. Torn tail, or one frame damaged in place? If a later frame
        # is whole and chains to this one (to its stored CRC, or to the computed one when
        # the CRC field itself is hit), the log goes on past it: a flipped bit, not the end.
        from midshift.firmware.core import journal_damage as damage
        if resync:
            found = damage.resync(self, pos, seq, room, h, computed)
            if found is not None:
                return found
        return damage.cut(self, pos, seq, room, raw, h, computed)

    # ---- append and group commit ----------------------------------------------------

    def free_bytes(self):
        return self.data_size - (self.head_pos - self.tail_pos)

    def append(self, body, cls=rec.TXN, hlc=0, flags=0):
        """Queue a record; returns its seq. It is durable only once ``flush()`` has
        returned a durable seq at or beyond it. Raises JournalFull or RecordTooLarge."""
        if len(body) > self.max_body or rec.HEADER_SIZE + len(body) > self.segment_size:
            raise RecordTooLarge("record body of %d bytes exceeds the limit of %d" % (
                len(body), min(self.max_body, self.segment_size - rec.HEADER_SIZE)))
        size = rec.HEADER_SIZE + len(body)
        room = self._seg_room(self.head_pos)
        pad = room if size > room else 0
        if self.free_bytes() < pad + size:
            if cls != rec.TELEMETRY or not self._drop_telemetry(pad + size):
                self.refused += 1
                raise JournalFull(rec.CLASS_NAMES[cls], pad + size, self.free_bytes())
        seq = self.next_seq
        if pad:
            if pad >= rec.HEADER_SIZE:
                frame = rec.encode_frame(self._seed, rec.TYPE_PAD, 0, seq, self._gen,
                                         self._last_crc, b"")
                self._pending.append((self.head_pos, frame))
                self._last_crc = _frame_crc(frame)
            self.head_pos += pad
        frame = rec.encode_frame(self._seed, rec.TYPE_RECORD, cls, seq, hlc, self._last_crc,
                                 body, flags)
        self._pending.append((self.head_pos, frame))
        self._last_crc = _frame_crc(frame)
        self.head_pos += size
        self.next_seq = seq + 1
        if hlc > self.last_hlc:
            self.last_hlc = hlc
        return seq

    def pending(self):
        return len(self._pending)

    def flush(self):
        """Write every queued frame and sync; returns the durable seq. One sync, or one per
        two segments' worth of frames (see ``take_pending``)."""
        while self._pending:
            runs, seq, pos = self.take_pending()
            for offset, data in runs:
                self.storage.write(offset, data)
            self.storage.sync()
            self.mark_durable(seq, pos)
        return self.durable_seq

    def take_pending(self):
        """Hand the queued frames to a flusher that writes and syncs them outside any lock:
        returns ([(storage offset, bytes)], last seq, end pos). Frames that sit next to each
        other in a segment become one write. Call ``mark_durable`` after the sync.

        Only the frames that end by the end of the segment after the durable end's are
        handed out (always at least one record); the rest stay queued for the next call.
        So unsynced writes, all that a power cut can leave behind as ghost frames, never
        reach further, and opening need not look further for them (``journal_open.ghost_frames``)."""
        if not self._pending:
            return [], self.durable_seq, self.durable_pos
        limit = self.durable_pos - self.durable_pos % self.segment_size + 2 * self.segment_size
        take = 0
        while take < len(self._pending):
            # A pad and the record after it go together: the pad's end is that record's start.
            unit = take + 2 if self._pending[take][1][3] == rec.TYPE_PAD else take + 1
            pos, frame = self._pending[unit - 1]
            if take and pos + len(frame) > limit:
                break
            take = unit
        batch, self._pending = self._pending[:take], self._pending[take:]
        runs = []
        run_pos, run = batch[0][0], bytearray()
        for pos, frame in batch:
            if pos != run_pos + len(run) or self._seg_room(run_pos) < len(run) + len(frame):
                runs.append((self._phys(run_pos), bytes(run)))
                run_pos, run = pos, bytearray()
            run += frame
        runs.append((self._phys(run_pos), bytes(run)))
        pos, last = batch[-1]
        self._inflight_crc = _frame_crc(last)
        return runs, struct.unpack_from("<Q", last, 12)[0], pos + len(last)

    def mark_durable(self, seq, pos, hint=True):
        """The frames handed out by ``take_pending`` are synced. Once a segment's worth has
        become durable since the last commit point, write one (with the new head hint);
        ``hint`` False leaves that to the caller (``hint_due``, ``prepare_hint``), which
        syncs it outside its lock."""
        self._cache_off = -1
        if seq > self.durable_seq:
            self.durable_seq = seq
            self.durable_pos = pos
            self._durable_crc = self._inflight_crc
            if hint and self.hint_due():
                self._persist(self.prepare_hint())

    def hint_due(self):
        """A segment's worth has become durable since the last commit point."""
        return self.durable_pos - self._hint_pos >= self.segment_size

    # ---- acknowledgement and reclaim ------------------------------------------------

    def commit(self, seq, next_pos=None):
        """The ledger has acknowledged everything up to ``seq``: persist the commit point
        (alternate slot, then sync) and reclaim the space. ``next_pos`` (the end of record
        ``seq``, known to the reader) saves a scan."""
        cursor = self.prepare_commit(seq, next_pos)
        if cursor is not None:
            self._persist(cursor)

    # A caller with threads (the gateway's group commit) writes a commit point in three
    # steps, so the sync runs outside the lock its producers append under: ``prepare_*``
    # and ``apply_cursor`` under that lock, ``write_cursor`` (storage I/O) without it. One
    # cursor at a time (it alternates slots), and nothing may persist a cursor in between
    # (``_drop_telemetry``: the caller keeps appends that could need it waiting).

    def prepare_commit(self, seq, next_pos=None):
        """``commit``'s cursor, to write and apply; None when there is nothing to write."""
        if seq < self.tail_seq:
            if seq > self.committed_seq:
                self.committed_seq = seq
            return None
        if seq > self.durable_seq:
            raise ValueError("cannot commit seq %d: only %d is durable" % (seq, self.durable_seq))
        if next_pos is None:
            next_pos = self._find_end(seq)
        return self._prepare_cursor(next_pos, seq + 1, seq, self.dropped)

    def prepare_hint(self):
        """The cursor ``mark_durable(hint=False)`` left due (the new head hint)."""
        return self._prepare_cursor(self.tail_pos, self.tail_seq, self.committed_seq,
                                    self.dropped)

    def _prepare_cursor(self, tail_pos, tail_seq, committed_seq, dropped):
        slot = 1 - self._slot
        data = _cursor_bytes(self._seed, self._gen + 1, tail_pos, tail_seq, committed_seq,
                             dropped, self.last_hlc, self.durable_pos, self.durable_seq + 1,
                             self._durable_crc)
        return (SLOT_OFFSETS[slot], data,
                (slot, self.durable_pos, tail_pos, tail_seq, committed_seq, dropped))

    def write_cursor(self, cursor):
        """Write a prepared cursor and sync it (no journal state read or changed)."""
        self.storage.write(cursor[0], cursor[1])
        # Everything a cursor names is on flash before it is written, so a storage that
        # can sync the head alone (``sync_head``) does: the commit point's sync then does
        # not wait for segment writes another thread has under way (the group commit's).
        sync_head = getattr(self.storage, "sync_head", None)
        if sync_head is not None:
            sync_head()
        else:
            self.storage.sync()

    def apply_cursor(self, cursor):
        """The prepared cursor is on flash: move the tail (reclaim) and the hint."""
        slot, hint_pos, tail_pos, tail_seq, committed_seq, dropped = cursor[2]
        self._gen += 1
        self._slot = slot
        self._hint_pos = hint_pos
        self.tail_pos, self.tail_seq = tail_pos, tail_seq
        self.committed_seq = max(self.committed_seq, committed_seq)
        self.dropped = dropped

    def _find_end(self, seq):
        pos, s = self.tail_pos, self.tail_seq
        walk = self._frames(pos, s, None)
        while s <= seq:
            kind, _, pos, s, _ = next(walk)
            if kind == "end":
                raise ValueError("seq %d is not in the journal (stopped at %d)" % (seq, s))
        return pos

    def _persist_cursor(self, tail_pos, tail_seq, committed_seq, dropped):
        self._persist(self._prepare_cursor(tail_pos, tail_seq, committed_seq, dropped))

    def _persist(self, cursor):
        self.write_cursor(cursor)
        self.apply_cursor(cursor)

    def _drop_telemetry(self, need):
        """Give up the oldest records while they are telemetry, until ``need`` bytes are
        free; the new tail is made durable before anything is overwritten."""
        # Only durable records are walked: queued or in-flight frames are never dropped.
        pos, seq, dropped = self.tail_pos, self.tail_seq, 0
        slack = need + self.segment_size // 4  # amortise the cursor sync over many drops
        walk = self._frames(pos, seq, None)
        while self.data_size - (self.head_pos - pos) < slack and pos < self.durable_pos:
            kind, item, next_pos, next_seq, _ = next(walk)
            if kind == "end" or kind == "record" and item.cls != rec.TELEMETRY:
                break
            pos, seq = next_pos, next_seq
            if kind == "record":
                dropped += 1
        if pos == self.tail_pos:
            return False
        self._persist_cursor(pos, seq, self.committed_seq, self.dropped + dropped)
        return self.free_bytes() >= need

    # ---- reading ---------------------------------------------------------------------

    def read(self, pos=None, seq=None, max_records=256, max_bytes=1 << 20):
        """Durable records from (pos, seq), default the tail; returns (records, pos, seq)
        to continue from. A position behind the tail restarts at the tail."""
        if pos is None or seq is None or seq < self.tail_seq:
            pos, seq = self.tail_pos, self.tail_seq
        out, size, prev = [], 0, None
        while seq <= self.durable_seq and len(out) < max_records and size < max_bytes:
            # The common case first: whole records in the read window, in a tight loop.
            pos, seq, prev, size = self._window_run(out, pos, seq, prev, max_records,
                                                    max_bytes, size)
            if seq > self.durable_seq or len(out) >= max_records or size >= max_bytes:
                break
            kind, item, pos, seq, prev = next(self._frames(pos, seq, prev))
            if kind == "record":
                out.append(item)
                size += len(item.body)
            elif kind == "corrupt":
                from midshift.firmware.core.journal_damage import note_damage
                note_damage(self, item, item)
            elif kind == "end":
                from midshift.firmware.core.journal_damage import skip_damage
                pos, seq = skip_damage(self, pos, seq)
                prev = None
        return out, pos, seq

    def _window_run(self, out, pos, seq, prev, max_records, max_bytes, size):
        """Append to ``out`` the records from ``pos`` on that lie whole in the read window
        and that ``_walk`` would take as they are (records, in seq, each chained to the one
        before, CRC right), up to the limits; stop at the first frame that is anything else
        (a pad, the segment's or the window's end, damage), which ``_walk`` then decides.
        Returns (pos, seq, prev, size) to go on from. A drain reads every record once: per
        frame this is one unpack and one CRC, not the frame iterator's steps."""
        cache = self._cache
        if self._cache_off < 0:
            return pos, seq, prev, size
        delta = pos - (self._phys(pos) - self._cache_off)  # position minus window offset
        # A frame must end within its segment, the ring and the window.
        stop = min(pos - pos % self.segment_size + self.segment_size,
                   self.tail_pos + self.data_size, delta + len(cache))
        last_seq, seed, h_size = self.durable_seq, self._seed, rec.HEADER_SIZE
        unpack, crc32, record = struct.unpack_from, binascii.crc32, rec.Record
        while seq <= last_seq and len(out) < max_records and size < max_bytes:
            start = pos - delta
            if start < 0 or pos + h_size > stop:
                break
            (magic, version, ftype, cls, flags, _r, length, hseq, hlc, prev_crc,
             crc) = unpack(rec.HEADER, cache, start)
            end = pos + h_size + length
            if (hseq != seq or ftype != rec.TYPE_RECORD or magic != rec.MAGIC
                    or version != rec.FRAME_VERSION or cls > rec.TELEMETRY or end > stop
                    or (prev is not None and prev_crc != prev)):
                break
            body = cache[start + h_size:end - delta]
            if crc32(body, crc32(cache[start:start + 32], seed)) & 0xFFFFFFFF != crc:
                break
            out.append(record(seq, cls, hlc, flags, body, pos, end))
            size += length
            prev, pos, seq = crc, end, seq + 1
        return pos, seq, prev, size

    def records(self, from_seq=None):
        """Iterate every durable unacknowledged record (from ``from_seq`` if given)."""
        pos, seq = None, None
        while True:
            batch, pos, seq = self.read(pos, seq)
            for r in batch:
                if from_seq is None or r.seq >= from_seq:
                    yield r
            if not batch:
                return

    def tail(self):
        """(pos, seq) of the oldest unacknowledged record: where a resend starts."""
        return self.tail_pos, self.tail_seq

    def durable(self):
        """(pos, seq): the end of the durable records and the last durable seq."""
        return self.durable_pos, self.durable_seq

    def backlog(self):
        """(records, bytes) durable but not yet acknowledged."""
        return self.durable_seq - self.tail_seq + 1, self.durable_pos - self.tail_pos

    def stats(self):
        n, b = self.backlog()
        return {"epoch": self.epoch, "next_seq": self.next_seq, "durable_seq": self.durable_seq,
                "committed_seq": self.committed_seq, "tail_seq": self.tail_seq,
                "backlog_records": n, "backlog_bytes": b, "free_bytes": self.free_bytes(),
                "dropped": self.dropped, "refused": self.refused,
                "lost_to_damage": self.lost_to_damage}

    def close(self):
        if self._pending:
            self.flush()
        self.storage.close()


def _frame_crc(frame):
    return struct.unpack_from("<I", frame, 32)[0]


def _cursor_bytes(seed, gen, tail_pos, tail_seq, committed_seq, dropped, hlc, hint_pos, hint_seq,
                  hint_crc):
    body = struct.pack(CURSOR, CURSOR_MAGIC, gen, tail_pos, tail_seq, committed_seq, dropped, hlc,
                       hint_pos, hint_seq, hint_crc)
    return body + struct.pack("<I", _crc(body, seed))
