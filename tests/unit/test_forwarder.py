"""The forwarder on its own: batches out, acks in, resends, lanes and metered uplinks."""

from midshift.firmware.core import record as rec
from midshift.firmware.core.forwarder import Forwarder
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire_ledger import decode_batch
from tests.unit.portable import body_for, fresh

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def _fwd_setup(n, **kw):
    st, j = fresh(8)
    for i in range(n):
        j.append(body_for(i + 1, 40))
    j.flush()
    signer = Signer(b"s" * 32)
    return j, signer, Forwarder(j, "gw-1", signer, **kw)


def _seqs(signer, data):
    b = decode_batch(data, signer)
    return [r[0] for r in b.records]


def test_forwarder_commits_only_what_the_ledger_acked():
    j, signer, f = _fwd_setup(0, max_events=4, linger_ms=5, window=8)
    f.set_uplink("eth", 0)
    for i in range(10):
        j.append(body_for(i + 1, 40))
    j.flush()
    out = f.poll(0)
    assert [(a, b) for _, a, b, _ in out] == [(1, 4), (5, 8)]  # the tail of 2 lingers
    out += f.poll(5)
    assert [(a, b) for _, a, b, _ in out] == [(1, 4), (5, 8), (9, 10)]
    assert _seqs(signer, out[2][3]) == [9, 10]
    assert f.on_ack(5, 8, "ok", 6) is None  # out of order: nothing contiguous yet
    seq, pos = f.on_ack(1, 4, "ok", 7)
    assert seq == 8
    j.commit(seq, pos)
    assert j.tail_seq == 9
    assert f.on_ack(1, 4, "ok", 8) is None and f.counters["stale_acks"] == 1


def test_a_full_window_does_not_make_a_lingering_batch_due():
    # The loop that waits on next_deadline_ms spun (a million polls per drain) when a
    # lingering live batch was overdue but the backlog had filled the window: it cannot go
    # until an ack comes, so only the resend timer is due.
    j, signer, f = _fwd_setup(40, max_events=10, linger_ms=5, window=3, ack_timeout_ms=1000)
    f.set_uplink("eth", 0)  # after an outage: 40 records wait
    j.append(body_for(41, 40))
    j.flush()
    out = f.poll(0)  # the live record lingers (a partial batch); the backlog fills the window
    assert [(lane, a, b) for lane, a, b, _ in out] == [
        ("backlog", 1, 10), ("backlog", 11, 20), ("backlog", 21, 30)]
    assert f.poll(100) == [] and f.next_deadline_ms() == 1000  # not 5: nothing can go
    f.on_ack(1, 10, "ok", 200)
    assert f.next_deadline_ms() == 5  # room again: the lingering batch is overdue
    assert [(lane, a, b) for lane, a, b, _ in f.poll(200)] == [("live", 41, 41)]


def test_forwarder_resends_unacked_and_resumes_from_the_acked_point():
    j, signer, f = _fwd_setup(12, max_events=4, linger_ms=0, window=8, ack_timeout_ms=1000)
    assert f.poll(0) == []  # no uplink: nothing leaves, nothing is lost
    f.set_uplink("eth", 0)
    assert len(f.poll(0)) == 3
    f.on_ack(5, 8, "ok", 10)  # acked out of order; 1..4 and 9..12 are not
    again = f.poll(1000)  # ack timeout: the two unacked batches go again, not 5..8
    assert [(a, b) for _, a, b, _ in again] == [(1, 4), (9, 12)]
    assert f.counters["resent"] == 2
    f.set_uplink("lte", 1500)  # failover: resend from what the ledger acknowledged
    moved = f.poll(1500)
    assert [s for _, _, _, d in moved for s in _seqs(signer, d)] == [1, 2, 3, 4, 9, 10, 11, 12]


