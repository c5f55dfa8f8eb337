"""The journal's damage path: what reading does when a frame is not whole (a torn tail,
a flipped bit, a lost stretch), apart from ``journal.py`` because a journal in good order
never runs it. ``Journal._walk`` and ``Journal.read`` import it when they meet damage, and
so does opening (``journal_open.py``); a MicroPython node drops it from RAM after boot
(``midshift/firmware/mpy/boot.py``'s ``BOOT_ONLY``) and loads it again only if damage turns up.

Each function takes the journal (``j``) whose log it examines.
"""

from midshift.firmware.core import record as rec


def cut(j, pos, seq, room, raw, h, computed):
    """The end of the log at a frame that is not whole: how many bytes to clear, why."""
    limit = j.tail_pos + j.data_size - pos  # never past the tail: that is live data
    if h.magic != rec.MAGIC:
        # Normally zeros or the middle of an older lap's frame (the clean end); but a
        # frame that is whole once its magic is restored lost a bit there.
        f = rec.FrameHeader(rec.MAGIC + bytes(raw[2:]))
        if not f.plausible() or f.seq != seq or f.length > room - rec.HEADER_SIZE:
            return ("end", 0, None)
        body = j._read(j._phys(pos) + rec.HEADER_SIZE, f.length, room - rec.HEADER_SIZE)
        if not f.crc_ok(j._seed, body):
            return ("end", 0, None)
        return ("end", min(rec.HEADER_SIZE + f.length, limit), "bad magic")
    if computed is None:
        return ("end", min(rec.HEADER_SIZE, room, limit), "bad header")
    return ("end", min(rec.HEADER_SIZE + h.length, limit), "bad crc")


def resync(j, pos, seq, room, h, computed):
    """Find the whole frame that follows a damaged one at ``pos``: later in the same
    segment (any byte offset, since the damaged length cannot be trusted) or at the
    start of the next. It must chain to the damaged frame and carry ``seq + 1`` (the
    damaged frame was record ``seq``) or ``seq`` at a segment start (it was a pad).
    Returns ("corrupt", link, pos) or ("pad", link, pos), or None: the torn tail."""
    links = (h.crc, computed) if computed is not None else (h.crc,)
    span = bytes(j.storage.read(j._phys(pos), room))
    i = span.find(rec.MAGIC, 1)
    while 0 < i <= room - rec.HEADER_SIZE:
        found = successor(j, pos + i, seq, links)
        if found is not None:
            return found
        i = span.find(rec.MAGIC, i + 1)
    nxt = pos + room
    if nxt - j.tail_pos < j.data_size:
        return successor(j, nxt, seq, links)
    return None


def successor(j, pos, seq, links):
    room = j._seg_room(pos)
    h = rec.FrameHeader(j.storage.read(j._phys(pos), rec.HEADER_SIZE))
    if not h.plausible() or h.prev_crc not in links or h.length > room - rec.HEADER_SIZE:
        return None
    at_start = pos % j.segment_size == 0
    if h.seq != seq + 1 and not (h.seq == seq and at_start):
        return None
    body = j.storage.read(j._phys(pos) + rec.HEADER_SIZE, h.length)
    if not h.crc_ok(j._seed, body):
        return None
    return ("corrupt" if h.seq == seq + 1 else "pad", h.prev_crc, pos)


def skip_damage(j, pos, seq):
    """A frame that should be durable is unreadable and the next one does not chain to
    it: look for the next segment that starts with a later record, count what was lost
    and go on from there, so one damaged spot does not stall everything behind it.
    Returns the (pos, seq) to continue from."""
    p = pos - pos % j.segment_size + j.segment_size
    while p < j.durable_pos:
        raw = j._read(j._phys(p), rec.HEADER_SIZE, j.segment_size)
        h = rec.FrameHeader(raw)
        if h.plausible() and seq <= h.seq <= j.durable_seq + 1:
            step = j._walk(p, h.seq, None, resync=False)
            if step[0] in ("record", "pad"):
                note_damage(j, seq, h.seq - 1)
                return p, h.seq
        p += j.segment_size
    # Nothing readable up to the head: count the rest as lost rather than stall on it.
    note_damage(j, seq, j.durable_seq)
    return j.durable_pos, j.durable_seq + 1


def note_damage(j, first, last):
    """Count records lost to damage found while reading, once each however often the
    same stretch is read again (a resend re-reads it), in whatever order found."""
    fresh = [(first, last)]
    for a, b in j.damaged:  # cut the already-counted ranges out of the new one
        nxt = []
        for lo, hi in fresh:
            if hi < a or lo > b:
                nxt.append((lo, hi))
                continue
            if lo < a:
                nxt.append((lo, a - 1))
            if hi > b:
                nxt.append((b + 1, hi))
        fresh = nxt
    for lo, hi in fresh:
        j.damaged.append((lo, hi))
        j.lost_to_damage += hi - lo + 1
    while len(j.damaged) > 64:  # bounded: the counter keeps the total
        j.damaged.pop(0)
