"""Power cuts and bit rot against the journal.

Crash simulation in the manner of SQLite's crash-testing file layer: a workload runs on a
CrashStorage while journal_workload.History records what each returned call reported, then
the medium is rebuilt after EVERY prefix of the write/sync trace (whole, last write torn,
unsynced writes lost, unsynced writes reordered with one torn) and the recovered journal
is checked against that record (journal_workload.check_journal lists the invariants), then
recovered again after a second power cut. Torn commit points must fall back to the older
slot. Flipped bits must never come back as data, must be reported, and a flip inside
one record must not cost the records after it.
"""

import random

import pytest

from midshift.firmware.core import record as rec
from midshift.firmware.core.crash_storage import CrashStorage, PowerCut
from midshift.firmware.core.journal import DATA_START, SLOT_OFFSETS, SUPER_SIZE, Journal
from midshift.firmware.core.journal_open import JournalCorrupt, JournalUnformatted
from tests.unit.journal_workload import (
    SEG,
    History,
    Workload,
    check_image,
    check_journal,
    crash_journal,
    formatted,
    mem,
    successor,
)

VARIANTS = {
    "whole": {},
    "torn": {"tear": True},
    "lost": {"lose_unsynced": True, "tear": True},
    "reordered": {"reorder": True, "lose_unsynced": True, "tear": True},
}


def _life(seed: int, segments: int, rounds: int, top: int = 600):
    storage, j = crash_journal(segments)
    rng = random.Random(seed)
    w = Workload(storage, j, History(), rng, top=top)
    w.run(rounds)
    return storage, j, w.hist


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed, segments, rounds, top", [
    (1, 4, 40, 600), (2, 4, 40, 600), (3, 8, 60, 600), (4, 4, 60, 600), (5, 2, 50, 600),
    (6, 3, 50, 600), (7, 2, 80, 600), (8, 5, 80, 600),
    (9, 4, 40, 1500),  # bodies up to 1500 bytes: few to a segment, a pad at most ends
])
def test_power_cut_after_every_trace_prefix(seed: int, segments: int, rounds: int, top: int,
                                            variant: str) -> None:
    storage, j, hist = _life(seed, segments, rounds, top)
    # The workload must reach the interesting places: it wrapped the ring, padded
    # segment ends, was refused for want of room, and moved the tail both ways (acks,
    # and telemetry giving up its oldest records).
    assert j.head_pos > 3 * j.data_size, "the workload never wrapped the ring"
    assert len(hist.flushed) >= 30 and len(storage.trace) >= 150
    assert j.refused > 0 and j.dropped > 0 and j.committed_seq > 0
    pads = sum(1 for op in storage.trace if op[0] == "w" and b"MR\x01\x02" in op[2])
    assert pads >= 3, "no pad frames were written"
    rng = random.Random(seed * 7919 + len(variant))
    for n in range(len(storage.trace) + 1):
        check_image(storage.image_at(n, rng, **VARIANTS[variant]), hist, n)


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15, 16])
def test_recovered_journal_survives_a_second_and_third_power_cut(seed: int) -> None:
    storage, _, hist = _life(seed, 4, 40)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(storage.trace) + 1), 12)) + [len(storage.trace)]
    for n in cuts:
        variant = VARIANTS[rng.choice(sorted(VARIANTS))]
        first, got = check_image(storage.image_at(n, rng, **variant), hist, n)
        hist2 = successor(first, hist, n, got)
        second = CrashStorage(first.storage.size(), base=first.storage.image())
        j2 = Journal.open(second)
        w = Workload(second, j2, hist2, rng)
        w.commit()  # the ledger caught up with some of the resent records
        w.run(10)
        assert min(s for _, seqs in hist2.flushed for s in seqs) > hist2.floor
        for m in range(len(second.trace) + 1):
            v = VARIANTS[rng.choice(sorted(VARIANTS))]
            j3, got3 = check_image(second.image_at(m, rng, **v), hist2, m)
        # a third life from the last recovered state still keeps everything
        hist3 = successor(j3, hist2, m, got3)
        third = CrashStorage(j3.storage.size(), base=j3.storage.image())
        w3 = Workload(third, Journal.open(third), hist3, rng)
        w3.run(4)
        for k in range(0, len(third.trace) + 1, 3):
            check_image(third.image_at(k, rng, tear=True), hist3, k)


