"""The link session's rules with a clock the test advances: acks, commits, commands, the
clock policy, uplink changes and the status document. Portable: plain functions and bare
asserts over the real core journal, so the same cases run under MicroPython."""

import json

from midshift.firmware.core import commands, topics
from midshift.firmware.core import record as rec
from midshift.firmware.core import session as s
from midshift.firmware.core.commands import CommandGate, sign_command
from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.storage import MemoryStorage
from midshift.firmware.core.wire_ledger import decode_batch, encode_ack, encode_resend

KEY = b"k" * 32
HOST = b"h" * 32
SITE = "s1"
GW = "gw-1"
WALL = 1700000000000
PORTABLE = True  # tests/micropython runs these cases under MicroPython too
LEDGER = Signer(KEY)  # the ledger signs acks with the gateway's key
ACK = topics.topic(SITE, GW, topics.ACK)
CMD = topics.topic(SITE, GW, topics.CMD)


def journal_with(n, segments=6):
    st = MemoryStorage(storage_size(4096, segments))
    Journal.format(st, 4096, 0xC0FFEE, GW)
    j = Journal.open(st)
    for i in range(n):
        j.append(b'{"i":%d}' % i, rec.TXN, i + 1)
    j.flush()
    return j


def session_for(j, gate=None, supports=(), **kw):
    opts = {"linger_ms": 0, "ack_timeout_ms": 1000, "hold_ms": 5000,
            "status_period_ms": 10000, "commit_every_ms": 500}
    opts.update(kw)
    return s.LinkSession(j, SITE, GW, Signer(KEY), ["eth", "lte"], 0, gate=gate,
                         supports=supports, **opts)


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def batches(actions):
    """(uplink, first, last) of every batch published."""
    out = []
    for p in of(actions, s.Publish):
        if p.topic.endswith("/events"):
            b = decode_batch(p.payload, Signer(KEY), _inflate)
            out.append((p.uplink, b.first_seq, b.last_seq))
    return out


def _inflate(data):
    import zlib
    return zlib.decompress(data)


def up(sess, now=0):
    sess.uplink_changed("eth", True, now)
    return sess.poll(now, WALL + now)


def test_nothing_is_sent_before_an_uplink_is_up_then_the_backlog_goes_on_it():
    j = journal_with(5)
    sess = session_for(j)
    assert batches(sess.poll(0, WALL)) == []
    out = up(sess, 10)
    assert batches(out) == [("eth", 1, 5)]
    assert of(out, s.StatusDue)  # a new uplink: say so at once
    assert [n.what for n in of(out, s.Note)][0] == "up"


def test_an_ack_commits_only_a_matching_batch_of_this_epoch():
    j = journal_with(5)
    sess = session_for(j)
    up(sess, 0)
    wrong_epoch = encode_ack(LEDGER, j.epoch + 1, 1, 5, WALL)
    assert of(sess.message("eth", ACK, wrong_epoch, 5, WALL + 5), s.Commit) == []
    assert sess.counters["bad_acks"] == 1
    garbage = sess.message("eth", ACK, b"\x00not an ack", 5, WALL + 5)
    assert of(garbage, s.Commit) == [] and sess.counters["bad_acks"] == 2
    forged = encode_ack(Signer(b"f" * 32), j.epoch, 1, 5, WALL)  # right shape, wrong key
    assert of(sess.message("eth", ACK, forged, 5, WALL + 5), s.Commit) == []
    assert sess.counters["bad_acks"] == 3 and len(sess.forwarder.inflight) == 1
    other_range = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 1, 3, WALL), 6, WALL + 6)
    assert of(other_range, s.Commit) == [] and sess.forwarder.counters["stale_acks"] == 1
    out = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 1, 5, WALL + 3), 8, WALL + 8)
    commits = of(out, s.Commit)
    assert len(commits) == 1 and commits[0].seq == 5
    assert len(of(out, s.Observe)) == 1  # the ledger's time goes into the HLC
    assert sess.counters["acks"] == 2 and sess.counters["commits"] == 1


