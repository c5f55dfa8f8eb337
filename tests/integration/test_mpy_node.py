"""The MicroPython node (midshift/firmware/mpy/, unchanged) on CPython with the board stand-ins of
tests/mpy_board/: umqtt.simple from PyPI to a real mosquitto, the reference ledger, the
scanner and scale emulators on ptys. What the node promises, each against real peers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import FLAG_ZLIB
from midshift.firmware.core.wire_ledger import decode_batch
from midshift.simulator.lab import wait_for
from tests.mpy_board.rig import GATEWAY, KEY, SITE, NodeRig, board_modules

WAIT_S = 15


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[NodeRig]:
    with board_modules():
        r = NodeRig(tmp_path)
        try:
            yield r
        finally:
            r.close()


def _state(rig: NodeRig) -> dict:
    """What a failed wait prints: the node's journal, uplink and Wi-Fi, the ledger."""
    out: dict = {"ledger": rig.ledger_count(), "ledger_counters": dict(rig.ledger.counters)}
    if rig.node is not None:
        st = rig.node.status()
        out.update(journal=st["journal"], uplink=st["uplink_counters"], wifi=st.get("wifi"),
                   forwarding=st["forwarding"], devices=st["devices"])
    return out


def _all_acked(node: object) -> bool:
    """Everything durable acknowledged and its ring space reclaimed (the tail meets the
    head); seqs also count the node's own link incidents, so tests compare these, not
    numbers."""
    j = node.journal  # type: ignore[attr-defined]
    return j.tail_seq == j.durable_seq + 1


def _journaled(node: object, n: int) -> bool:
    """n device events journaled and durable (the link incidents are not counted). Read
    from the durable seq: the node's thread empties the pending queue before its sync ends,
    so an empty queue seen from here does not yet mean on flash."""
    j = node.journal  # type: ignore[attr-defined]
    return node.counters["journaled"] == n and j.durable_seq == j.next_seq - 1  # type: ignore


