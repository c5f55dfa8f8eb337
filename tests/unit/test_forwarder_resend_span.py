"""Regression (found reading the deterministic simulation's profile, where resends re-read
64 records more than they carried): a resend read ``count + 64`` records from the batch's
first seq. A batch that skipped more than 64 records the ledger had already acknowledged
(out of order, before a failover) spans more seqs than that, so its resend lost its later
records: the batch went out as a shorter range, the ledger's ack for that range matched
nothing in flight, and the batch was sent again every ack timeout, never acknowledged,
until the next uplink change. A resend reads exactly the seqs its batch spans."""

from midshift.firmware.core.forwarder import Forwarder
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire_ledger import decode_batch
from tests.unit.portable import body_for, fresh

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_a_resend_carries_records_beyond_a_long_acknowledged_stretch():
    _, j = fresh(8)
    for i in range(110):
        j.append(body_for(i + 1, 20))
    j.flush()
    signer = Signer(b"s" * 32)
    f = Forwarder(j, "gw-1", signer, max_events=2, linger_ms=0, window=64,
                  ack_timeout_ms=1000)
    f.set_uplink("eth", 0)
    f.poll(0)
    for first in range(3, 100, 2):  # 3..100 acknowledged; 1..2 and 101.. not
        f.on_ack(first, first + 1, "ok", 1)
    f.set_uplink(None, 2)
    f.max_events = 200
    f.set_uplink("lte", 3)
    out = f.poll(3)
    assert [(a, b) for _, a, b, _ in out] == [(1, 110)]
    resent = [data for lane, _, _, data in f.poll(1003) if lane == "resend"]
    seqs = [r[0] for r in decode_batch(resent[0], signer).records]
    assert seqs == [1, 2] + list(range(101, 111))