def _scenario_until(kind: str):
    """A journal about to write a commit point of ``kind``; returns (storage, journal,
    workload, the operation that writes it)."""
    rng = random.Random(kind)
    if kind == "drop":
        storage, j = crash_journal(2)
        w = Workload(storage, j, History(), rng, telemetry=1.0)
        size = 300 + rec.HEADER_SIZE
        while True:
            room = j.segment_size - j.head_pos % j.segment_size
            if j.free_bytes() < size + (room if size > room else 0):
                return storage, j, w, lambda: w.append(300)
            w.append(300)
            w.flush()
    storage, j = crash_journal(4)
    w = Workload(storage, j, History(), rng, telemetry=0.0)
    for _ in range(30):
        w.append(100)
    w.flush()  # 4080 bytes: no hint written yet
    if kind == "first commit (slot B)":
        return storage, j, w, lambda: w.commit(5)
    w.commit(5)
    if kind == "second commit (slot A)":
        return storage, j, w, lambda: w.commit(10, with_pos=True)
    w.commit(10)
    if kind == "third commit, all acked":
        return storage, j, w, lambda: w.commit(30)
    for _ in range(45):
        w.append(100)
    assert kind == "head hint after a flush"
    return storage, j, w, w.flush


@pytest.mark.parametrize("kind", ["first commit (slot B)", "second commit (slot A)",
                                  "third commit, all acked", "head hint after a flush",
                                  "drop"])
def test_torn_commit_point_falls_back_to_the_older_slot(kind: str) -> None:
    storage, j, w, op = _scenario_until(kind)
    before = len(storage.trace)
    old_state = (j.tail_seq, j.dropped)
    old_image = storage.image()
    op()
    new_state = (j.tail_seq, j.dropped)
    assert new_state != old_state or kind == "head hint after a flush"
    idx = [i for i in range(before, len(storage.trace)) if storage.trace[i][0] == "w"
           and storage.trace[i][1] in SLOT_OFFSETS]
    assert len(idx) == 1, "one commit point per operation"
    _, off, data = storage.trace[idx[0]]
    fell_back = 0
    for k in range(len(data) + 1):
        torn = CrashStorage(storage.size(), base=storage.base)
        torn.trace = storage.trace[:idx[0]] + [("w", off, data[:k])]
        image = torn.image_at(len(torn.trace))
        j2 = Journal.open(mem(image))
        slot = image[off:off + len(data)]
        if slot == data:
            assert (j2.tail_seq, j2.dropped) == new_state
        else:
            assert (j2.tail_seq, j2.dropped) == old_state, f"cut at byte {k} of the slot"
            torn_slot = slot != old_image[off:off + len(data)]
            assert j2.recovery.cursor_fallback == torn_slot, f"cut at byte {k}"
            fell_back += torn_slot
        # no unacknowledged record is lost, whichever commit point won
        got = check_journal(j2, w.hist, idx[0] + 1)
        assert set(got) >= {s for s in w.hist.durable_at(before) if s >= j2.tail_seq}
        # after the fallback, the next commit point wins over both older ones
        if j2.durable_seq >= j2.tail_seq:
            j2.commit(j2.durable_seq)
            j3 = Journal.open(mem(j2.storage.image()))
            assert (j3.tail_seq, j3.recovery.cursor_fallback) == (j2.durable_seq + 1, False)
    assert fell_back >= len(data) - 8, "most cuts tear the slot: each must be reported"


