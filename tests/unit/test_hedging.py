"""Hedged sends in the link session: a batch unanswered past the hedge delay goes once
more on a healthy standby, the first ack wins, the delay follows the round trip, metered
standbys carry transactions only, and an uplink whose batches keep being answered through
their hedges is demoted before its keepalive notices. Portable (runs under MicroPython)."""

from midshift.firmware.core import record as rec
from midshift.firmware.core import session as s
from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.storage import MemoryStorage
from midshift.firmware.core.wire_ledger import encode_ack
from tests.unit.test_session import ACK, GW, KEY, LEDGER, SITE, WALL, batches, of

PORTABLE = True


def journal_of(classes, segments=6):
    """Records appended, not yet durable: ``both_up`` syncs them once both uplinks are up,
    so they go in the live lane (a backlog found at uplink-up is not hedged)."""
    st = MemoryStorage(storage_size(4096, segments))
    Journal.format(st, 4096, 0xC0FFEE, GW)
    j = Journal.open(st)
    for i, cls in enumerate(classes):
        j.append(b'{"i":%d}' % i, cls, i + 1)
    return j


def both_up(j, **kw):
    opts = {"linger_ms": 0, "ack_timeout_ms": 1000, "hold_ms": 5000,
            "status_period_ms": 100000, "commit_every_ms": 0, "max_events": 2}
    opts.update(kw)
    sess = s.LinkSession(j, SITE, GW, Signer(KEY), ["eth", "lte"], 0, **opts)
    sess.uplink_changed("eth", True, 0)
    sess.uplink_changed("lte", True, 0)
    sess.poll(0, WALL)  # eth becomes active, with nothing durable to send yet
    j.flush()
    return sess


def ack(sess, uplink, first, last, now):
    return sess.message(uplink, ACK, encode_ack(LEDGER, sess.journal.epoch, first, last, WALL),
                        now, WALL + now)


def notes(actions, what):
    return [n.fields for n in of(actions, s.Note) if n.what == what]


def test_an_unanswered_batch_goes_once_more_on_the_standby_and_its_ack_wins():
    sess = both_up(journal_of([rec.TXN] * 2))
    assert batches(sess.poll(0, WALL)) == [("eth", 1, 2)]
    assert batches(sess.poll(49, WALL + 49)) == []  # the floor: 50 ms with no round trip yet
    out = sess.poll(50, WALL + 50)
    assert batches(out) == [("lte", 1, 2)]
    assert notes(out, "hedged")[0]["from"] == "eth"
    assert batches(sess.poll(60, WALL + 60)) == []  # hedged once, not per poll
    assert of(ack(sess, "lte", 1, 2, 70), s.Commit)[0].seq == 2  # the standby's answer
    c = sess.forwarder.counters
    assert (c["hedged"], c["hedges_won"], c["acked"]) == (1, 1, 1) and c["hedge_bytes"] > 0
    assert of(ack(sess, "eth", 1, 2, 80), s.Commit) == [] and c["stale_acks"] == 1  # late copy
    assert sess.active == "eth"  # one hedge does not move the traffic


def test_the_hedge_delay_follows_the_round_trip_and_stops_at_the_ack_timeout():
    sess = both_up(journal_of([rec.TXN] * 6), ack_timeout_ms=1000)
    assert len(batches(sess.poll(0, WALL))) == 3
    ack(sess, "eth", 1, 2, 100)  # round trips of 100 and 101 ms
    ack(sess, "eth", 3, 4, 101)
    assert sess.forwarder.hedge_delay_ms() == 2 * 101
    assert batches(sess.poll(201, WALL + 201)) == []
    assert batches(sess.poll(202, WALL + 202)) == [("lte", 5, 6)]
    slow = both_up(journal_of([rec.TXN] * 4), ack_timeout_ms=300)
    slow.poll(0, WALL)
    ack(slow, "eth", 1, 2, 250)
    assert slow.forwarder.hedge_delay_ms() == 300  # never later than the resend itself


def test_a_slow_but_healthy_uplink_under_the_floor_is_not_doubled():
    sess = both_up(journal_of([rec.TXN] * 20), window=1)
    now = 0
    for first in range(1, 21, 2):
        assert batches(sess.poll(now, WALL + now)) == [("eth", first, first + 1)]
        now += 40  # answered after 40 ms, under the 50 ms floor
        assert batches(sess.poll(now, WALL + now)) == []
        ack(sess, "eth", first, first + 1, now)
    c = sess.forwarder.counters
    assert (c["hedged"], c["acked"], sess.forwarder.hedge_delay_ms()) == (0, 10, 80)