def test_commits_are_held_to_one_per_interval_and_flushed_on_close():
    j = journal_with(4)
    sess = session_for(j, max_events=2)
    out = up(sess, 0)
    assert batches(out) == [("eth", 1, 2), ("eth", 3, 4)]
    first = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 1, 2, WALL), 10, WALL + 10)
    assert [c.seq for c in of(first, s.Commit)] == [2]
    j.commit(2, of(first, s.Commit)[0].pos)
    second = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 3, 4, WALL), 20, WALL + 20)
    assert of(second, s.Commit) == []  # 10 ms after the last commit: held
    assert sess.next_deadline_ms(20) == 510
    assert of(sess.poll(300, WALL + 300), s.Commit) == []
    assert [c.seq for c in of(sess.poll(510, WALL + 510), s.Commit)] == [4]
    assert sess.close(600) == []  # nothing pending any more


def test_close_forces_the_pending_commit():
    j = journal_with(2)
    sess = session_for(j, max_events=1)
    up(sess, 0)
    sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 1, 1, WALL), 1, WALL + 1)
    assert of(sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 2, 2, WALL), 2, WALL + 2),
              s.Commit) == []
    assert [c.seq for c in sess.close(3)] == [2]


def test_an_unacknowledged_batch_goes_again_after_the_ack_timeout():
    j = journal_with(3)
    sess = session_for(j)
    up(sess, 0)
    assert batches(sess.poll(999, WALL + 999)) == []
    again = sess.poll(1000, WALL + 1000)
    assert batches(again) == [("eth", 1, 3)]
    assert [n.what for n in of(again, s.Note)] == ["resent"]


def test_the_ledgers_resend_nudge_sends_what_is_in_flight_at_once():
    # The broker lost the ledger's subscription: batches sent before it subscribed again
    # reached no one, and the ledger says so instead of leaving them to the ack timeout.
    j = journal_with(3)
    sess = session_for(j)
    up(sess, 0)
    out = sess.message("eth", ACK, encode_resend(LEDGER, WALL), 100, WALL + 100)
    assert [n.what for n in of(out, s.Note)] == ["resend_asked"]
    assert of(out, s.Commit) == [] and sess.counters["bad_acks"] == 0
    assert sess.counters["resend_asked"] == 1
    again = sess.poll(101, WALL + 101)
    assert batches(again) == [("eth", 1, 3)]
    assert batches(sess.poll(900, WALL + 900)) == []  # its own ack timeout starts again
    forged = encode_resend(Signer(b"f" * 32), WALL)
    sess.message("eth", ACK, forged, 902, WALL + 902)
    assert sess.counters["bad_acks"] == 1 and batches(sess.poll(903, WALL + 903)) == []


def test_failover_resends_everything_in_flight_on_the_next_uplink():
    j = journal_with(3)
    sess = session_for(j)
    up(sess, 0)
    sess.uplink_changed("lte", True, 1)
    assert sess.message("lte", ACK, encode_ack(LEDGER, j.epoch, 1, 3, WALL), 2, WALL + 2) == []
    assert sess.counters["ignored_inactive"] == 1  # only the active uplink's acks count
    sess.uplink_changed("eth", False, 3, "keepalive")
    out = sess.poll(4, WALL + 4)
    assert batches(out) == [("lte", 1, 3)]
    assert "failover" in [n.what for n in of(out, s.Note)]
    assert sess.status(WALL, {})["uplink"] == "secondary"


def test_a_foreign_topic_is_counted_and_ignored():
    j = journal_with(1)
    sess = session_for(j)
    up(sess, 0)
    other = topics.topic(SITE, "gw-2", topics.ACK)
    assert sess.message("eth", other, encode_ack(LEDGER, j.epoch, 1, 1, WALL), 1, WALL) == []
    assert sess.counters["foreign_topic"] == 1 and sess.forwarder.inflight


def test_commands_without_a_key_are_rejected():
    sess = session_for(journal_with(0))
    up(sess, 0)
    out = sess.message("eth", CMD, sign_command(Signer(HOST), GW, 1, "drain-now"), 1, WALL)
    assert of(out, s.SaveCommandId) == [] and sess.counters["commands_rejected"] == 1