@pytest.mark.parametrize("budget_step", [97, 211])
def test_live_power_cut_inside_a_flush(budget_step: int) -> None:
    """cut_after_bytes tears the write that crosses the budget and raises PowerCut: the
    flush never returns, and what the reopened journal holds of it is a whole-record
    prefix of the group, never a partial record."""
    _, j0 = crash_journal(4)
    bodies = {}
    for i in range(20):
        bodies[j0.append(bytes([i + 1]) * (30 * i), rec.TXN, i)] = bytes([i + 1]) * (30 * i)
    j0.flush()
    base = j0.storage.image()
    for budget in range(0, 7000, budget_step):
        storage = CrashStorage(len(base), base=base)
        j = Journal.open(storage)  # opening writes a commit point: cut only what follows
        storage.cut_after_bytes = storage.bytes_written + budget
        group = {}
        try:
            for i in range(25):
                group[j.append(bytes([200 - i]) * (100 + 7 * i), rec.TELEMETRY, 99)] = (
                    bytes([200 - i]) * (100 + 7 * i))
            j.flush()
            returned = True
        except PowerCut:
            returned = False
        k = Journal.open(mem(storage.image()))
        got = {r.seq: bytes(r.body) for r in k.records()}
        assert all(got[s] == b for s, b in bodies.items()), f"budget {budget}: lost a record"
        new = sorted(s for s in got if s in group)
        assert new == list(range(21, 21 + len(new))), f"budget {budget}: not a prefix"
        assert all(got[s] == group[s] for s in new)
        if returned:
            assert len(new) == 25


def test_a_frame_left_from_before_a_crash_is_not_taken_for_the_next_record() -> None:
    """Life 1 writes A, a pad and B (B opening the next segment, its own write); power
    fails and only B's write survives. Life 2 appends A' (same seq as A) and C (same seq
    as B), and power fails again with only A' and its pad written. B now sits exactly
    where C belongs, with C's seq and a valid CRC: only the prev_crc chain (B chains to
    the first life's pad, not this one's) keeps it from coming back as C."""
    storage, j = crash_journal(4)
    w = Workload(storage, j, History(), random.Random(5), telemetry=0.0)
    while SEG - j.head_pos % SEG > 900:
        w.append(400)
    w.flush()
    tail_room = SEG - j.head_pos % SEG
    before = len(storage.trace)
    w.append(tail_room - rec.HEADER_SIZE - 100)  # A: leaves 100 bytes, a pad follows
    w.append(300)  # B: opens the next segment
    w.flush()
    writes = [i for i in range(before, len(storage.trace)) if storage.trace[i][0] == "w"
              and storage.trace[i][1] >= DATA_START]
    assert len(writes) == 2 and storage.trace[writes[1]][1] % SEG == DATA_START % SEG
    cut = CrashStorage(storage.size(), base=storage.base)
    cut.trace = storage.trace[:before] + [storage.trace[writes[1]]]  # A and pad lost
    first, got = check_image(cut.image_at(len(cut.trace)), w.hist, before)
    assert first.next_seq == j.next_seq - 2
    hist2 = successor(first, w.hist, before, got)
    second = CrashStorage(first.storage.size(), base=first.storage.image())
    w2 = Workload(second, Journal.open(second), hist2, random.Random(6), telemetry=0.0)
    w2.append(tail_room - rec.HEADER_SIZE - 100)  # A': same place, same seq, other bytes
    w2.append(300)  # C
    w2.flush()
    writes = [i for i in range(len(second.trace)) if second.trace[i][0] == "w"
              and second.trace[i][1] >= DATA_START]
    again = CrashStorage(second.size(), base=second.base)
    again.trace = [second.trace[writes[0]]]  # A' and its pad written, C lost
    k, got2 = check_image(again.image_at(1), hist2, 0)
    assert k.durable_seq == first.next_seq, "A' is the last record; B is a ghost"


