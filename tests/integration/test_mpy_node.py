"""The MicroPython node (firmware/mpy/, unchanged) on CPython with the board stand-ins of
tests/mpy_board/: umqtt.simple from PyPI to a real mosquitto, the reference ledger, the
scanner and scale emulators on ptys. What the node promises, each against real peers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from firmware.core.signing import Signer
from firmware.core.wire import FLAG_ZLIB, decode_batch
from tests.mpy_board.rig import GATEWAY, KEY, SITE, NodeRig, board_modules, wait_for

WAIT_S = 15


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[NodeRig]:
    with board_modules():
        r = NodeRig(tmp_path)
        try:
            yield r
        finally:
            r.close()


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
    assert wait_for(lambda: node.uplink.connected, WAIT_S)
    for _ in range(5):
        rig.scanner.burst(6)
    want = rig.expected_scans()
    assert len(want) == 30
    assert wait_for(lambda: rig.ledger_count() == 30, WAIT_S), rig.ledger_count()
    assert rig.ledger_values() == want  # once each, in scan order
    rows = rig.store.query("SELECT DISTINCT source, kind FROM event_fields WHERE gateway=?",
                           (GATEWAY,))
    assert rows == [("scanner1", "scan")]
    # The bytes on the wire: the versioned batch format, uncompressed, signed with the key.
    assert wait_for(lambda: batches, 5)
    signer = Signer(KEY)
    decoded = [decode_batch(b, signer) for b in batches]
    assert all(b[5] & FLAG_ZLIB == 0 for b in batches)
    assert {d.gateway for d in decoded} == {GATEWAY}
    assert {d.epoch for d in decoded} == {node.journal.epoch}
    # Acked, so the ring space is reclaimed, and nothing was counted twice.
    assert wait_for(lambda: node.journal.tail_seq == 31, 5), node.journal.stats()
    assert rig.ledger.counters["duplicates"] == 0
    spy.loop_stop()
    rig.stop()


def test_wifi_drop_mid_flow_loses_nothing_and_holds_the_journal(rig: NodeRig) -> None:
    import network
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S)
    rig.scanner.burst(10)
    assert wait_for(lambda: rig.ledger_count() == 10, WAIT_S)
    assert wait_for(lambda: node.journal.tail_seq == 11, WAIT_S)  # acked and reclaimed
    network.drop()
    assert wait_for(lambda: not node.uplink.connected, WAIT_S)
    rig.scanner.burst(10)
    rig.scanner.burst(10)
    # Journaled (durable) while the link is down; not acknowledged, so not reclaimed.
    assert wait_for(lambda: node.journal.durable_seq == 30, WAIT_S), node.journal.stats()
    assert rig.ledger_count() == 10
    assert node.journal.tail_seq == 11 and node.journal.backlog()[0] == 20
    network.restore()
    assert wait_for(lambda: rig.ledger_count() == 30, WAIT_S), rig.ledger_count()
    assert rig.ledger_values() == rig.expected_scans()
    assert wait_for(lambda: node.journal.tail_seq == 31, 5)
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
    assert wait_for(lambda: node.uplink.connected, WAIT_S)
    rig.scanner.burst(5)
    assert wait_for(lambda: rig.ledger_count() == 5 and lost, WAIT_S)
    # Stored in the ledger, not acknowledged to the node: nothing is reclaimed.
    assert node.journal.tail_seq == 1 and node.journal.backlog() == (5, node.journal.durable_pos)
    assert wait_for(lambda: node.forwarder.counters["resent"] >= 1, WAIT_S)
    assert wait_for(lambda: node.journal.tail_seq == 6, WAIT_S), node.journal.stats()
    assert rig.ledger_count() == 5  # the resend was a duplicate, stored once
    assert rig.ledger.counters["duplicates"] >= 5
    assert rig.ledger_values() == rig.expected_scans()
    rig.stop()


def test_broker_killed_and_restarted_loses_nothing(rig: NodeRig) -> None:
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S)
    rig.scanner.burst(10)
    assert wait_for(lambda: rig.ledger_count() == 10, WAIT_S)
    rig.broker.crash()  # SIGKILL, no persistence: sessions and queued messages are gone
    rig.scanner.burst(10)
    assert wait_for(lambda: node.journal.durable_seq == 20, WAIT_S)
    assert wait_for(lambda: not node.uplink.connected, WAIT_S)
    rig.broker.restart()
    rig.scanner.burst(10)
    assert wait_for(lambda: rig.ledger_count() == 30, WAIT_S), rig.ledger_count()
    assert rig.ledger_values() == rig.expected_scans()
    assert wait_for(lambda: node.journal.tail_seq == 31, 5)
    assert node.uplink.counters["connects"] >= 2
    rig.stop()


def test_a_silent_broker_does_not_stall_the_scanner(rig: NodeRig) -> None:
    """The path to the broker is blackholed (connections accepted, nothing answered):
    each network call gives up after the 0.5 s timeout and the UART keeps being read,
    every scan is journaled meanwhile, and all reach the ledger once the path is back."""
    node = rig.start(timeout_s=0.5)
    assert wait_for(lambda: node.uplink.connected, WAIT_S)
    rig.scanner.burst(3)
    assert wait_for(lambda: rig.ledger_count() == 3, WAIT_S)
    node.counters["max_device_gap_ms"] = 0
    rig.proxy.set_mode("blackhole")
    t_end = time.monotonic() + 3.0
    sent = 3
    while time.monotonic() < t_end:  # scans keep coming while the uplink hangs
        rig.scanner.burst(2)
        sent += 2
        time.sleep(0.1)  # the scanner's pace, not a synchronisation
    assert wait_for(lambda: node.journal.durable_seq == sent, 5), (node.journal.stats(), sent)
    assert node.uplink.counters["ping_timeouts"] + node.uplink.counters["publish_errors"] \
        + node.uplink.counters["connect_failures"] >= 1
    assert rig.ledger_count() < sent
    # Never more than about one timeout between two reads of the UART.
    assert node.counters["max_device_gap_ms"] < 1000, node.counters
    rig.proxy.set_mode("pass")
    assert wait_for(lambda: rig.ledger_count() == sent, WAIT_S), (rig.ledger_count(), sent)
    assert rig.ledger_values() == rig.expected_scans()
    rig.stop()


def test_garbage_from_the_scanner_is_rejected_and_counted(rig: NodeRig) -> None:
    node = rig.start()
    assert wait_for(lambda: node.uplink.connected, WAIT_S)
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
    assert wait_for(lambda: rig.ledger_count() == 3, WAIT_S), rig.ledger_values()
    assert rig.ledger_values() == [first, second, "411111******1111"]
    c = scanner.counters
    assert c["rejected_noise"] >= 1 and c["rejected_overlong"] == 1 and c["rejected_short"] == 1
    assert c["scans"] == 3 and node.pipeline.masked == 1
    status = node.status()  # what the status topic carries
    assert status["devices"][0]["counters"]["rejected"] == c["rejected"] >= 4
    assert status["devices"][0]["last_error"] is None  # good scans since
    rig.stop()
