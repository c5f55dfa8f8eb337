"""Property tests: random interleavings of append (size, class), flush, commit of an
acked prefix, power cut (image_at of a random trace prefix, whole, torn, lost or
reordered) and clean reopen, checked against journal_workload.History after every step:
durable and not acknowledged means present byte for byte; no seq repeats; seqs only go
up, across power cuts too; the commit point is one that was in force."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from midshift.firmware.core import record as rec
from midshift.firmware.core.crash_storage import CrashStorage
from midshift.firmware.core.journal import Journal
from tests.unit.journal_workload import (
    History,
    Workload,
    check_image,
    check_journal,
    crash_journal,
    successor,
)

VARIANTS = [{}, {"tear": True}, {"lose_unsynced": True, "tear": True},
            {"reorder": True, "lose_unsynced": True, "tear": True}]

STEP = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 700), st.booleans()),
    st.tuples(st.just("append"), st.integers(0, 60), st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(st.just("commit"), st.floats(0, 1), st.booleans()),
    st.tuples(st.just("crash"), st.floats(0, 1), st.integers(0, len(VARIANTS) - 1)),
    st.tuples(st.just("reopen")),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4), st.lists(STEP, min_size=10, max_size=120))
def test_random_interleavings_keep_every_durable_record(seed, segments, steps) -> None:
    rng = random.Random(seed)
    storage, j = crash_journal(segments)
    hist = History()
    w = Workload(storage, j, hist, rng)
    for step in steps:
        op = step[0]
        if op == "append":
            w.append(step[1], rec.TELEMETRY if step[2] else rec.TXN)
        elif op == "flush":
            w.flush()
        elif op == "commit" and j.durable_seq >= j.tail_seq:
            w.commit(j.tail_seq + int(step[1] * (j.durable_seq - j.tail_seq)), step[2])
        elif op in ("crash", "reopen"):
            n = len(storage.trace) if op == "reopen" else round(step[1] * len(storage.trace))
            variant = VARIANTS[step[2]] if op == "crash" else {}
            k, got = check_image(storage.image_at(n, rng, **variant), hist, n)
            hist = successor(k, hist, n, got)
            storage = CrashStorage(k.storage.size(), base=k.storage.image())
            j = Journal.open(storage)
            w = Workload(storage, j, hist, rng)
        check_journal(j, hist, len(storage.trace))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(1, 9), min_size=1, max_size=30),
       st.integers(1, 4000))
def test_reading_in_batches_returns_what_one_pass_returns(seed, batches, max_bytes) -> None:
    rng = random.Random(seed)
    storage, j = crash_journal(3)
    w = Workload(storage, j, History(), rng)
    w.run(8, commit_p=0.5)
    whole = [(r.seq, bytes(r.body)) for r in j.records()]
    assert [s for s, _ in whole] == list(range(j.tail_seq, j.durable_seq + 1))
    out, pos, seq = [], None, None
    for i in range(len(whole) + 1):
        n = batches[i % len(batches)]
        records, pos, seq = j.read(pos, seq, max_records=n, max_bytes=max_bytes)
        assert len(records) <= n
        assert sum(len(r.body) for r in records[:-1]) < max_bytes
        out += [(r.seq, bytes(r.body)) for r in records]
        if not records:
            break
    assert out == whole
    assert j.read(pos, seq) == ([], pos, seq)