def test_forwarder_sends_live_events_beside_the_backlog():
    j, signer, f = _fwd_setup(400, max_events=50, linger_ms=0, window=4, drain_rate=100)
    f.set_uplink("eth", 0)  # after an outage: 400 records wait
    live = j.append(body_for(401, 40))
    j.flush()
    out = f.poll(0)
    lanes = [(lane, a, b) for lane, a, b, _ in out]
    assert lanes[0] == ("live", live, live)  # the new event does not queue behind 400
    assert lanes[1:] == [("backlog", 1, 50), ("backlog", 51, 100)]  # the bucket: 100/s
    for _, a, b, _ in out:
        f.on_ack(a, b, "ok", 1)
    assert f.poll(0) == []  # bucket empty
    assert [(a, b) for _, a, b, _ in f.poll(500)] == [(101, 150)]
    assert len(f.inflight) <= 4


def test_forwarder_on_a_metered_uplink_sends_txn_only_and_never_commits_past_telemetry():
    st, j = fresh(8)
    for i in range(10):  # txn, telemetry alternating from seq 1
        j.append(body_for(i + 1, 40), rec.TXN if i % 2 == 0 else rec.TELEMETRY)
    j.flush()
    signer = Signer(b"s" * 32)
    f = Forwarder(j, "gw-1", signer, max_events=100, linger_ms=0)
    f.set_uplink("lte", 0, txn_only=True)
    out = f.poll(0)
    assert len(out) == 1 and _seqs(signer, out[0][3]) == [1, 3, 5, 7, 9]
    commit = f.on_ack(out[0][1], out[0][2], "ok", 1)
    assert commit[0] == 1 and f.commit_seq == 1  # 2 (telemetry) not sent: commit stops
    f.set_uplink("eth", 2)  # unmetered again: the telemetry goes, the txn do not repeat
    out = f.poll(2)
    assert [s for o in out for s in _seqs(signer, o[3])] == [2, 4, 6, 8, 10]
    for o in out:
        last = f.on_ack(o[1], o[2], "ok", 3)
    assert f.commit_seq == 10 and last[0] == 10


def test_a_burst_caps_the_batches_per_poll_and_says_the_next_is_due_now():
    # A drain that encoded a whole window before publishing any made the ledger wait for
    # it, then the gateway wait for the ledger: with a burst each batch goes out at once.
    j, signer, f = _fwd_setup(30, max_events=10, linger_ms=5, window=3, ack_timeout_ms=1000,
                              burst=1)
    f.set_uplink("eth", 0)
    got = []
    for now in (0, 1, 2):
        out = f.poll(now)
        assert len(out) == 1
        got += [(a, b) for _, a, b, _ in out]
        assert f.next_deadline_ms() == (now if now < 2 else 1000)  # window full at 3
    assert got == [(1, 10), (11, 20), (21, 30)]
    assert f.poll(3) == [] and f.next_deadline_ms() == 1000
    f.on_ack(1, 10, "ok", 4)
    assert f.poll(4) == [] and f.next_deadline_ms() == 1001  # nothing more: resend timers


def test_small_live_batches_stretch_the_window_and_a_held_batch_has_lingered():
    # At 10,000 events/s a live batch lingers 2 ms and holds a few records: a window of
    # full batches' count shut after a few of them and held records back past a ledger
    # stall. Small ones may go on while all in flight hold under max_events records.
    j, signer, f = _fwd_setup(0, max_events=10, linger_ms=2, window=2, ack_timeout_ms=1000)
    f.set_uplink("eth", 0)
    sent = []
    for t in range(0, 40, 2):  # three records every 2 ms, no ack meanwhile
        for _ in range(3):
            j.append(body_for(1, 40))
        j.flush()
        sent += f.poll(t)
        sent += f.poll(t + 2)
    # 2 windows' worth went as long as under 10 records were in flight: 3 + 3 + 3, then
    # the 4th took the count to 12 (>= 10): held
    assert [(a, b) for _, a, b, _ in sent] == [(1, 3), (4, 6), (7, 9), (10, 12)]
    assert f.poll(100) == []
    assert f.next_deadline_ms() == 1002  # only the first ack timeout: nothing lingers
    assert f.on_ack(1, 3, "ok", 101) is not None  # 9 in flight: room, and the linger
    out = f.poll(101)  # ran out while the batch was held, so it goes at once
    assert [(a, b) for _, a, b, _ in out] == [(13, 22)]
    # Full batches keep the plain window: 4 in flight (13..22 holds 10) shut it
    assert f.poll(102) == []
