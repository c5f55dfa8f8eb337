"""The commit point and a holder's note of its append (the till API's key index): while a
hold is taken, the journal never reclaims a record appended after it, whatever the ledger
acknowledged; after ``release`` the next commit goes through."""

from midshift.firmware.edges.group_commit import GroupCommitJournal
from tests.unit.portable import body_for, fresh


def test_a_hold_keeps_the_records_appended_after_it_unreclaimed() -> None:
    _, j = fresh(8)
    gc = GroupCommitJournal(j)
    try:
        assert [gc.append_durable(body_for(i, 40), timeout_s=5) for i in (1, 2)] == [1, 2]
        hold = gc.hold()  # a till's POST: its record will be seq 3 or later
        assert gc.append_durable(body_for(3, 40), timeout_s=5) == 3
        gc.append_durable(body_for(4, 40), timeout_s=5)
        gc.commit(4)  # the ledger acknowledged 1..4 before the index had seq 3's key
        assert j.tail_seq == 3 and j.committed_seq == 2  # 3 and 4 are still readable
        recs, _, _ = j.read(None, None, 10)
        assert [r.seq for r in recs] == [3, 4]
        gc.release(hold)
        gc.commit(4)  # the next ack's commit
        assert j.tail_seq == 5 and j.committed_seq == 4
    finally:
        gc.close()
