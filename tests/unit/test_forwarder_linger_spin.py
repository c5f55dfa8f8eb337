"""Regression (found by the deterministic simulation, where most of a run's timer wake-ups
were this): while the window was full, a live batch that had started to linger kept its
linger deadline, which passed and stayed in the past, so ``next_deadline_ms`` answered
"now" until an ack freed the window. ``midshift/firmware/forwarding.py`` waits
``max(0, deadline - now)``: the CPython agent spun a core for as long as the ledger was
slow to acknowledge (up to the ack timeout, again and again during a ledger outage)."""

from midshift.firmware.core.forwarder import Forwarder
from midshift.firmware.core.signing import Signer
from tests.unit.portable import body_for, fresh

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_a_full_window_does_not_leave_a_deadline_in_the_past():
    _, j = fresh(8)
    for i in range(10):
        j.append(body_for(i + 1, 40))
    j.flush()
    f = Forwarder(j, "gw-1", Signer(b"s" * 32), max_events=4, linger_ms=5, window=1,
                  ack_timeout_ms=3000)
    f.set_uplink("eth", 0)  # 10 records: a backlog lane, and a live lane after it
    j.append(body_for(11, 40))
    j.flush()
    sent = f.poll(0)  # live: 11 alone lingers; backlog: 1..4 fills the window
    assert [(a, b) for _, a, b, _ in sent] == [(1, 4)]
    assert f.poll(5) == []  # the linger is over, but the window is full: nothing to do
    assert f.next_deadline_ms() == 3000  # the ack timeout, not the past
    assert f.on_ack(1, 4, "ok", 6) is not None  # an ack frees the window ...
    assert [(a, b) for _, a, b, _ in f.poll(6)] == [(11, 11)]  # ... the lingering batch goes
