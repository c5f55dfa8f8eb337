"""The journal's core cases: append, flush and reopen; a power cut after every trace
prefix; many laps of the ring; a full journal; a flipped bit. Deeper checks, CPython
only: test_journal_ring.py, test_journal_crash.py, test_journal_props.py."""

from midshift.firmware.core import record as rec
from midshift.firmware.core.crash_storage import CrashStorage
from midshift.firmware.core.errors import JournalFull
from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.storage import MemoryStorage
from tests.unit.portable import SCALE, SEG, Rand, body_for, fresh, mem

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_journal_append_flush_reopen():
    st, j = fresh()
    bodies = {}
    for i in range(60):
        seq = j.append(body_for(i, i * 3 % 200), rec.TXN, i)
        bodies[seq] = body_for(i, i * 3 % 200)
    assert j.flush() == 60
    j2 = Journal.open(st)
    got = {}
    for r in j2.records():
        got[r.seq] = r.body
    assert got == bodies
    assert j2.next_seq == 61


def test_journal_crash_at_every_prefix():
    blank = MemoryStorage(storage_size(SEG, 4))
    Journal.format(blank, SEG, 0xABCDEF, "gw-mpy")
    st = CrashStorage(blank.size(), base=blank.image())
    j = Journal.open(st)
    reported = []  # (trace length once its flush returned, seq, body)
    pending = []
    rnd = Rand(7)
    for i in range(40 // SCALE):
        b = body_for(i, rnd.randrange(300))
        pending.append((j.append(b, rec.TXN, i), b))
        if i % 3 == 2:
            j.flush()
            for s, b2 in pending:
                reported.append((len(st.trace), s, b2))
            pending = []
    for n in range(len(st.trace) + 1):
        for tear in (False, True):
            jj = Journal.open(mem(st.image_at(n, Rand(n), tear=tear)))
            got = {}
            for r in jj.records():
                assert r.seq not in got
                got[r.seq] = r.body
            durable = [s for t, s, b in reported if t <= n]
            for t, s, b in reported:
                if t <= n:
                    assert got.get(s) == b
            assert jj.next_seq > max(durable + [0])


def test_journal_wraps_many_times():
    st, j = fresh(2)
    last = 0
    for i in range(2000 // SCALE):
        seq = j.append(body_for(i, 100 + i % 50), rec.TXN, i)
        assert seq == last + 1
        last = seq
        if i % 10 == 9:
            j.flush()
            j.commit(seq - 5)
    j.flush()
    seqs = [r.seq for r in j.records()]
    assert seqs == list(range(last - 5 + 1 - 5, last + 1))[-len(seqs):]
    assert min(seqs) > last - 20
    j2 = Journal.open(st)
    assert [r.seq for r in j2.records()] == seqs


def test_journal_full_refuses_txn_and_drops_telemetry():
    st, j = fresh(3)
    n = 0
    try:
        while n < 10000:
            j.append(body_for(n, 200), rec.TXN)
            n += 1
    except JournalFull:
        pass
    j.flush()
    assert 0 < n < 10000 and j.refused == 1
    assert len(list(j.records())) == n
    st2, t = fresh(3)
    for i in range(500 // SCALE):
        t.append(body_for(i, 200), rec.TELEMETRY)
        if i % 5 == 0:
            t.flush()
    t.flush()
    kept = [r.seq for r in t.records()]
    assert t.dropped > 0 and kept[-1] == 500 // SCALE and len(kept) + t.dropped == 500 // SCALE
    assert Journal.open(st2).dropped == t.dropped


def test_bit_flip_is_detected():
    st, j = fresh()
    for i in range(30):
        j.append(body_for(i, 120), rec.TXN)
    j.flush()
    img = bytearray(st.image())
    img[4096 + 3 * 156 + 60] ^= 0x10  # inside the fourth record's body
    j2 = Journal.open(mem(bytes(img)))
    seqs = [r.seq for r in j2.records()]
    assert 4 not in seqs
    # Found at open (when the damage lies past the recovery hint) or when read; counted once.
    assert j2.damaged == [(4, 4)] and j2.lost_to_damage == 1
    for r in j2.records():
        assert r.body == body_for(r.seq - 1, 120)
