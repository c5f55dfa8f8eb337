"""Shared pieces of the journal correctness tests: a formatted image, a workload that
drives a journal over a CrashStorage while recording what was *reported* (which seqs a
returned flush made durable, and the commit point after every operation, indexed by the
trace length), and the checks every recovered journal must pass against that record.

The model is deliberately independent of the journal's internals: it knows only what the
caller was told (append's seq, flush's return, commit's argument) and the trace length
at each moment, so a power cut after any trace prefix has a precise expectation:

- a record whose flush had returned at or before the cut, and that is not behind the
  recovered tail, is present byte for byte (seq, class, hlc, body);
- the recovered (tail_seq, dropped) is the commit point in force before the operation
  the cut interrupted, or the one that operation was writing;
- the records read back run contiguously from tail_seq to durable_seq, never repeat a
  seq, and every body is one that was appended with that seq; a hole is allowed only
  where the journal reports damage, and never for a record that was reported durable;
- the next seq is above every seq ever reported durable (seqs are never reused).
"""

import random

from midshift.firmware.core import record as rec
from midshift.firmware.core.crash_storage import CrashStorage
from midshift.firmware.core.errors import JournalFull
from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.storage import MemoryStorage
from tests.unit.portable import mem

SEG = 4096
EPOCH = 0x5EED_0001_CAFE
GW = "gw-correct"
H = rec.HEADER_SIZE


def formatted(segments: int, seg: int = SEG) -> bytes:
    m = MemoryStorage(storage_size(seg, segments))
    Journal.format(m, seg, EPOCH, GW)
    return m.image()


def crash_journal(segments: int, seg: int = SEG) -> tuple[CrashStorage, Journal]:
    base = formatted(segments, seg)
    storage = CrashStorage(len(base), base=base)
    return storage, Journal.open(storage)


def pick_size(rng: random.Random, j: Journal, top: int = 600) -> int:
    """0..top bytes, often sized against the room left in the head segment so that the
    frame fits exactly, leaves under a header's worth (an implicit skip next), or does not
    fit (a pad frame, or an implicit skip when the rest is under 36 bytes)."""
    room = j.segment_size - j.head_pos % j.segment_size
    r = rng.random()
    if r < 0.08:
        return 0
    if r < 0.16 and 0 <= room - H <= top:
        return room - H  # exact fit
    if r < 0.24 and 0 <= room - H - 35 and room - H - 1 <= top:
        return room - H - rng.randint(1, 35)  # leaves 1..35 bytes: implicit skip
    if r < 0.34 and room - H + 1 <= top:
        return rng.randint(max(0, room - H + 1), top)  # does not fit: pad
    return rng.choice((rng.randint(1, 60), rng.randint(60, 300), rng.randint(300, top)))


class History:
    """What one life of a journal reported, indexed by the trace length of its storage."""

    def __init__(self, known=None, tail_seq=1, dropped=0, floor=0):
        # seq -> (cls, hlc, body) for every seq appended in this life, plus the records a
        # recovery handed over (durable from trace index 0 on)
        self.appended: dict[int, tuple[int, int, bytes]] = dict(known or {})
        self.base = set(self.appended)
        self.flushed: list[tuple[int, list[int]]] = []  # (trace len when flush returned, seqs)
        # (trace len before the op, after it, tail_seq, dropped) after every operation
        self.states: list[tuple[int, int, int, int]] = [(0, 0, tail_seq, dropped)]
        self.floor = floor  # highest seq reported durable in earlier lives
        self.unflushed: list[int] = []

    def durable_at(self, n: int) -> set[int]:
        out = set(self.base)
        for t, seqs in self.flushed:
            if t <= n:
                out.update(seqs)
        return out

    def states_at(self, n: int) -> set[tuple[int, int]]:
        """Commit points (tail_seq, dropped) that may be in force after a cut at ``n``."""
        sure = [s for s in self.states if s[1] <= n][-1]
        out = {(sure[2], sure[3])}
        for before, after, tail, dropped in self.states:
            if before < n < after:  # the cut interrupted this operation
                out.add((tail, dropped))
        return out

    def note(self, before: int, after: int, j: Journal) -> None:
        self.states.append((before, after, j.tail_seq, j.dropped))


def successor(j: Journal, hist: History, n: int, got: dict) -> History:
    """The history of the next life of a journal recovered after a cut at ``n``: what it
    read back is durable from now on; seqs it did not return may be appended again, but
    none at or below a seq reported durable before the cut."""
    return History(got, j.tail_seq, j.dropped, floor=max(hist.durable_at(n) | {hist.floor}))