def test_a_frame_left_from_before_a_crash_behind_an_identical_pad_stays_dead() -> None:
    """As above, but nothing differs before the ghost: life 1's flush is a pad (end of a
    segment) and B (start of the next), and only B's write survives; recovery ends the
    log before the pad and hands B's seq out again. Life 2 appends C, which also does not
    fit, so the same pad is written: a pad's bytes are fixed by its seq and prev_crc, so
    it is byte-identical to life 1's, and B chains to it. If only the pad's write then
    survives, B must still not come back as C's seq: recovery already declared it gone,
    and its event (never acknowledged, so its device retries it) would reach the ledger
    twice."""
    storage, j = crash_journal(4)
    w = Workload(storage, j, History(), random.Random(5), telemetry=0.0)
    while SEG - j.head_pos % SEG > 300:
        w.append(200)
    w.flush()
    before = len(storage.trace)
    ghost = w.append(400)  # does not fit: pad, then B at the next segment's start
    w.flush()
    writes = [i for i in range(before, len(storage.trace)) if storage.trace[i][0] == "w"
              and storage.trace[i][1] >= DATA_START]
    assert [len(storage.trace[i][2]) for i in writes] == [rec.HEADER_SIZE, 436]
    cut = CrashStorage(storage.size(), base=storage.base)
    cut.trace = storage.trace[:before] + [storage.trace[writes[1]]]  # the pad is lost
    first, got = check_image(cut.image_at(len(cut.trace)), w.hist, before)
    assert first.next_seq == ghost
    hist2 = successor(first, w.hist, before, got)
    second = CrashStorage(first.storage.size(), base=first.storage.image())
    w2 = Workload(second, Journal.open(second), hist2, random.Random(6), telemetry=0.0)
    assert w2.append(350) == ghost  # C: the same seq, another event
    w2.flush()
    writes = [i for i in range(len(second.trace)) if second.trace[i][0] == "w"
              and second.trace[i][1] >= DATA_START]
    # (today this pad write is byte-identical to the one life 1 lost at the same place)
    again = CrashStorage(second.size(), base=second.base)
    again.trace = [second.trace[writes[0]]]  # the pad written, C lost
    k, _ = check_image(again.image_at(1), hist2, 0)
    assert k.durable_seq == ghost - 1


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_power_cut_during_format_and_reformat(variant: str) -> None:
    """Format cut at any point leaves storage that open either refuses (blank or torn
    superblock) or opens as an empty journal; a reformat with a new epoch over a used
    journal never shows an old record, however it is cut."""
    used = mem(formatted(3))
    j = Journal.open(used)
    for i in range(60):
        j.append(bytes([i]) * 150, rec.TXN, i)
    j.flush()
    j.commit(20)
    rng = random.Random(variant)
    for base in (bytes(used.size()), used.image()):
        storage = CrashStorage(len(base), base=base)
        Journal.format(storage, SEG, 0xABCDEF0123, "gw-new")
        for n in range(len(storage.trace) + 1):
            image = storage.image_at(n, rng, **VARIANTS[variant])
            try:
                k = Journal.open(mem(image))
            except (JournalUnformatted, JournalCorrupt):
                assert n < len(storage.trace), "a finished format must open"
                continue
            if k.epoch != 0xABCDEF0123:  # the new superblock did not land: old journal
                assert image[:SUPER_SIZE] == base[:SUPER_SIZE]
                continue
            assert list(k.records()) == [] and (k.next_seq, k.tail_seq) == (1, 1)
            seq = k.append(b"new", rec.TXN, 1)
            k.flush()
            assert seq == 1
            assert [bytes(r.body) for r in Journal.open(mem(k.storage.image())).records()] == [
                b"new"]


