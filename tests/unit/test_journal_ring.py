"""The ring: many laps with commits in between, a full journal (txn refused, telemetry
giving up its own oldest records, never a txn's), record size limits, and the errors of
format and open."""

import random

import pytest

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import JournalFull, RecordTooLarge
from midshift.firmware.core.journal import DATA_START, SUPER_SIZE, Journal, storage_size
from midshift.firmware.core.journal_open import JournalCorrupt, JournalUnformatted
from midshift.firmware.core.storage import MemoryStorage
from tests.unit.journal_workload import EPOCH, GW, SEG, formatted, mem

H = rec.HEADER_SIZE


def _journal(segments: int, seg: int = SEG, max_body: int = 16384):
    storage = mem(formatted(segments, seg))
    return storage, Journal.open(storage, max_body=max_body)


def _read_all(j: Journal) -> dict:
    return {r.seq: (r.cls, r.hlc, bytes(r.body)) for r in j.records()}


def _same_after_reopen(j: Journal, model: dict) -> Journal:
    k = Journal.open(mem(j.storage.image()))
    assert (k.tail_seq, k.durable_seq, k.next_seq, k.dropped) == (
        j.tail_seq, j.durable_seq, j.next_seq, j.dropped)
    assert _read_all(k) == model
    return k


# ---- many laps -------------------------------------------------------------------------

@pytest.mark.parametrize("seed, segments, seg", [(1, 2, 4096), (2, 4, 4096), (3, 3, 8192),
                                                 (4, 8, 4096)])
