"""Regression (found by the deterministic simulation, ``python -m midshift.simulator dst --seed 0``):
a batch whose first records the ledger had already acknowledged kept the journal position
of the skipped records, so its resend read the journal from the wrong place. The journal
took the mismatch for flash damage, counted live records as lost and skipped to the next
segment; the resend then claimed a seq range whose records it no longer carried, the
ledger acknowledged the range, and the gateway reclaimed records the ledger never stored.
"""

from midshift.firmware.core.forwarder import Forwarder
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire_ledger import decode_batch
from tests.unit.portable import body_for, fresh

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_a_resent_batch_that_skipped_acknowledged_records_carries_all_its_own():
    _, j = fresh(8)
    for i in range(12):
        j.append(body_for(i + 1, 40))
    j.flush()
    signer = Signer(b"s" * 32)
    f = Forwarder(j, "gw-1", signer, max_events=2, linger_ms=0, window=8, ack_timeout_ms=1000)
    f.set_uplink("eth", 0)
    first = f.poll(0)
    assert [(a, b) for _, a, b, _ in first][:3] == [(1, 2), (3, 4), (5, 6)]
    assert f.on_ack(5, 6, "ok", 1) is None  # acknowledged out of order
    f.set_uplink(None, 2)
    f.max_events = 4
    f.set_uplink("lte", 3)  # everything unacknowledged goes again, from the tail
    again = f.poll(3)
    assert (7, 8) in [(a, b) for _, a, b, _ in again]  # the read of 5..8 skipped 5 and 6
    resent = [(a, b, data) for lane, a, b, data in f.poll(1003) if lane == "resend"]
    assert [(a, b) for a, b, _ in resent] == [(1, 4), (7, 8), (9, 12)]
    assert [r[0] for r in decode_batch(resent[1][2], signer).records] == [7, 8]
    assert j.lost_to_damage == 0  # nothing was damaged: the position was wrong