def test_a_torn_last_frame_of_a_segment_is_a_cut_tail_not_damage() -> None:
    """The last frame of a segment (under a header's worth of room after it) is torn by a
    power cut. Nothing follows it that could chain to it, so it is the torn tail: cut and
    zeroed as such, not reported as bit rot in a durable record (corrupt_seqs and
    lost_to_damage are what an operator reads as "the flash is failing")."""
    storage, j = crash_journal(4)
    w = Workload(storage, j, History(), random.Random(9), telemetry=0.0)
    while SEG - j.head_pos % SEG > 700:
        w.append(300)
    w.flush()
    room = SEG - j.head_pos % SEG
    before = len(storage.trace)
    seq = w.append(room - rec.HEADER_SIZE - 10)  # leaves 10 bytes: an implicit skip
    w.flush()
    _, off, data = storage.trace[before]
    assert len(data) == room - 10
    for k in range(rec.HEADER_SIZE, len(data), 37):
        torn = CrashStorage(storage.size(), base=storage.base)
        torn.trace = storage.trace[:before] + [("w", off, data[:k])]
        r, _ = check_image(torn.image_at(len(torn.trace)), w.hist, before + 1)
        assert (r.recovery.corrupt_seqs, r.lost_to_damage, r.damaged) == ([], 0, []), (
            f"torn after {k} bytes: reported as damage {r.recovery.as_dict()}")
        assert r.recovery.cut_reason == "bad crc" and r.next_seq == seq


# ---- bit flips -------------------------------------------------------------------------

def _flushed_journal(seed: int, segments: int = 4):
    """A wrapped journal whose tail is mid-ring, every record durable and unacked, the
    last commit point's hint some way behind the head (so both the scan at open and the
    read path see stored frames). Returns (image, {seq: (cls, hlc, body)}, journal, hint
    position)."""
    rng = random.Random(seed)
    storage, j = crash_journal(segments)
    w = Workload(storage, j, History(), rng, telemetry=0.2, top=400)
    w.run(12, commit_p=0.0)
    w.commit(j.durable_seq)  # everything acked: the tail is somewhere mid-ring
    w.run(5, commit_p=0.0)
    w.commit(j.tail_seq + 3)  # the hint is now at the head
    hint = j.durable_pos
    for _ in range(15):  # less than a segment: no new hint, so open scans these
        w.append(rng.randint(20, 150))
    w.flush()
    assert j.head_pos > j.data_size and j.durable_pos - hint < j.segment_size
    image = storage.image()
    durable = {s: w.hist.appended[s] for s in range(j.tail_seq, j.durable_seq + 1)}
    return image, durable, j, hint


def _frames(j: Journal):
    """(pos, seq, kind, size) of every stored frame from the tail to the durable head,
    pads included (a gap of a header or more between two records holds a pad)."""
    out, end = [], j.tail_pos
    for r in j.records():
        if r.pos - end >= rec.HEADER_SIZE:
            out.append((end, r.seq, "pad", rec.HEADER_SIZE))
        out.append((r.pos, r.seq, "record", r.end_pos - r.pos))
        end = r.end_pos
    return out


def _unreported(k: Journal, missing: set) -> list:
    """The seqs of ``missing`` the journal gave no account of: not listed as corrupt or
    damaged, and not behind a reported cut of the torn tail."""
    seqs = set(k.recovery.corrupt_seqs) | {s for a, b in k.damaged for s in range(a, b + 1)}
    cut = k.recovery.last_seq if k.recovery.cut_reason is not None else 1 << 62
    return sorted(s for s in missing if s not in seqs and s <= cut)


def _flip(image: bytes, j: Journal, pos: int, bit: int) -> Journal:
    damaged = bytearray(image)
    damaged[DATA_START + pos % j.data_size] ^= 1 << bit
    return Journal.open(mem(bytes(damaged)))  # never raises on damage


@pytest.mark.parametrize("seed", range(6))
def test_random_bit_flips_are_never_returned_and_always_reported(seed: int) -> None:
    image, durable, j, _ = _flushed_journal(seed)
    frames = _frames(j)
    rng = random.Random(seed)
    for _ in range(60):
        pos, seq, kind, size = rng.choice(frames)
        at = pos + rng.randrange(size)
        k = _flip(image, j, at, rng.randrange(8))
        got = {r.seq: (r.cls, r.hlc, bytes(r.body)) for r in k.records()}
        for s, v in got.items():
            assert durable[s] == v, f"flip at {at}: record {s} came back changed"
        missing = set(durable) - set(got)
        assert not _unreported(k, missing), f"flip at {at}: {_unreported(k, missing)} lost silently"
        if kind == "record" and at - pos >= rec.HEADER_SIZE:  # a body bit: resync applies
            assert missing == {seq}, f"body flip in {seq} lost {sorted(missing)[:6]}"


