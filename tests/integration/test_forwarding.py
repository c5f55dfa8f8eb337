"""Out to the ledger, end to end: agent -> fault proxy -> mosquitto -> ledger -> ack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.simulator.lab import Lab, wait_for


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path)
    yield r
    r.close()


def _exactly_once(rig: Lab, n: int) -> None:
    codes = [json.loads(d)["code"] for d in rig.ledger_codes()]
    assert codes == [f"C{i:08d}" for i in range(1, n + 1)]


def _all_acked(agent: object) -> bool:
    """Every durable record acknowledged and its ring space reclaimed (seqs also count
    the agent's link incidents, so tests compare the tail with the head, not numbers)."""
    j = agent.journal.journal  # type: ignore[attr-defined]
    return j.tail_seq == j.durable_seq + 1


def test_steady_flow_reaches_the_ledger_once_and_commits(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(200)
    assert wait_for(lambda: rig.ledger_count() == 200, 10), rig.ledger_count()
    _exactly_once(rig, 200)
    assert wait_for(lambda: _all_acked(agent), 5)  # ring space reclaimed
    assert agent.snapshot()["uplink"] == "primary"
    assert agent.snapshot()["forwarding"]["alarms"] == []  # same clock: no offset alarm


def test_primary_blackholed_fails_over_and_nothing_is_lost(rig: Lab) -> None:
    """Stands for the 2-minute primary blackhole: the switch must come within 3 s."""
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(50)
    assert wait_for(lambda: rig.ledger_count() == 50, 10)
    rig.proxies[0].set_mode("blackhole")
    import time
    t0 = time.monotonic()
    rig.emit(50)  # journaled while the primary is silently dead
    assert wait_for(lambda: agent.forwarding.active == "up1", 5)
    assert wait_for(lambda: rig.ledger_count() == 100, 10)
    took = time.monotonic() - t0
    assert took <= 4.5, f"failover and delivery took {took:.1f} s"
    _exactly_once(rig, 100)
    assert agent.snapshot()["uplink"] == "secondary"
    rig.proxies[0].set_mode("pass")  # fail back after the hold time
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(10)
    assert wait_for(lambda: rig.ledger_count() == 110, 10)
    _exactly_once(rig, 110)


def test_both_uplinks_down_then_restored_drains_everything(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    for p in rig.proxies:
        p.set_mode("refuse")
    assert wait_for(lambda: agent.forwarding.active is None, 6)
    rig.emit(3000)  # nothing read while the link is down is dropped
    assert rig.ledger_count() == 0
    for p in rig.proxies:
        p.set_mode("pass")
    assert wait_for(lambda: rig.ledger_count() == 3000, 20), rig.ledger_count()
    _exactly_once(rig, 3000)


def test_broker_restart_without_persistence_resends_from_committed(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(100)
    assert wait_for(lambda: rig.ledger_count() == 100, 10)
    rig.broker.crash()
    rig.emit(100)  # journaled while the broker is dead
    rig.broker.restart()
    assert wait_for(lambda: rig.ledger_count() == 200, 20), rig.ledger_count()
    _exactly_once(rig, 200)


def test_a_forged_batch_is_rejected_by_the_ledger(rig: Lab) -> None:
    from midshift.firmware.core.signing import Signer
    from midshift.firmware.core.wire import Batch, encode_batch
    forged = encode_batch(Signer(b"x" * 32), Batch("gw-t", 1, [(1, 0, 0, b"{}")], 0))
    assert rig.ledger.handle("midshift/v1/lab/gw-t/events", forged) is None
    assert rig.ledger.counters["rejected"] == 1 and rig.ledger_count() == 0
    rows = rig.store.query("SELECT reason FROM rejections")
    assert rows == [("bad_mac",)]


def test_a_replayed_command_is_rejected_and_changes_nothing(rig: Lab) -> None:
    import paho.mqtt.publish as publish

    from midshift.firmware.core.commands import sign_command
    from midshift.firmware.core.signing import Signer
    from midshift.simulator.lab import COMMAND_KEY

    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    host = Signer(COMMAND_KEY)
    topic = "midshift/v1/lab/gw-t/cmd"
    port = rig.broker.port
    fwd = agent.forwarding.session
    publish.single(topic, sign_command(host, "gw-t", 1, "set-log-level", {"level": "DEBUG"}),
                   qos=1, hostname="127.0.0.1", port=port)
    assert wait_for(lambda: (fwd.last_command or {}).get("id") == 1, 5)
    replay = sign_command(host, "gw-t", 1, "drain-now")  # a recorded id, replayed
    publish.single(topic, replay, qos=1, hostname="127.0.0.1", port=port)
    forged = sign_command(Signer(b"z" * 32), "gw-t", 2, "drain-now")
    publish.single(topic, forged, qos=1, hostname="127.0.0.1", port=port)
    assert wait_for(lambda: fwd.counters["commands_rejected"] == 2, 5)
    assert fwd.gate.rejected == {"replayed": 1, "bad_signature": 1}
    assert fwd.last_command["cmd"] == "set-log-level"  # nothing else happened
    assert (rig.tmp / "journal" / "last-command-id").read_text() == "1"


def test_reconcile_reports_once_delivery_against_ground_truth(rig: Lab) -> None:
    from midshift.host_tools.__main__ import main as host_main
    from midshift.host_tools.reconcile import reconcile
    from midshift.simulator.ground_truth import GroundTruthLog

    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    truth = GroundTruthLog(rig.tmp / "dev1.jsonl", "dev1")
    for i in range(1, 31):
        truth.record("scan", f"C{i:08d}")
    truth.record("scan", "C99999999")  # produced, never delivered: must show as lost
    truth.record("fault", "ff00", expect=False)
    truth.close()
    rig.emit(30)
    rig.broker.crash()  # a resend after the restart makes duplicates the ledger discards
    rig.broker.restart()
    assert wait_for(lambda: rig.ledger_count() == 30, 15)
    r = reconcile(rig.store, [rig.tmp / "dev1.jsonl"])
    assert (r["events"] - r["incidents"], r["gaps"], r["lost"], r["unexpected"]) == (30, 0, 1, 0)
    assert r["incidents"] >= 1  # at least the link's first "online"
    assert r["ground_truth"]["dev1"]["lost_examples"] == ["C99999999"]
    g = r["gateways"]["gw-t"]
    assert g["devices"]["dev1"]["events"] == 30 and g["latency_ms"]["p50"] is not None
    assert host_main(["reconcile", "--db", f"sqlite:///{rig.tmp / 'ledger.db'}",
                      "--ground-truth", str(rig.tmp / "dev1.jsonl"), "--json"]) == 1
    assert host_main(["reconcile", "--db", "sqlite:///nowhere/x.db"]) == 2


def test_status_retained_will_sync_log_and_systemd_notify(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    import paho.mqtt.client as mqtt

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(5)
    lab = Lab(tmp_path, uplinks=1)  # before the env: mosquitto speaks sd_notify too
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    seen: list[dict] = []
    got = threading.Condition()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with got:
            seen.append(json.loads(msg.payload))
            got.notify_all()

    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", lab.broker.port)
    watcher.subscribe("midshift/v1/lab/gw-t/status", qos=1)
    watcher.loop_start()
    try:
        agent = lab.start_agent()
        assert notify.recv(256).startswith(b"READY=1")
        assert notify.recv(256) == b"WATCHDOG=1"
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        lab.emit(5)
        assert wait_for(lambda: lab.ledger_count() == 5, 10)
        assert wait_for(lambda: any(s.get("state") == "online" for s in seen), 10)
        online = [s for s in seen if s.get("state") == "online"][-1]
        assert online["gateway"] == "gw-t" and online["uplink"] == "primary"
        assert {"backlog_records", "devices", "forwarding", "journal"} <= set(online)

        def logged() -> set[str]:
            lines = [json.loads(x) for x in (tmp_path / "sync.log").read_text().splitlines()]
            return {x["event"] for x in lines}

        # The ledger holds the events before its ack reaches the gateway: wait for the ack
        # to be logged, or the reset below may cut it off.
        assert wait_for(lambda: "acked" in logged(), 10), logged()
        lab.proxies[0].set_mode("reset")  # the gateway vanishes without a DISCONNECT
        assert wait_for(lambda: any(s.get("state") == "offline" for s in seen), 10)
        lines = [json.loads(x) for x in (tmp_path / "sync.log").read_text().splitlines()]
        events = {x["event"] for x in lines}
        assert {"uplink_up", "up", "sent", "acked"} <= events, events
        assert all("ts_ms" in x for x in lines)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        lab.close()
        notify.close()


def _emit_for(rig: Lab, seconds: float, per_s: int) -> None:
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rig.emit(1)
        time.sleep(1 / per_s)


def test_a_flapping_primary_loses_and_duplicates_nothing(rig: Lab) -> None:
    """Stands for a primary flapping every few seconds for a minute (here 10 s: two down
    periods of 3 s, each longer than the 1 s keepalive takes to notice)."""
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.proxies[0].set_mode("flap", up_ms=2000, down_ms=3000, down_mode="blackhole")
    _emit_for(rig, 10, 50)
    rig.proxies[0].set_mode("pass")
    n = rig.n
    assert wait_for(lambda: rig.ledger_count() == n, 20), (rig.ledger_count(), n)
    _exactly_once(rig, n)
    assert agent.forwarding.selector.failovers >= 1


def test_live_events_do_not_wait_behind_a_draining_backlog(tmp_path: Path) -> None:
    """After an outage the backlog drains at a capped rate while live events go at once."""
    import time
    lab = Lab(tmp_path, uplinks=1, drain_rate=2000, max_events=200)
    try:
        agent = lab.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        lab.proxies[0].set_mode("refuse")
        assert wait_for(lambda: agent.forwarding.active is None, 6)
        lab.emit(10000)  # five seconds of backlog at the capped drain rate
        lab.proxies[0].set_mode("pass")
        assert wait_for(lambda: agent.forwarding.active == "up0", 5)
        assert wait_for(lambda: lab.ledger_count() > 0, 5)  # the backlog is draining
        t0 = time.monotonic()
        (seq,) = lab.emit(1)
        assert wait_for(lambda: lab.store.query(
            "SELECT 1 FROM events WHERE seq=?", (seq,)) != [], 5)
        live_s = time.monotonic() - t0
        assert live_s < 0.5, f"a live event took {live_s:.2f} s behind the backlog"
        assert lab.ledger_count() < 10001, "the backlog was not capped, nothing to show"
        assert wait_for(lambda: lab.ledger_count() == 10001, 20)
        _exactly_once(lab, 10001)
    finally:
        lab.close()


def test_ledger_down_nothing_is_committed_on_a_broker_puback(rig: Lab) -> None:
    """Peers counted a batch delivered on the broker's PUBACK and dropped it from the store.
    Here the ledger is stopped: the broker acks every publish, the journal keeps all."""
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.ledger.stop()
    rig.emit(100)
    # A resend means the ack timeout passed with every batch PUBACKed by the broker.
    assert wait_for(lambda: agent.forwarding.forwarder.counters["resent"] >= 1, 10)
    j = agent.journal.journal
    # Nothing of the 100 reclaimed (the link's "online" incident, seq 1, may have been
    # acked before the ledger stopped).
    assert j.durable_seq == 101 and j.tail_seq <= 2 and j.backlog()[0] >= 100
    from midshift.host_tools.ledger.service import LedgerService
    from midshift.simulator.lab import KEY
    rig.ledger = LedgerService(rig.store, {"gw-t": KEY}, rig.broker.url).start()
    assert wait_for(lambda: rig.ledger_count() == 100, 15)
    _exactly_once(rig, 100)
    assert wait_for(lambda: _all_acked(agent), 5)


def test_first_batch_after_a_restore_is_acked_within_two_seconds(rig: Lab) -> None:
    import time
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    for p in rig.proxies:
        p.set_mode("refuse")
    assert wait_for(lambda: agent.forwarding.active is None, 6)
    time.sleep(5)  # long enough for an exponential back-off to have grown
    rig.emit(1)
    t0 = time.monotonic()
    for p in rig.proxies:
        p.set_mode("pass")
    assert wait_for(lambda: rig.ledger_count() == 1, 5)
    assert time.monotonic() - t0 <= 2.0


def test_two_readings_in_one_millisecond_stay_two_events_with_their_read_time(rig: Lab) -> None:
    from midshift.firmware.core.event import Event
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    t = 1_700_000_000_123
    agent.emit(Event("dev1", "scan", t, {"code": "SAME"}))
    agent.emit(Event("dev1", "scan", t, {"code": "SAME"}))
    assert wait_for(lambda: rig.ledger_count() == 2, 10)
    rows = rig.store.query("SELECT read_ms, data FROM event_fields WHERE source <> 'agent' "
                           "ORDER BY seq")
    assert rows == [(t, '{"code":"SAME"}')] * 2  # stamped with the read time, not a later one


def test_a_gateway_clock_800_ms_fast_raises_the_offset_alarm(rig: Lab) -> None:
    from midshift.firmware.edges.clock import SystemClock

    class FastClock(SystemClock):
        def now_ms(self) -> int:
            return super().now_ms() + 800

    agent = rig.start_agent(FastClock())
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    for _ in range(10):
        rig.emit(5)
        wait_for(lambda: not agent.forwarding.forwarder.inflight, 2)
    snap = agent.snapshot()["forwarding"]
    assert snap["alarms"] == ["clock_offset"]
    assert -900 < snap["clock_offset_ms"] < -700


def test_two_ledger_workers_on_a_shared_subscription_store_each_event_once(tmp_path: Path) -> None:
    """Past one site: stateless workers on an MQTT 5 shared subscription, one database."""
    from midshift.host_tools.ledger.opener import open_store
    from midshift.host_tools.ledger.service import LedgerService
    from midshift.simulator.lab import KEY

    lab = Lab(tmp_path, uplinks=1)
    lab.ledger.stop()  # replaced by two workers sharing the subscription
    stores = [open_store(f"sqlite:///{tmp_path / 'ledger.db'}") for _ in range(2)]
    workers = [LedgerService(st, {"gw-t": KEY}, lab.broker.url, shared_group="ledger",
                             client_id=f"ledger-{i}").start() for i, st in enumerate(stores)]
    try:
        agent = lab.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        for _ in range(40):
            lab.emit(25)
        assert wait_for(lambda: lab.ledger_count() == 1000, 15)
        _exactly_once(lab, 1000)
        batches = [w.counters["batches"] for w in workers]
        assert all(b > 0 for b in batches), f"one worker did all the work: {batches}"
    finally:
        for w in workers:
            w.stop()
        for st in stores:
            st.close()
        lab.close()


def test_forged_acks_while_the_ledger_is_down_reclaim_nothing(rig: Lab) -> None:
    """Anyone who can publish on a gateway's ack topic tries to make it drop records the
    ledger never stored: unsigned (version 1) acks, acks signed with another key, and a
    real ack's signature pasted onto a wider range. None may commit."""
    import paho.mqtt.publish as publish

    from midshift.firmware.core.signing import Signer
    from midshift.firmware.core.wire_ledger import encode_ack

    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.ledger.stop()
    rig.emit(50)
    j = agent.journal.journal
    assert wait_for(lambda: agent.forwarding.forwarder.inflight, 5)
    session = agent.forwarding.session
    # The link's "online" incident may have been acked before the ledger stopped.
    tail0, commits0 = j.tail_seq, session.counters["commits"]
    assert j.backlog()[0] == j.durable_seq - tail0 + 1 >= 50
    flights = [(f.first, f.last) for f in agent.forwarding.forwarder.inflight]
    epoch = j.epoch
    stranger = Signer(b"f" * 32)
    forged = []
    for first, last in flights:
        unsigned = (b'{"v":1,"epoch":%d,"first":%d,"last":%d,"ledger_ms":1,"status":"ok",'
                    b'"dup":0}' % (epoch, first, last))
        other_key = encode_ack(stranger, epoch, first, last, 1)
        real = encode_ack(Signer(b"x" * 32), epoch, first, first, 1)  # a valid-looking sig
        widened = real.replace(b'"last":%d' % first, b'"last":%d' % last)
        forged += [unsigned, other_key, widened]
    for payload in forged:
        publish.single("midshift/v1/lab/gw-t/ack", payload, qos=1, hostname="127.0.0.1",
                       port=rig.broker.port)
    assert wait_for(lambda: session.counters["bad_acks"] >= len(forged), 10), session.counters
    assert j.tail_seq == tail0 and j.backlog()[0] >= 50  # nothing reclaimed
    assert session.counters["commits"] == commits0
    from midshift.host_tools.ledger.service import LedgerService
    from midshift.simulator.lab import KEY
    rig.ledger = LedgerService(rig.store, {"gw-t": KEY}, rig.broker.url).start()
    assert wait_for(lambda: rig.ledger_count() == 50, 15)  # the real ledger's acks do commit
    _exactly_once(rig, 50)
    assert wait_for(lambda: j.tail_seq == j.durable_seq + 1, 5)