def check_journal(j: Journal, hist: History, n: int) -> dict:
    """Every invariant of a journal opened after a cut at trace prefix ``n`` (or of the
    live journal, with ``n`` the whole trace). Returns {seq: (cls, hlc, body)} read."""
    durable = hist.durable_at(n)
    assert (j.tail_seq, j.dropped) in hist.states_at(n), (
        f"prefix {n}: commit point (tail {j.tail_seq}, dropped {j.dropped}) was never "
        f"in force; expected one of {sorted(hist.states_at(n))}")
    got: dict[int, tuple[int, int, bytes]] = {}
    last = 0
    for r in j.records():
        assert r.seq > last, f"prefix {n}: seq {r.seq} after {last} (repeat or out of order)"
        last = r.seq
        got[r.seq] = (r.cls, r.hlc, bytes(r.body))
        assert hist.appended.get(r.seq) == got[r.seq], (
            f"prefix {n}: record {r.seq} was never appended with that class/hlc/body")
    damaged = set(j.recovery.corrupt_seqs if j.recovery else ())
    damaged |= {s for a, b in j.damaged for s in range(a, b + 1)}
    assert set(got) == set(range(j.tail_seq, j.durable_seq + 1)) - damaged, (
        f"prefix {n}: read {sorted(got)[:3]}..{sorted(got)[-3:]} is not the run "
        f"{j.tail_seq}..{j.durable_seq} less reported damage {sorted(damaged)[:5]}")
    assert not (damaged & durable), (
        f"prefix {n}: records {sorted(damaged & durable)[:5]} reported durable are damaged")
    lost = sorted(s for s in durable if s >= j.tail_seq and s not in got)
    assert not lost, f"prefix {n}: durable records {lost[:5]} lost (tail {j.tail_seq})"
    top_hlc = max([hist.appended[s][1] for s in durable] + [0])
    assert j.last_hlc >= top_hlc, f"prefix {n}: the clock went back to {j.last_hlc}"
    floor = max(durable | {hist.floor})
    assert j.next_seq > floor, f"prefix {n}: next seq {j.next_seq} would reuse {floor}"
    return got


def check_image(image: bytes, hist: History, n: int) -> tuple[Journal, dict]:
    j = Journal.open(mem(image))  # must never raise on a cut image
    r = j.recovery
    assert r.first_seq == j.tail_seq and r.last_seq == j.durable_seq == j.next_seq - 1
    assert set(r.as_dict()) >= {"records", "cut_pos", "cut_reason", "corrupt_seqs",
                                "cursor_fallback"}
    got = check_journal(j, hist, n)
    again = Journal.open(mem(j.storage.image()))  # recovery of a recovered journal
    assert again.recovery.cut_reason is None, "the torn tail was not repaired"
    assert (again.tail_seq, again.next_seq, again.dropped) == (j.tail_seq, j.next_seq, j.dropped)
    assert {x.seq: (x.cls, x.hlc, bytes(x.body)) for x in again.records()} == got
    return j, got


class Workload:
    """Drives one life of a journal over a CrashStorage, recording a History, and checks
    the live invariants as it goes (append seqs consecutive, flush returns the last seq,
    a commit moves the tail to just past it, a tail moved by an append passed only
    telemetry and counted each record in ``dropped``)."""

    def __init__(self, storage: CrashStorage, j: Journal, hist: History, rng: random.Random,
                 telemetry: float = 0.3, top: int = 600):
        self.storage, self.j, self.hist, self.rng = storage, j, hist, rng
        self.telemetry, self.top = telemetry, top
        self.hlc = max(j.last_hlc, 1)

    def _n(self) -> int:
        return len(self.storage.trace)

    def append(self, size=None, cls=None) -> int | None:
        j, hist, rng = self.j, self.hist, self.rng
        size = pick_size(rng, j, self.top) if size is None else size
        cls = (rec.TELEMETRY if rng.random() < self.telemetry else rec.TXN) if cls is None else cls
        body = rng.randbytes(size)
        self.hlc += rng.randint(0, 3) << 16 | rng.randint(0, 5)
        before, tail, dropped, expect = self._n(), j.tail_seq, j.dropped, j.next_seq
        try:
            seq = j.append(body, cls, self.hlc)
        except JournalFull:
            seq = None
        if j.tail_seq != tail:  # telemetry gave up its oldest records
            assert cls == rec.TELEMETRY, "a txn append moved the tail"
            # (seqs a recovery found damaged are passed over, and not counted as dropped)
            passed = [s for s in range(tail, j.tail_seq) if s in hist.appended]
            assert all(hist.appended[s][0] == rec.TELEMETRY for s in passed), (
                f"telemetry evicted a txn record among {passed}")
            assert j.dropped - dropped == len(passed), "dropped does not count the records"
        else:
            assert j.dropped == dropped
        if seq is not None:
            assert seq == expect, f"append returned seq {seq}, expected {expect}"
            hist.appended[seq] = (cls, self.hlc, body)
            hist.unflushed.append(seq)
        hist.note(before, self._n(), j)
        return seq

    def flush(self) -> None:
        j, hist = self.j, self.hist
        before = self._n()
        assert j.flush() == j.next_seq - 1
        hist.flushed.append((self._n(), hist.unflushed))
        hist.unflushed = []
        hist.note(before, self._n(), j)

    def commit(self, upto=None, with_pos=None) -> None:
        """Acknowledge up to ``upto`` (default: a random record the reader got), telling
        the journal where that record ends half of the time, as the forwarder does."""
        j, hist, rng = self.j, self.hist, self.rng
        if j.durable_seq < j.tail_seq:
            return
        records = list(j.records())
        if upto is None:
            if not records:
                return
            upto = rng.choice(records).seq
        with_pos = rng.random() < 0.5 if with_pos is None else with_pos
        ends = {r.seq: r.end_pos for r in records}
        next_pos = ends[upto] if with_pos and upto in ends else None
        before = self._n()
        j.commit(upto, next_pos)
        assert j.tail_seq == upto + 1 and j.committed_seq >= upto
        hist.note(before, self._n(), j)

    def run(self, ops: int, commit_p: float = 0.25, max_group: int = 20) -> None:
        """``ops`` rounds of: a group of 1..max_group appends then a flush, and sometimes
        a commit of an acked prefix (always when an append was refused)."""
        rng = self.rng
        for _ in range(ops):
            refused = False
            for _ in range(rng.randint(1, max_group)):
                refused |= self.append() is None
            self.flush()
            if refused or rng.random() < commit_p:
                self.commit()