def _capture_batches(port: int) -> tuple[mqtt.Client, list[bytes]]:
    seen: list[bytes] = []
    ready = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.on_connect = lambda cl, *a: cl.subscribe(f"midshift/v1/{SITE}/{GATEWAY}/events", 1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, u, m: seen.append(bytes(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.wait(5)
    return c, seen


def test_scans_reach_the_ledger_once_in_the_wire_format(rig: NodeRig) -> None:
    spy, batches = _capture_batches(rig.broker.port)
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
    # umqtt writes a publish in pieces: without TCP_NODELAY each waits on a delayed ACK
    assert node.uplink.sockets.last._s._s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for _ in range(5):
        rig.scanner.burst(6)
    want = rig.expected_scans()
    assert len(want) == 30
    assert wait_for(lambda: rig.ledger_count() == 30, WAIT_S), _state(rig)
    assert rig.ledger_values() == want  # once each, in scan order
    rows = rig.store.query("SELECT DISTINCT source, kind FROM event_fields WHERE gateway=?",
                           (GATEWAY,))
    assert sorted(rows) == [("agent", "link"), ("scanner1", "scan")]  # the link came up
    # The bytes on the wire: the versioned batch format, uncompressed, signed with the key.
    assert wait_for(lambda: batches, 5), _state(rig)
    signer = Signer(KEY)
    decoded = [decode_batch(b, signer) for b in batches]
    assert all(b[5] & FLAG_ZLIB == 0 for b in batches)
    assert {d.gateway for d in decoded} == {GATEWAY}
    assert {d.epoch for d in decoded} == {node.journal.epoch}
    # Acked, so the ring space is reclaimed, and nothing was counted twice.
    assert wait_for(lambda: node.journal.durable_seq == 31 and _all_acked(node), 5), _state(rig)
    assert rig.ledger.counters["duplicates"] == 0
    spy.loop_stop()
    rig.stop()


def test_wifi_drop_mid_flow_loses_nothing_and_holds_the_journal(rig: NodeRig) -> None:
    import network
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
    rig.scanner.burst(10)
    assert wait_for(lambda: rig.ledger_count() == 10, WAIT_S), _state(rig)
    assert wait_for(lambda: _all_acked(node), WAIT_S), _state(rig)
    network.drop()
    assert wait_for(lambda: not node.uplink.connected, WAIT_S), _state(rig)
    rig.scanner.burst(10)
    rig.scanner.burst(10)
    # Journaled (durable) while the link is down; not acknowledged, so not reclaimed.
    assert wait_for(lambda: _journaled(node, 30), WAIT_S), _state(rig)
    assert rig.ledger_count() == 10
    # Seq 1 the link's "online", 2-11 the first scans; then "offline" and 20 scans.
    assert node.journal.tail_seq == 12 and node.journal.backlog()[0] == 21
    network.restore()
    assert wait_for(lambda: rig.ledger_count() == 30, WAIT_S), _state(rig)
    assert rig.ledger_values() == rig.expected_scans()
    assert wait_for(lambda: _all_acked(node), 5), _state(rig)
    assert [i["state"] for i in rig.incidents()] == ["online", "offline", "online"]
    assert node.wifi.counters["drops"] == 1 and node.wifi.counters["ups"] == 2
    rig.stop()


def test_space_is_reclaimed_only_after_the_ack_and_the_ledger_drops_the_resend(
        rig: NodeRig) -> None:
    """The ledger's first ack is lost on its way back: the batch is stored but the node
    must keep it, resend it after the ack timeout, and reclaim only on the second ack."""
    real_publish = rig.ledger.client.publish
    lost: list[bytes] = []

    def lossy_publish(topic: str, payload: bytes = b"", *args: object, **kw: object) -> object:
        if topic.endswith("/ack") and not lost:
            lost.append(payload)
            return None
        return real_publish(topic, payload, *args, **kw)

    rig.ledger.client.publish = lossy_publish  # type: ignore[method-assign]
    node = rig.start(ack_timeout_ms=1000)
    assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
    rig.scanner.burst(5)
    assert wait_for(lambda: rig.ledger_count() == 5 and lost, WAIT_S), _state(rig)
    # Stored in the ledger, not acknowledged to the node: nothing is reclaimed.
    # (Seq 1 is the link's "online" incident, 2-6 the scans.)
    assert node.journal.tail_seq == 1 and node.journal.backlog() == (6, node.journal.durable_pos)
    assert wait_for(lambda: node.forwarder.counters["resent"] >= 1, WAIT_S), _state(rig)
    assert wait_for(lambda: node.journal.tail_seq == 7, WAIT_S), _state(rig)
    assert rig.ledger_count() == 5  # the resend was a duplicate, stored once
    assert rig.ledger.counters["duplicates"] >= 1  # the resent batch (5 scans, or the
    # first of two batches when the burst was read in two pieces)
    assert rig.ledger_values() == rig.expected_scans()
    rig.stop()


def test_broker_killed_and_restarted_loses_nothing(rig: NodeRig) -> None:
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
    rig.scanner.burst(10)
    assert wait_for(lambda: rig.ledger_count() == 10, WAIT_S), _state(rig)
    rig.broker.crash()  # SIGKILL, no persistence: sessions and queued messages are gone
    rig.scanner.burst(10)
    assert wait_for(lambda: _journaled(node, 20), WAIT_S), _state(rig)
    assert wait_for(lambda: not node.uplink.connected, WAIT_S), _state(rig)
    rig.broker.restart()
    rig.scanner.burst(10)
    assert wait_for(lambda: rig.ledger_count() == 30, WAIT_S), _state(rig)
    assert rig.ledger_values() == rig.expected_scans()
    assert wait_for(lambda: _all_acked(node), 5), _state(rig)
    assert node.uplink.counters["connects"] >= 2
    rig.stop()


def test_a_silent_broker_does_not_stall_the_scanner(rig: NodeRig) -> None:
    """The path to the broker is blackholed (connections accepted, nothing answered):
    each network call gives up after the 0.5 s timeout and the UART keeps being read,
    every scan is journaled meanwhile, and all reach the ledger once the path is back."""
    node = rig.start(timeout_s=0.5)
    assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
    rig.scanner.burst(3)
    assert wait_for(lambda: rig.ledger_count() == 3, WAIT_S), _state(rig)
    node.counters["max_device_gap_ms"] = 0
    rig.proxy.set_mode("blackhole")
    t_end = time.monotonic() + 3.0
    sent = 3
    while time.monotonic() < t_end:  # scans keep coming while the uplink hangs
        rig.scanner.burst(2)
        sent += 2
        time.sleep(0.1)  # the scanner's pace, not a synchronisation
    assert wait_for(lambda: _journaled(node, sent), 5), _state(rig)
    assert node.uplink.counters["ping_timeouts"] + node.uplink.counters["publish_errors"] \
        + node.uplink.counters["connect_failures"] >= 1
    assert rig.ledger_count() < sent
    # Never more than about one timeout between two reads of the UART.
    assert node.counters["max_device_gap_ms"] < 1000, node.counters
    rig.proxy.set_mode("pass")
    assert wait_for(lambda: rig.ledger_count() == sent, WAIT_S), _state(rig)
    assert rig.ledger_values() == rig.expected_scans()
    rig.stop()


def test_garbage_from_the_scanner_is_rejected_and_counted(rig: NodeRig) -> None:
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
    scanner = node.devices[0]

    def settled(rejected: int) -> bool:  # every line so far framed, none half-read
        return scanner.counters["rejected"] >= rejected and not scanner.framer.pending()

    first = rig.scanner.scan()
    rig.scanner.wrong_baud_noise(40)
    rig.scanner.scan()  # glued to the noise: one line, rejected
    assert wait_for(lambda: settled(1), 5), scanner.counters
    rig.scanner.overlong(300)
    rig.scanner.scan("12")  # too short for min_length 8
    assert wait_for(lambda: settled(3), 5), scanner.counters
    rig.scanner.garbage(64)  # random bytes: one or more rejected lines, or a dropped partial
    assert wait_for(lambda: settled(4), 5), scanner.counters
    second = rig.scanner.scan()
    rig.scanner.scan("4111111111111111")  # a card number: masked before it is journaled
    assert wait_for(lambda: rig.ledger_count() == 3, WAIT_S), _state(rig)
    assert rig.ledger_values() == [first, second, "411111******1111"]
    c = scanner.counters
    assert c["rejected_noise"] >= 1 and c["rejected_overlong"] == 1 and c["rejected_short"] == 1
    assert c["scans"] == 3 and node.pipeline.masked == 1
    # The operator sees it: the retained status on the broker carries the counters.
    seen: list[dict] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    sub.on_connect = lambda cl, *a: cl.subscribe(f"midshift/v1/{SITE}/{GATEWAY}/status", 1)
    sub.on_message = lambda cl, u, m: seen.append(json.loads(m.payload))
    sub.connect("127.0.0.1", rig.broker.port)
    sub.loop_start()
    try:
        assert wait_for(lambda: any(d["devices"][0]["counters"]["rejected"] == c["rejected"]
                                    for d in seen), 10), seen[-1:]
    finally:
        sub.loop_stop()
    last = seen[-1]
    assert last["state"] == "online" and last["runtime"] == "micropython"
    assert last["devices"][0]["last_error"] is None  # good scans since
    assert last["pipeline"]["masked"] == 1
    assert last["version"] and last["ts_ms"] > 0 and last["devices_down"] == []
    # A clean stop says offline itself (the broker's last will is for vanishing).
    sub.loop_start()
    try:
        rig.stop()
        assert wait_for(lambda: seen[-1]["state"] == "offline", 10), seen[-1:]
    finally:
        sub.loop_stop()
    assert seen[-1]["reason"] == "stopped" and seen[-1]["boot_id"] == last["boot_id"]


def test_signed_commands_are_obeyed_and_a_replay_is_refused(tmp_path: Path) -> None:
    import paho.mqtt.publish as publish

    from midshift.firmware.core.commands import sign_command
    from tests.mpy_board.rig import COMMAND_KEY
    with board_modules():
        rig = NodeRig(tmp_path, commands=True)
        try:
            node = rig.start()
            assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
            rig.scanner.burst(4)  # seq 1 is the link's "online" incident, 2-5 the scans
            assert wait_for(lambda: node.journal.tail_seq == 6, WAIT_S), _state(rig)
            topic = f"midshift/v1/{SITE}/{GATEWAY}/cmd"
            host = Signer(COMMAND_KEY)
            publish.single(topic, sign_command(host, GATEWAY, 1, "replay-from", {"seq": 1}),
                           qos=1, hostname="127.0.0.1", port=rig.broker.port)
            assert wait_for(lambda: (node.last_command or {}).get("id") == 1, WAIT_S), \
                _state(rig)
            # Seqs 1-5 were acknowledged and their space reclaimed: the replay starts at the
            # commit point, as on the gateway (core forwarder.replay_from).
            assert node.last_command == {"id": 1, "cmd": "replay-from",
                                         "result": {"from_seq": 6}}
            assert rig.ledger_count() == 4
            publish.single(topic, sign_command(host, GATEWAY, 1, "drain-now"), qos=1,
                           hostname="127.0.0.1", port=rig.broker.port)  # replayed id
            publish.single(topic, sign_command(Signer(b"f" * 32), GATEWAY, 2, "ping"), qos=1,
                           hostname="127.0.0.1", port=rig.broker.port)  # forged
            assert wait_for(lambda: node.session.counters["commands_rejected"] == 2, WAIT_S), \
                _state(rig)
            assert node.gate.rejected == {"replayed": 1, "bad_signature": 1}
            assert (rig.node_dir / "last-command-id").read_text() == "1"
            rig.stop()
        finally:
            rig.close()


def test_an_oversized_downlink_message_is_refused_unread_and_the_node_goes_on(
        tmp_path: Path) -> None:
    """1 MiB on the node's command topic (the heap is about 1 MiB on a board): refused
    before umqtt allocates it, counted, the link made again; scans and a later signed
    command still work, and the link incidents reach the ledger."""
    import paho.mqtt.publish as publish

    from midshift.firmware.core.commands import sign_command
    from tests.mpy_board.rig import COMMAND_KEY
    with board_modules():
        rig = NodeRig(tmp_path, commands=True)
        try:
            node = rig.start()
            assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
            topic = f"midshift/v1/{SITE}/{GATEWAY}/cmd"
            publish.single(topic, b"[" * (1 << 20), qos=0, hostname="127.0.0.1",
                           port=rig.broker.port)
            assert wait_for(lambda: node.uplink.counters["oversized"] == 1, WAIT_S), \
                _state(rig)
            assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
            rig.scanner.burst(3)
            assert wait_for(lambda: rig.ledger_count() == 3, WAIT_S), _state(rig)
            publish.single(topic, sign_command(Signer(COMMAND_KEY), GATEWAY, 1, "ping"),
                           qos=1, hostname="127.0.0.1", port=rig.broker.port)
            assert wait_for(lambda: (node.last_command or {}).get("id") == 1, WAIT_S), \
                _state(rig)
            assert [i["state"] for i in rig.incidents()][:1] == ["online"]
            rig.stop()
        finally:
            rig.close()


def _durable_on_flash(node_dir: Path) -> int:
    """The durable seq of the node's journal, read from its files (read-only, repair off)."""
    from midshift.firmware.core.journal import Journal
    from midshift.firmware.mpy.flash_storage import FlashStorage
    try:
        storage = FlashStorage(str(node_dir / "journal"))
    except Exception:  # noqa: BLE001 - not created yet
        return -1
    try:
        return Journal.open(storage, repair=False).durable_seq
    except Exception:  # noqa: BLE001 - mid-format
        return -1
    finally:
        storage.close()


def test_power_cut_loses_nothing_that_was_journaled(rig: NodeRig) -> None:
    """The node in its own process, killed with SIGKILL: with the broker unreachable, and
    again mid-flow. Reopened from its files, the journal holds every scan; the next life
    sends them, and the ledger holds each once. (SIGKILL keeps what reached the files;
    torn writes inside a file are the journal's own crash tests, and littlefs commits a
    file atomically: see midshift/firmware/mpy/flash_storage.py.)"""
    from midshift.firmware.core.journal import Journal
    from midshift.firmware.mpy.flash_storage import FlashStorage
    rig.proxy.set_mode("refuse")
    rig.spawn()
    assert rig.scanner.wait_client(WAIT_S)
    rig.scanner.burst(12)
    assert wait_for(lambda: _durable_on_flash(rig.node_dir) == 12, WAIT_S), _state(rig)
    rig.kill()
    storage = FlashStorage(str(rig.node_dir / "journal"))
    j = Journal.open(storage)
    assert j.recovery.records == 12 and j.tail_seq == 1 and j.recovery.cut_reason is None
    assert [r.seq for r in j.records()] == list(range(1, 13))
    j.close()
    rig.proxy.set_mode("pass")
    rig.spawn()
    assert rig.scanner.wait_client(WAIT_S)
    assert wait_for(lambda: rig.ledger_count() == 12, WAIT_S), _state(rig)
    rig.scanner.burst(8)
    # All 8 read off the UART and journaled (a power cut also loses what sits unread in a
    # UART's buffer), some of them already in the ledger:
    # (21: the 20 scans and the second life's "online" incident.)
    assert wait_for(lambda: _durable_on_flash(rig.node_dir) == 21 and rig.ledger_count() >= 14,
                    WAIT_S)
    rig.kill()  # mid-flow: some of the 8 may be sent and stored but not yet acked
    rig.spawn()
    assert rig.scanner.wait_client(WAIT_S)
    assert wait_for(lambda: rig.ledger_count() == 20, WAIT_S), _state(rig)
    assert rig.ledger_values() == rig.expected_scans()
    rig.kill()


def test_weights_from_the_scale_reach_the_ledger_once(tmp_path: Path) -> None:
    with board_modules():
        rig = NodeRig(tmp_path, scanner=False, scale=True)
        try:
            node = rig.start()
            assert wait_for(lambda: node.uplink.connected, WAIT_S), _state(rig)
            rig.scale.place(250.0)
            assert wait_for(lambda: rig.ledger_count() == 1, WAIT_S), _state(rig)
            rig.scale.remove()
            scale = node.devices[0]
            assert wait_for(lambda: scale.counters.get("zero_readings", 0) >= 1, WAIT_S), _state(rig)
            rig.scale.place(120.5)
            assert wait_for(lambda: rig.ledger_count() == 2, WAIT_S), _state(rig)
            rows = rig.store.query("SELECT data FROM event_fields WHERE gateway=? AND "
                                   "source = 'scale1' ORDER BY seq", (GATEWAY,))
            got = [json.loads(r[0]) for r in rows]
            assert got == [{"weight": 250.0, "unit": "g", "stable": True},
                           {"weight": 120.5, "unit": "g", "stable": True}]
            truth = [e for e in rig.scale.truth() if e["kind"] == "weight" and e["expect"]]
            assert [e["value"] for e in truth] == [250.0, 120.5]
            # Polled again and again, emitted once:
            assert wait_for(lambda: scale.counters.get("repeated_readings", 0) >= 1, WAIT_S)
            assert rig.ledger_count() == 2
            rig.stop()
        finally:
            rig.close()