def test_a_metered_standby_carries_hedged_transactions_only_unless_told():
    classes = [rec.TELEMETRY, rec.TELEMETRY, rec.TXN, rec.TXN]
    sess = both_up(journal_of(classes), metered=["lte"])
    assert batches(sess.poll(0, WALL)) == [("eth", 1, 2), ("eth", 3, 4)]
    assert batches(sess.poll(60, WALL + 60)) == [("lte", 3, 4)]  # telemetry waits for eth
    every = both_up(journal_of(classes), metered=["lte"], hedge={"lte": s.HEDGE_ALL})
    every.poll(0, WALL)
    assert batches(every.poll(60, WALL + 60)) == [("lte", 1, 2), ("lte", 3, 4)]
    off = both_up(journal_of(classes), hedge={"lte": s.HEDGE_OFF})
    off.poll(0, WALL)
    assert batches(off.poll(60, WALL + 60)) == []
    never = both_up(journal_of(classes), hedge_floor_ms=0)
    never.poll(0, WALL)
    assert batches(never.poll(999, WALL + 999)) == []


def test_a_backlog_found_at_uplink_up_is_not_hedged_but_live_records_beside_it_are():
    j = journal_of([rec.TXN] * 6)
    j.flush()  # durable before the uplinks come up: the backlog lane's
    sess = both_up(j)  # its first poll sends the backlog
    assert [(f.lane, f.first, f.last) for f in sess.forwarder.inflight] == [
        ("backlog", 1, 2), ("backlog", 3, 4), ("backlog", 5, 6)]
    j.append(b'{"i":6}', rec.TXN, 7)
    j.append(b'{"i":7}', rec.TXN, 8)
    j.flush()
    assert batches(sess.poll(1, WALL + 1)) == [("eth", 7, 8)]  # live, beside the backlog
    assert batches(sess.poll(51, WALL + 51)) == [("lte", 7, 8)]  # only the live one
    assert batches(sess.poll(999, WALL + 999)) == []
    assert sess.forwarder.counters["hedged"] == 1
    assert sess.forwarder.next_deadline_ms() == 1000  # the backlog's ack timeout, no hedge


def test_an_ack_on_the_standby_counts_only_for_a_batch_hedged_there():
    sess = both_up(journal_of([rec.TXN] * 2))
    sess.poll(0, WALL)
    assert ack(sess, "lte", 1, 2, 10) == []  # not hedged: the standby's copy of the ack
    assert sess.counters["ignored_inactive"] == 1 and sess.forwarder.inflight


def test_hedges_answered_on_the_standby_three_times_in_a_row_demote_the_active_uplink():
    sess = both_up(journal_of([rec.TXN] * 8))
    sess.poll(0, WALL)  # 1-2, 3-4, 5-6, 7-8 on eth
    assert len(batches(sess.poll(50, WALL + 50))) == 4  # all hedged on lte
    for first in (1, 3):
        ack(sess, "lte", first, first + 1, 60)
    assert sess.active == "eth"
    out = ack(sess, "lte", 5, 6, 61)
    assert notes(out, "demoted") == [{"uplink": "eth", "hedges_won": 3}]
    assert notes(out, "failover") == [{"from": "eth", "to": "lte"}]
    assert sess.active == "lte" and sess.selector.demotions == 1
    assert batches(sess.poll(62, WALL + 62)) == [("lte", 7, 8)]  # the rest goes again there
    sess.poll(5060, WALL + 5060)
    assert sess.active == "lte"
    back = sess.poll(5061, WALL + 5061)
    assert notes(back, "failback") == [{"from": "lte", "to": "eth"}]  # after the hold time


def test_an_ack_through_the_active_uplink_breaks_the_streak():
    sess = both_up(journal_of([rec.TXN] * 8))
    sess.poll(0, WALL)
    sess.poll(50, WALL + 50)
    ack(sess, "lte", 1, 2, 60)
    ack(sess, "lte", 3, 4, 60)
    ack(sess, "eth", 5, 6, 61)  # the active path answered this one first
    ack(sess, "lte", 7, 8, 62)
    assert sess.active == "eth" and sess.selector.demotions == 0


def test_a_standby_that_wins_each_race_while_the_active_uplink_still_delivers_is_no_rescue():
    """Both uplinks reach one broker, so each hears every ack: under load the standby's
    copy may come first every time. The active uplink's own copy following it shows that
    path alive, so no streak of hedges "won" that way demotes it (CI, stop 34)."""
    sess = both_up(journal_of([rec.TXN] * 8))
    sess.poll(0, WALL)
    sess.poll(50, WALL + 50)  # all four hedged on lte
    for first in (1, 3, 5, 7):
        ack(sess, "lte", first, first + 1, 60 + first)
        ack(sess, "eth", first, first + 1, 61 + first)  # a stale copy, but a live path
    assert sess.active == "eth" and sess.selector.demotions == 0
    assert sess.forwarder.counters["hedges_won"] == 4 and not sess.forwarder.inflight