def test_twenty_laps_with_commits_keep_seqs_monotonic_and_reads_exact(
        seed: int, segments: int, seg: int) -> None:
    rng = random.Random(seed)
    _, j = _journal(segments, seg)
    model: dict[int, tuple[int, int, bytes]] = {}  # durable, not yet committed or dropped
    pending: dict[int, tuple[int, int, bytes]] = {}
    reader = (None, None)  # a reader's saved (pos, seq), like the forwarder's
    last_seq, hlc, reopens, laps_at_reopen = 0, 1 << 16, 0, set()
    while j.head_pos < 20 * j.data_size:
        for _ in range(rng.randint(1, 12)):
            size = rng.choice((0, rng.randint(1, 60), rng.randint(1, 600), rng.randint(1, 600)))
            size = seg - H if rng.random() < 0.04 else size  # a whole segment
            cls = rec.TELEMETRY if rng.random() < 0.2 else rec.TXN
            body, hlc = rng.randbytes(size), hlc + rng.randint(1, 1 << 16)
            tail = j.tail_seq
            try:
                seq = j.append(body, cls, hlc)
            except JournalFull:
                seq = None
            for s in range(tail, j.tail_seq):  # telemetry gave up its oldest
                assert model.pop(s)[0] == rec.TELEMETRY
            if seq is None:
                continue
            assert seq == last_seq + 1, "seqs must go up by one, lap after lap"
            last_seq = seq
            pending[seq] = (cls, hlc, body)
        assert j.flush() == last_seq
        model.update(pending)
        pending = {}
        # a reader continues from where it was; a position behind the tail restarts there
        records, pos, seq = j.read(*reader, max_records=rng.randint(1, 40))
        start = reader[1] if reader[1] is not None and reader[1] >= j.tail_seq else j.tail_seq
        assert [r.seq for r in records] == list(range(start, start + len(records)))
        for r in records:
            assert model[r.seq] == (r.cls, r.hlc, bytes(r.body)), f"record {r.seq} changed"
        reader = (pos, seq)
        if j.durable_seq >= j.tail_seq and rng.random() < 0.6:
            upto = rng.randint(j.tail_seq, j.durable_seq)
            j.commit(upto)
            for s in [s for s in model if s <= upto]:
                del model[s]
            assert j.tail_seq == upto + 1
        assert min(model, default=j.tail_seq) == j.tail_seq, "reclaimed records still held"
        if rng.random() < 0.15:
            j = _same_after_reopen(j, model)
            reader = (None, None)
            reopens += 1
            laps_at_reopen.add(j.head_pos // j.data_size)
    assert _read_all(j) == model
    assert reopens >= 3 and len(laps_at_reopen) >= 3


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_a_reader_behind_a_commit_never_sees_a_reclaimed_record(batch: int) -> None:
    _, j = _journal(2)
    for lap in range(30):
        for i in range(50):
            j.append(bytes([lap, i]) * 50)
        j.flush()
        records, pos, seq = j.read(max_records=batch)
        assert [r.seq for r in records] == list(range(j.tail_seq, j.tail_seq + batch))
        j.commit(seq + 1)  # the ledger acked past the reader's saved position
        again, _, _ = j.read(pos, seq, max_records=batch)
        assert [r.seq for r in again] == list(range(j.tail_seq, j.tail_seq + batch))
        assert again[0].body == bytes([lap, batch + 2]) * 50
        j.commit(j.durable_seq)
    assert j.head_pos > 20 * j.data_size


# ---- full ----------------------------------------------------------------------------

def test_a_full_journal_refuses_txn_and_keeps_everything_stored() -> None:
    _, j = _journal(2)
    model, hlc = {}, 0
    with pytest.raises(JournalFull) as full:
        while True:
            for _ in range(5):
                hlc += 1
                body = bytes([hlc % 251]) * (150 + hlc % 40)
                seq = j.append(body, rec.TXN, hlc)
                model[seq] = (rec.TXN, hlc, body)
            j.flush()
    j.flush()  # the records queued before the refusal become durable
    assert full.value.cls_name == "txn" and full.value.need_bytes > full.value.free_bytes
    assert j.refused == 1 and j.dropped == 0
    state = (j.head_pos, j.next_seq, j.tail_seq)
    for cls in (rec.TXN, rec.TELEMETRY, rec.TXN):  # telemetry cannot evict txn either
        with pytest.raises(JournalFull):
            j.append(bytes(200), cls)
    assert (j.head_pos, j.next_seq, j.tail_seq, j.refused, j.dropped) == (*state, 4, 0)
    assert _read_all(j) == model
    j = _same_after_reopen(j, model)
    # the ledger acknowledges three records: their space takes new ones again
    first = j.tail_seq
    j.commit(first + 2)
    for s in range(first, first + 3):
        del model[s]
    added = 0
    while True:
        try:
            seq = j.append(b"n" * 100, rec.TXN, 7)
        except JournalFull:
            break
        model[seq] = (rec.TXN, 7, b"n" * 100)
        added += 1
    assert added >= 3
    j.flush()
    _same_after_reopen(j, model)


def test_a_full_journal_of_pending_records_refuses_without_losing_them() -> None:
    _, j = _journal(2)
    seqs = []
    with pytest.raises(JournalFull):
        while True:
            seqs.append(j.append(bytes([len(seqs) % 256]) * 300, rec.TELEMETRY))
    assert j.durable_seq == 0 and j.dropped == 0  # queued records are never given up
    j.flush()
    assert [r.seq for r in j.records()] == seqs
    assert all(bytes(r.body) == bytes([i % 256]) * 300 for i, r in enumerate(j.records()))


@pytest.mark.parametrize("seed, segments", [(1, 2), (2, 3), (3, 2)])
def test_telemetry_gives_up_exactly_its_oldest_records(seed: int, segments: int) -> None:
    rng = random.Random(seed)
    _, j = _journal(segments)
    model, appended = {}, 0
    for i in range(600):
        body = rng.randbytes(rng.randint(0, 400))
        seq = j.append(body, rec.TELEMETRY, i)
        appended += 1
        model[seq] = (rec.TELEMETRY, i, body)
        if rng.random() < 0.5:
            j.flush()
            for s in [s for s in model if s < j.tail_seq]:
                del model[s]
            # exactly the oldest are gone, all counted, the newest all kept
            assert sorted(model) == list(range(j.tail_seq, j.durable_seq + 1))
            assert j.dropped == appended - len(model)
            assert _read_all(j) == model
            if rng.random() < 0.1:
                j = _same_after_reopen(j, model)
    assert j.dropped > 300 and j.refused == 0


def test_telemetry_never_evicts_a_txn() -> None:
    _, j = _journal(2)
    # telemetry, then one txn, then telemetry to the brim
    model = {}
    for i in range(4):
        model[j.append(bytes([i]) * 200, rec.TELEMETRY, i)] = (rec.TELEMETRY, i, bytes([i]) * 200)
    txn = j.append(b"T" * 300, rec.TXN, 50)
    model[txn] = (rec.TXN, 50, b"T" * 300)
    j.flush()
    i = 100
    while j.free_bytes() >= 236 + 236:
        model[j.append(bytes([i % 256]) * 200, rec.TELEMETRY, i)] = (
            rec.TELEMETRY, i, bytes([i % 256]) * 200)
        i += 1
        j.flush()
    # the next telemetry record gives up the four before the txn, and no more
    while j.free_bytes() >= 236:
        seq = j.append(b"x" * 200, rec.TELEMETRY, 999)
        model[seq] = (rec.TELEMETRY, 999, b"x" * 200)
    j.flush()
    with pytest.raises(JournalFull):
        for _ in range(20):
            model[j.append(b"y" * 200, rec.TELEMETRY, 1000)] = (rec.TELEMETRY, 1000, b"y" * 200)
            j.flush()
    for s in range(1, j.tail_seq):
        del model[s]
    assert j.tail_seq == txn and j.dropped == 4, "only the telemetry before the txn"
    assert _read_all(j) == model and model[txn][2] == b"T" * 300
    j = _same_after_reopen(j, model)
    # once the txn is acknowledged, telemetry behind it can be given up again
    j.commit(txn)
    del model[txn]
    while j.dropped == 4:
        seq = j.append(b"z" * 200, rec.TELEMETRY, 2000)
        model[seq] = (rec.TELEMETRY, 2000, b"z" * 200)
        j.flush()
    for s in range(txn + 1, j.tail_seq):
        assert model.pop(s)[0] == rec.TELEMETRY
    assert j.dropped == 4 + (j.tail_seq - txn - 1)
    _same_after_reopen(j, model)


# ---- limits and errors -----------------------------------------------------------------

@pytest.mark.parametrize("seg, max_body, limit", [(4096, 16384, 4096 - H),
                                                  (32768, 16384, 16384),
                                                  (4096, 100, 100), (8192, 0, 0)])
def test_record_too_large_above_the_limit_and_exact_fit_at_it(
        seg: int, max_body: int, limit: int) -> None:
    _, j = _journal(2, seg, max_body)
    before = (j.next_seq, j.head_pos)
    with pytest.raises(RecordTooLarge, match=str(limit)):
        j.append(bytes(limit + 1))
    assert (j.next_seq, j.head_pos) == before
    for fill in (b"\xaa", b"\x55"):
        j.append(fill * limit, rec.TXN, 5)
    j.flush()
    k = Journal.open(mem(j.storage.image()), max_body=max_body)
    assert [bytes(r.body) for r in k.records()] == [b"\xaa" * limit, b"\x55" * limit]


def test_reopen_with_a_smaller_max_body_keeps_the_larger_records() -> None:
    """max_body limits what may be appended; it is not part of the stored format (the
    superblock does not record it). Records stored under a larger limit are whole and
    durable: a reopen under a smaller one (a configuration change) must not take them
    for a torn tail, cut them and hand their seqs out again."""
    storage, j = _journal(4)
    bodies = {}
    for i in range(10):
        body = bytes([i]) * (50 + 100 * (i % 3))
        bodies[j.append(body)] = body
    j.flush()
    k = Journal.open(mem(storage.image()), max_body=100)
    got = {r.seq: bytes(r.body) for r in k.records()}
    assert got == bodies, (f"read back {sorted(got)}; recovery {k.recovery.as_dict()}, "
                           f"next seq {k.next_seq}")
    assert k.next_seq == 11
    with pytest.raises(RecordTooLarge):
        k.append(bytes(101))


def test_open_refuses_blank_storage() -> None:
    with pytest.raises(JournalUnformatted):
        Journal.open(MemoryStorage(storage_size(SEG, 2)))


@pytest.mark.parametrize("byte", range(SUPER_SIZE + 4))
def test_open_refuses_a_damaged_superblock(byte: int) -> None:
    image = bytearray(formatted(2))
    image[byte] ^= 0x04
    with pytest.raises(JournalCorrupt):
        Journal.open(mem(bytes(image)))


def test_open_refuses_an_unknown_version_and_a_short_storage() -> None:
    import binascii
    import struct

    image = bytearray(formatted(3))
    image[4:6] = struct.pack("<H", 2)
    image[SUPER_SIZE:SUPER_SIZE + 4] = struct.pack("<I", binascii.crc32(image[:SUPER_SIZE]))
    with pytest.raises(JournalCorrupt, match="version 2"):
        Journal.open(mem(bytes(image)))
    with pytest.raises(JournalCorrupt, match="smaller"):
        Journal.open(mem(formatted(3)[:storage_size(SEG, 2)]))


@pytest.mark.parametrize("size, seg, epoch, gw, words", [
    (storage_size(2048, 4), 2048, EPOCH, GW, "at least 4096"),
    (storage_size(4000, 2), 4000, EPOCH, GW, "multiple of 512"),
    (storage_size(4096, 1), 4096, EPOCH, GW, "N >= 2"),
    (storage_size(4096, 2) + 100, 4096, EPOCH, GW, "N >= 2"),
    (DATA_START - 1, 4096, EPOCH, GW, "N >= 2"),
    (storage_size(4096, 2), 4096, 0, GW, "epoch"),
    (storage_size(4096, 2), 4096, 1 << 64, GW, "epoch"),
    (storage_size(4096, 2), 4096, -5, GW, "epoch"),
    (storage_size(4096, 2), 4096, EPOCH, "g" * 33, "longer than 32 bytes"),
    (storage_size(4096, 2), 4096, EPOCH, "€" * 11, "longer than 32 bytes"),
])
def test_format_rejects_bad_geometry_with_a_clear_error(size, seg, epoch, gw, words) -> None:
    storage = MemoryStorage(size)
    with pytest.raises(ValueError, match=words):
        Journal.format(storage, seg, epoch, gw)
    assert storage.image() == bytes(size), "a rejected format must not write"


@pytest.mark.parametrize("seg, count, gw", [(4096, 2, "g" * 32), (4608, 3, "€" * 10),
                                            (65536, 2, "")])
def test_format_accepts_the_edges_of_the_geometry(seg: int, count: int, gw: str) -> None:
    storage = MemoryStorage(storage_size(seg, count))
    Journal.format(storage, seg, (1 << 64) - 1, gw)
    j = Journal.open(storage)
    assert (j.segment_size, j.segment_count, j.gateway_id, j.next_seq) == (seg, count, gw, 1)
    assert (j.epoch, j.tail_seq, j.durable_seq, j.dropped) == ((1 << 64) - 1, 1, 0, 0)
