"""CORE FINDING (deterministic simulation: seeds 101 and 112 on commit dae43cd), not
fixed: recovery can splice in "ghost" frames, records lost in an earlier power cut.

How: a power cut leaves frames K, K+1, ... of a life on flash that recovery did not take
(it stopped earlier, at a torn frame it zeroed). A later life appends a new record K at
the same position (records of equal size line up), and a power cut tears that write inside
the header, before the CRC field: the header now carries the new seq and length but the
old frame's CRC. Its CRC fails; the resync meant for a bit flip mid-log looks for a whole
successor that chains to the damaged frame's stored CRC, finds the old K+1 (which chains
to the old K's CRC, still in the field), counts K as damaged and accepts the old K+1, K+2,
... as the log's continuation. Records that were never durable (their device was never
told they were kept, and may have sent them again under new seqs) come back and go to the
ledger; the journal reports flash damage that never happened.

The test is marked xfail(strict): when the journal is fixed it passes, and strict makes
the suite say so, so the marker (and the simulation's ``ghost_record`` allowance in
tests/unit/test_dst_budget.py) can go.
"""

import pytest

from firmware.core import record as rec
from firmware.core.journal import Journal
from tests.unit.portable import fresh


def _frame_at(j, seq):
    for r in j.records():
        if r.seq == seq:
            return r
    raise AssertionError(f"no seq {seq}")


@pytest.mark.xfail(strict=True, reason="core finding: recovery resync accepts ghost frames "
                   "after a header torn before its CRC field (see module docstring)")
def test_a_header_torn_over_an_old_frame_does_not_resurrect_its_successors():
    st, j = fresh(4)
    for i in range(5):  # life 1: five records of one size
        j.append(b'{"life":1,"n":%d}' % i, rec.TXN, i + 1)
    j.flush()
    third = _frame_at(j, 3)
    # The power cut tore record 3 and recovery zeroed it: 4 and 5 stay behind as ghosts.
    st.write(j._phys(third.pos), bytes(third.end_pos - third.pos))
    j = Journal.open(st)
    assert j.durable_seq == 2
    j.append(b'{"life":2,"n":%d}' % 2, rec.TXN, 100)  # the new record 3, same size
    j.flush()
    assert j.durable_seq == 3
    ghost4 = st.read(j._phys(j.durable_pos), rec.HEADER_SIZE)
    body = b'{"life":2,"n":3}'
    new4 = rec.encode_frame(j._seed, rec.TYPE_RECORD, rec.TXN, 4, 101, j._durable_crc, body)
    assert rec.FrameHeader(ghost4).seq == 4 and rec.FrameHeader(ghost4).length == len(body)
    st.write(j._phys(j.durable_pos), new4[:32])  # the new 4, torn just before its CRC
    j = Journal.open(st)
    assert j.durable_seq == 3, f"recovered {j.recovery.as_dict()}"