def test_a_signed_command_is_obeyed_once_and_its_id_saved():
    sess = session_for(journal_with(0), CommandGate(Signer(HOST), GW), ("set-log-level",))
    up(sess, 0)
    sess.poll(1, WALL + 1)
    out = sess.message("eth", CMD, sign_command(Signer(HOST), GW, 7, "set-log-level",
                                                {"level": "DEBUG"}), 2, WALL + 2)
    assert [a.cmd_id for a in of(out, s.SaveCommandId)] == [7]
    assert [a.level for a in of(out, commands.SetLogLevel)] == ["DEBUG"]
    assert sess.last_command == {"id": 7, "cmd": "set-log-level", "result": "ok"}
    assert of(sess.poll(3, WALL + 3), s.StatusDue)  # answered with a fresh status
    replay = sess.message("eth", CMD, sign_command(Signer(HOST), GW, 7, "drain-now"), 4,
                          WALL)
    forged = sess.message("eth", CMD, sign_command(Signer(b"z" * 32), GW, 8, "drain-now"),
                          5, WALL)
    assert of(replay + forged, s.SaveCommandId) == []
    assert sess.counters["commands_rejected"] == 2
    assert sess.gate.rejected == {"replayed": 1, "bad_signature": 1}
    assert sess.last_command["id"] == 7


def test_a_command_this_runtime_cannot_carry_out_says_so():
    sess = session_for(journal_with(0), CommandGate(Signer(HOST), GW))
    up(sess, 0)
    out = sess.message("eth", CMD, sign_command(Signer(HOST), GW, 1, "reload-config"), 1,
                       WALL)
    assert of(out, commands.Reload) == [] and of(out, s.SaveCommandId)
    assert sess.last_command["result"] == "not supported here"


def test_replay_from_sends_the_unacknowledged_records_again():
    j = journal_with(3)
    sess = session_for(j, CommandGate(Signer(HOST), GW))
    up(sess, 0)
    out = sess.message("eth", CMD, sign_command(Signer(HOST), GW, 1, "replay-from",
                                                {"seq": 1}), 1, WALL)
    assert sess.last_command["result"] == {"from_seq": 1}
    assert batches(out) == []
    assert [b[1:] for b in batches(sess.poll(2, WALL + 2))] == [(1, 3)]


def test_a_clock_offset_past_the_threshold_raises_the_alarm_once_and_clears():
    j = journal_with(14)
    sess = session_for(j, max_events=1, window=14)
    up(sess, 0)
    notes = []
    for seq in range(1, 15):  # the ledger's clock runs 2 s ahead, then back in step
        ahead = 2000 if seq <= 3 else 0
        out = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, seq, seq, WALL + seq + ahead),
                           seq, WALL + seq)
        notes += [n for n in of(out, s.Note) if n.what == "alarm"]
        if seq == 3:
            assert sess.status(WALL, {})["forwarding"]["alarms"] == ["clock_offset"]
    assert len(notes) == 1 and notes[0].fields["alarm"] == "clock_offset"
    assert sess.status(WALL, {})["forwarding"]["alarms"] == []  # the estimate decayed
    assert abs(sess.clock_offset_ms) < 500


def test_the_status_document_has_one_shape():
    j = journal_with(2)
    sess = session_for(j)
    up(sess, 0)
    doc = sess.status(WALL, {"devices": [{"name": "a", "state": "ok"},
                                         {"name": "b", "state": "error"}],
                             "journal_refusing_txn": True})
    for key in ("v", "gateway", "site", "state", "runtime", "at_ms", "uplink",
                "backlog_records", "backlog_bytes", "journal", "journal_refusing_txn",
                "devices", "devices_in_error", "pipeline", "counters", "forwarding"):
        assert key in doc, key
    assert doc["uplink"] == "primary" and doc["backlog_records"] == 2
    assert doc["devices_in_error"] == 1 and doc["journal_refusing_txn"] is True
    assert doc["forwarding"]["in_flight"] == 1 and doc["forwarding"]["active_uplink"] == "eth"
    msg = sess.status_message(WALL, {})
    assert msg.retain and msg.topic == topics.topic(SITE, GW, topics.STATUS)
    assert json.loads(msg.payload)["state"] == "online"
    topic, will = s.last_will(SITE, GW)
    assert topic == msg.topic and json.loads(will)["state"] == "offline"


def test_a_publish_the_edge_refused_is_counted_and_resent_on_time():
    j = journal_with(1)
    sess = session_for(j)
    up(sess, 0)
    sess.publish_failed("eth")
    assert sess.status(WALL, {})["forwarding"]["counters"]["publish_refused"] == 1
    assert batches(sess.poll(1000, WALL + 1000)) == [("eth", 1, 1)]


def test_a_silent_outage_sets_no_deadline_to_spin_on():
    j = journal_with(3)
    sess = session_for(j)
    up(sess, 0)
    assert sess.next_deadline_ms(1) == 1000  # the batch's ack timeout
    sess.uplink_changed("eth", False, 2, "keepalive")
    sess.poll(3, WALL + 3)
    assert sess.active is None
    assert sess.next_deadline_ms(5000) is None  # overdue acks, but nothing can go
    assert sess.poll(5000, WALL + 5000) == []