# Header fields of a record: a flip in any of them leaves the frame's length intact, so
# the next frame still starts where it did and chains to this one's stored CRC: the
# journal can skip the one damaged record and keep the rest (docs/journal-format.md,
# recovery step 4). The length field is the exception (see the seq-reuse test below).
FIELDS = [("magic", 0), ("magic", 1), ("version", 2), ("type", 3), ("class", 4),
          ("flags", 5), ("reserved", 6), ("seq", 12), ("seq", 16), ("hlc", 20),
          ("prev_crc", 28), ("crc", 32), ("crc", 35), ("body", 36)]


@pytest.mark.parametrize("where", ["scanned at open", "read after open"])
@pytest.mark.parametrize("bit", [0, 5])
@pytest.mark.parametrize("field, offset", FIELDS)
def test_flip_in_one_record_loses_only_that_record(field: str, offset: int, bit: int,
                                                   where: str) -> None:
    image, durable, j, hint = _flushed_journal(100)
    records = [f for f in _frames(j) if f[2] == "record"]
    scanned = [f for f in records if f[0] >= hint]
    assert len(scanned) >= 10 and records[5][0] < hint
    pos, seq, _, _ = scanned[len(scanned) // 2] if where == "scanned at open" else records[5]
    k = _flip(image, j, pos + offset, bit)
    got = {r.seq: (r.cls, r.hlc, bytes(r.body)) for r in k.records()}
    assert all(durable[s] == v for s, v in got.items())
    assert set(durable) - set(got) == {seq}, (
        f"{field} flip in record {seq} ({where}) lost "
        f"{sorted(set(durable) - set(got))}; recovery {k.recovery.as_dict()}")
    assert not _unreported(k, {seq})
    assert k.next_seq == j.next_seq


@pytest.mark.parametrize("where", ["scanned at open", "read after open"])
@pytest.mark.parametrize("offset", [0, 2, 3, 12, 28, 32])
def test_flip_in_a_pad_frame_loses_no_record(offset: int, where: str) -> None:
    """A pad carries no data: the record after it starts the next segment and chains to
    the pad, so a damaged pad must not cost any record."""
    for seed in range(200, 230):
        image, durable, j, hint = _flushed_journal(seed)
        pads = [f for f in _frames(j) if f[2] == "pad"
                and (f[0] >= hint) == (where == "scanned at open")]
        if pads:
            break
    else:
        raise AssertionError("no scenario had a pad frame there")
    k = _flip(image, j, pads[0][0] + offset, 1)
    got = {r.seq: (r.cls, r.hlc, bytes(r.body)) for r in k.records()}
    assert all(durable[s] == v for s, v in got.items())
    assert set(got) == set(durable), (
        f"pad flip at +{offset} ({where}) lost {sorted(set(durable) - set(got))}; "
        f"recovery {k.recovery.as_dict()}, damaged {k.damaged}")
    assert k.next_seq == j.next_seq


def test_damage_found_at_open_and_when_reading_is_counted_once_each() -> None:
    """One flipped body bit before the open's hint (found when read) and one after it
    (found by the scan at open): both records are reported, each counted once."""
    image, durable, j, hint = _flushed_journal(100)
    records = [f for f in _frames(j) if f[2] == "record"]
    early = records[5]
    late = [f for f in records if f[0] >= hint][4]
    assert early[0] < hint
    damaged = bytearray(image)
    for pos, _, _, _ in (early, late):
        damaged[DATA_START + (pos + rec.HEADER_SIZE) % j.data_size] ^= 0x40
    k = Journal.open(mem(bytes(damaged)))
    assert k.recovery.corrupt_seqs == [late[1]]
    for _ in range(2):  # a resend reads the same stretch again: still counted once
        got = {r.seq for r in k.records()}
        assert got == set(durable) - {early[1], late[1]}
        listed = sorted(s for a, b in k.damaged for s in range(a, b + 1))
        assert (listed, k.lost_to_damage) == ([early[1], late[1]], 2), (
            f"damage listed {k.damaged}, lost_to_damage {k.lost_to_damage}")


@pytest.mark.parametrize("offset", range(rec.HEADER_SIZE))
def test_a_flip_never_lets_a_durable_seq_be_reused(offset: int) -> None:
    """Whatever bit rot does to a record the open scans, the journal must not hand out
    again a seq it once reported durable: the ledger keys events by (gateway, epoch, seq)
    and would take a new event under a reused seq for a duplicate and drop it."""
    image, durable, j, hint = _flushed_journal(100)
    scanned = [f for f in _frames(j) if f[2] == "record" and f[0] >= hint]
    pos, seq, _, _ = scanned[3]
    k = _flip(image, j, pos + offset, 3)
    got = {r.seq: bytes(r.body) for r in k.records()}
    assert all(durable[s][2] == b for s, b in got.items())
    assert k.next_seq > max(durable), (
        f"flip at header byte {offset} of record {seq}: the next append would get seq "
        f"{k.next_seq}, but {k.next_seq}..{max(durable)} were reported durable "
        f"(recovery {k.recovery.cut_reason}, {k.recovery.cut_bytes} bytes cut)")


def test_repair_of_a_torn_header_never_zeroes_unacknowledged_records() -> None:
    """A header torn after its class byte keeps a stale length from whatever the slot
    held before: here, bytes of an older lap's body that read as 1000. The head is 436
    bytes behind the tail in the same segment (the ring is nearly full), so zeroing
    1036 bytes "of the torn frame" would wipe live records at the tail."""
    storage, j = crash_journal(2)
    stale = bytearray(1000)
    stale[572:576] = (1000).to_bytes(4, "little")  # lands on the next lap's length field
    j.append(bytes(stale))
    bodies = {}
    while j.head_pos < 2 * SEG - 700:
        bodies[j.append(bytes([j.next_seq]) * 600)] = bytes([j.next_seq]) * 600
    j.flush()
    j.commit(1)  # tail at 1036: the old lap's first record is reclaimed
    rest = 2 * SEG - j.head_pos
    bodies[j.append(bytes(rest - rec.HEADER_SIZE))] = bytes(rest - rec.HEADER_SIZE)
    bodies[j.append(bytes(564))] = bytes(564)  # lap 2, physical [0, 600)
    j.flush()
    assert (j.tail_pos % j.data_size, j.head_pos % j.data_size, j.free_bytes()) == (
        1036, 600, 436)
    before = len(storage.trace)
    j.append(b"x" * 100)
    j.flush()
    _, off, data = storage.trace[before]
    for k in range(len(data) + 1):
        torn = CrashStorage(storage.size(), base=storage.base)
        torn.trace = storage.trace[:before] + [("w", off, data[:k])]
        r = Journal.open(mem(torn.image_at(len(torn.trace))))
        got = {x.seq: bytes(x.body) for x in r.records()}
        lost = sorted(s for s in bodies if got.get(s) != bodies[s])
        assert not lost, (f"header torn after {k} bytes: repair cut {r.recovery.cut_bytes} "
                          f"bytes ({r.recovery.cut_reason}) and lost records {lost}")


def test_superblock_and_cursor_region_flips_never_crash_open() -> None:
    """A flip in a commit point slot makes it invalid: the other slot is used, open does
    not raise, and no record comes back changed."""
    image, durable, j, _ = _flushed_journal(7)
    for off in SLOT_OFFSETS:
        for byte in range(0, 92, 5):
            damaged = bytearray(image)
            damaged[off + byte] ^= 0x10
            k = Journal.open(mem(bytes(damaged)))
            got = {r.seq: (r.cls, r.hlc, bytes(r.body)) for r in k.records()}
            assert all(durable.get(s, v) == v for s, v in got.items())
            assert k.next_seq >= j.next_seq
