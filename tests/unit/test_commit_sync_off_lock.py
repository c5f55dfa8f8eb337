"""The commit point's sync runs outside the lock producers append under: while the ledger's
ack is being made durable (a slow sync of the head), records are still appended and made
durable, and the space the ack frees is reclaimed only once its cursor is on flash."""

import threading

from midshift.firmware.core.journal import Journal
from midshift.firmware.edges.group_commit import GroupCommitJournal
from tests.unit.portable import body_for, fresh


class GatedHead:
    """A storage whose ``sync_head`` (the commit point's sync) waits for ``gate``."""

    def __init__(self, storage) -> None:
        self.storage = storage
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.head_syncs = 0
        self.entries = 0  # syncs of the head begun

    def read(self, offset, n):
        return self.storage.read(offset, n)

    def write(self, offset, data):
        self.storage.write(offset, data)

    def sync(self):
        self.storage.sync()

    def sync_head(self):
        self.entries += 1
        self.entered.set()
        assert self.gate.wait(10)
        self.head_syncs += 1

    def size(self):
        return self.storage.size()

    def close(self):
        pass


def test_appends_become_durable_while_a_commit_point_syncs() -> None:
    st, j = fresh(8)
    gated = GatedHead(st)
    j.storage = gated
    gc = GroupCommitJournal(j)
    try:
        assert [gc.append_durable(body_for(i, 40), timeout_s=5) for i in (1, 2, 3)] == [1, 2, 3]
        gated.gate.clear()
        committer = threading.Thread(target=gc.commit, args=(2,))
        committer.start()
        assert gated.entered.wait(5)  # the commit point is being synced, not yet durable
        assert gc.append_durable(body_for(4, 40), timeout_s=5) == 4  # not held up by it
        assert gc.durable_seq == 4
        assert committer.is_alive() and j.tail_seq == 1  # nothing reclaimed before the sync
        gated.gate.set()
        committer.join(5)
        assert not committer.is_alive()
        assert j.tail_seq == 3 and j.committed_seq == 2 and gated.head_syncs == 1
    finally:
        gated.gate.set()
        gc.close()
    reopened = Journal.open(st)  # the cursor written off the lock is the one recovery finds
    assert reopened.tail_seq == 3
    assert [r.seq for r in reopened.read(None, None, 10)[0]] == [3, 4]


def test_a_failed_commit_point_sync_moves_nothing() -> None:
    st, j = fresh(8)

    class FailingHead(GatedHead):
        def sync_head(self):
            raise OSError(5, "I/O error")

    j.storage = FailingHead(st)
    gc = GroupCommitJournal(j)
    try:
        for i in (1, 2):
            gc.append_durable(body_for(i, 40), timeout_s=5)
        try:
            gc.commit(2)
            raise AssertionError("the failed sync was not reported")
        except OSError:
            pass
        assert j.tail_seq == 1 and j.committed_seq == 0
        assert gc.append_durable(body_for(3, 40), timeout_s=5) == 3  # appends go on
    finally:
        gc.close()


def test_an_append_that_drops_telemetry_waits_for_the_commit_point_in_flight() -> None:
    """Dropping telemetry for room writes a cursor of its own: it waits for the commit
    point being synced (they alternate slots), then both are on flash in order."""
    from midshift.firmware.core import record as rec
    st, j = fresh(4)
    gated = GatedHead(st)
    gated.gate.set()
    j.storage = gated
    gc = GroupCommitJournal(j)
    try:
        seqs = []
        while j.free_bytes() > 400:  # the ring filled with telemetry
            seqs.append(gc.append(bytes([len(seqs) % 256]) * 300, rec.TELEMETRY))
        assert gc.wait_durable(seqs[-1])
        gated.gate.clear()
        gated.entered.clear()
        gated.entries = 0
        committer = threading.Thread(target=gc.commit, args=(seqs[0],))
        committer.start()
        assert gated.entered.wait(5)
        dropper = threading.Thread(target=gc.append_durable, args=(b"y" * 1000, rec.TELEMETRY))
        dropper.start()
        dropper.join(0.2)
        # Waiting, not writing a second cursor into the slot the commit point is using.
        assert dropper.is_alive() and j.dropped == 0 and gated.entries == 1
        gated.gate.set()
        committer.join(5)
        dropper.join(5)
        assert not committer.is_alive() and not dropper.is_alive()
        assert j.dropped > 0 and j.tail_seq > seqs[0] + 1
        tail = j.tail_seq
    finally:
        gated.gate.set()
        gc.close()
    assert Journal.open(st).tail_seq == tail  # the newest cursor is the drop's, intact


def test_the_head_hint_is_written_by_the_flusher_and_a_failing_one_is_not_spun_on() -> None:
    st, j = fresh(8)

    class CountingHead(GatedHead):
        fail = False

        def sync_head(self):
            self.entries += 1
            if self.fail:
                raise OSError(5, "I/O error")

    head = CountingHead(st)
    j.storage = head
    gc = GroupCommitJournal(j)
    try:
        seq = 0
        while j.durable_pos < 2 * j.segment_size:  # two segments' worth: hints due
            seq = gc.append_durable(body_for(seq + 1, 200), timeout_s=5)
        gc.wait_for_durable_after(seq - 1, 1)
        assert wait_until(lambda: head.entries >= 1)  # the flusher wrote a head hint
        head.fail, head.entries = True, 0
        while j.durable_pos < 4 * j.segment_size:
            seq = gc.append_durable(body_for(seq + 1, 200), timeout_s=5)  # appends go on
        assert wait_until(lambda: head.entries >= 1)  # the next hint was tried, and failed
        tried = head.entries
        threading.Event().wait(0.3)
        assert head.entries == tried  # not again until the next flush: no spinning on it
        seq = gc.append_durable(body_for(seq + 1, 200), timeout_s=5)
        assert wait_until(lambda: head.entries == tried + 1)  # that flush: one more try
    finally:
        gc.close()


def wait_until(cond, timeout_s: float = 5.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return True
        done.wait(0.01)
    return cond()