def test_a_runtime_alarm_shows_in_the_status_at_once_and_clears():
    sess = session_for(journal_with(0))
    up(sess, 0)
    sess.poll(1, WALL + 1)
    notes = sess.alarm("command_id_write", True)
    assert [n.what for n in notes] == ["alarm"] and sess.alarm("command_id_write") == []
    assert of(sess.poll(2, WALL + 2), s.StatusDue)
    assert sess.status(WALL, {})["forwarding"]["alarms"] == ["command_id_write"]
    assert [n.what for n in sess.alarm("command_id_write", False)] == ["alarm_cleared"]
    assert sess.status(WALL, {})["forwarding"]["alarms"] == []


def test_a_rejected_batch_keeps_its_records_alarms_and_is_settled_only_by_an_operator():
    j = journal_with(6)
    sess = session_for(j, CommandGate(Signer(HOST), GW), max_events=3)
    assert batches(up(sess, 0)) == [("eth", 1, 3), ("eth", 4, 6)]
    refused = encode_ack(LEDGER, j.epoch, 1, 3, WALL, "rejected", "out_of_range")
    out = sess.message("eth", ACK, refused, 1, WALL + 1)
    out += sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 4, 6, WALL), 2, WALL + 2)
    out += sess.poll(600, WALL + 600)
    assert of(out, s.Commit) == []  # 4..6 are acked, but 1..3 are not the ledger's
    assert "ledger_rejected" in sess.alarms
    doc = sess.status(WALL)["forwarding"]
    assert doc["rejected"] == [[1, 3]] and doc["counters"]["rejected"] == 1
    # After a failover the batch goes again, is refused again, and is listed once.
    sess.uplink_changed("eth", False, 700)
    sess.uplink_changed("lte", True, 700)
    assert (("lte", 1, 3)) in batches(sess.poll(700, WALL + 700))
    sess.message("lte", ACK, refused, 701, WALL + 701)
    assert sess.status(WALL)["forwarding"]["rejected"] == [[1, 3]]
    settle = sign_command(Signer(HOST), GW, 1, "settle-rejected", {"first": 1, "last": 3})
    out = sess.message("lte", CMD, settle, 800, WALL + 800)
    assert sess.last_command["result"] == {"settled": [[1, 3]]}
    out += sess.message("lte", ACK, encode_ack(LEDGER, j.epoch, 4, 6, WALL), 801, WALL + 801)
    out += sess.poll(1400, WALL + 1400)
    assert [c.seq for c in of(out, s.Commit)][-1] == 6
    assert "ledger_rejected" not in sess.alarms
    bad = sign_command(Signer(HOST), GW, 2, "settle-rejected", {"first": 3, "last": 1})
    sess.message("lte", CMD, bad, 900, WALL)
    assert sess.gate.rejected == {"bad_args": 1}


def test_the_link_going_up_and_down_is_journaled_as_an_incident():
    sess = session_for(journal_with(0))
    out = up(sess, 10)
    inc = of(out, s.Incident)
    assert [(i.kind, i.data) for i in inc] == [
        ("link", {"state": "online", "uplink": "eth", "since_ms": WALL + 10})]
    sess.uplink_changed("lte", True, 20)
    assert of(sess.poll(20, WALL + 20), s.Incident) == []  # a standby: nothing changed
    sess.uplink_changed("eth", False, 30)
    assert of(sess.poll(30, WALL + 30), s.Incident) == []  # a failover: still online
    sess.uplink_changed("lte", False, 40)
    inc = of(sess.poll(40, WALL + 40), s.Incident)
    assert [(i.kind, i.data) for i in inc] == [
        ("link", {"state": "offline", "uplink": None, "since_ms": WALL + 40})]


def test_every_status_says_when_who_and_since_when():
    j = journal_with(0)
    sess = s.LinkSession(j, SITE, GW, Signer(KEY), ["eth"], 1000, version="9.9.9",
                         boot_id="b007")
    sess.uplink_changed("eth", True, 1000)
    sess.poll(62000, WALL)
    doc = sess.status(WALL)
    assert doc["ts_ms"] == WALL and doc["version"] == "9.9.9" and doc["boot_id"] == "b007"
    assert doc["uptime_s"] == 61 and doc["oldest_unacked_age_s"] is None
    assert sess.status(WALL, None, 121000)["uptime_s"] == 120
    topic, will = s.last_will(SITE, GW, "9.9.9", "b007")
    will = json.loads(will)
    assert will["state"] == "offline" and will["reason"] == "connection_lost"
    assert will["boot_id"] == "b007"


def test_a_clean_stop_says_offline_on_every_connected_uplink():
    sess = session_for(journal_with(0))
    up(sess, 0)
    sess.uplink_changed("lte", True, 1)
    msgs = sess.goodbye(WALL + 5)
    assert [m.uplink for m in msgs] == ["eth", "lte"]
    doc = json.loads(msgs[0].payload)
    assert msgs[0].retain and msgs[0].topic == topics.topic(SITE, GW, topics.STATUS)
    assert doc["state"] == "offline" and doc["reason"] == "stopped" and doc["ts_ms"] == WALL + 5
    sess.uplink_changed("eth", False, 2)
    sess.uplink_changed("lte", False, 2)
    assert sess.goodbye(WALL + 6) == []


def test_the_oldest_unacked_record_is_aged_from_its_own_stamp():
    st = MemoryStorage(storage_size(4096, 6))
    Journal.format(st, 4096, 0xC0FFEE, GW)
    j = Journal.open(st)
    j.append(b'{"i":1}', rec.TXN, (WALL - 42000) << 16)
    j.append(b'{"i":2}', rec.TXN, (WALL - 1000) << 16)
    j.flush()
    sess = session_for(j)
    assert sess.status(WALL)["oldest_unacked_age_s"] == 42.0
    up(sess, 0)
    out = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 1, 2, WALL), 10, WALL)
    for c in of(out + sess.poll(600, WALL + 600), s.Commit):
        j.commit(c.seq, c.pos)
    assert sess.status(WALL)["oldest_unacked_age_s"] is None


def test_records_waiting_with_no_ack_raise_no_ack_until_one_comes():
    j = journal_with(3)
    sess = session_for(j, no_ack_ms=30000)
    up(sess, 0)
    assert sess.next_deadline_ms(1) == 1000  # the ack timeout comes before no_ack's
    for t in range(1000, 30000, 1000):  # the ledger is silent: resends, no alarm yet
        sess.poll(t, WALL + t)
    assert "no_ack" not in sess.alarms
    notes = of(sess.poll(30000, WALL + 30000), s.Note)
    assert [n.fields for n in notes if n.what == "alarm"] == [
        {"alarm": "no_ack", "detail": "no ack for 30 s while 3 records wait"}]
    doc = sess.status(WALL + 30000)
    assert doc["alarms"] == ["no_ack"] and "3 records" in doc["alarm_detail"]["no_ack"]
    out = sess.message("eth", ACK, encode_ack(LEDGER, j.epoch, 1, 3, WALL), 30001, WALL)
    assert [n.what for n in of(out, s.Note)] == ["acked", "alarm_cleared"]
    assert "no_ack" not in sess.alarms


def test_an_outage_with_records_waiting_raises_no_ack_too():
    sess = session_for(journal_with(1), no_ack_ms=5000)
    sess.poll(0, WALL)  # no uplink ever came up
    sess.poll(5000, WALL + 5000)
    assert "no_ack" in sess.alarms
    assert sess.next_deadline_ms(5001) is None  # nothing to spin on meanwhile


def test_an_idle_gateway_never_raises_no_ack():
    sess = session_for(journal_with(0), no_ack_ms=5000)
    up(sess, 0)
    sess.poll(60000, WALL + 60000)
    assert "no_ack" not in sess.alarms


def test_devices_down_count_as_in_error_and_the_alarm_carries_their_names():
    sess = session_for(journal_with(0))
    notes = sess.alarm("device_down", True, "plc1,scale1")
    assert notes[0].fields == {"alarm": "device_down", "detail": "plc1,scale1"}
    assert sess.alarm("device_down", True, "plc1,scale1") == []
    assert sess.alarm("device_down", True, "plc1")[0].fields["detail"] == "plc1"
    doc = sess.status(WALL, {"devices": [{"name": "plc1", "state": "disconnected"},
                                         {"name": "scan", "state": "error"}],
                             "devices_down": ["plc1"]})
    assert doc["devices_in_error"] == 2 and doc["alarm_detail"] == {"device_down": "plc1"}
    sess.alarm("device_down", False)
    assert sess.status(WALL)["alarm_detail"] == {}
