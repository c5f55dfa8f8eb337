"""The node's uplink with umqtt.simple 1.8.0, the client ``mip install umqtt.simple``
puts on a board (vendored in tests/mpy_board/umqtt_180/), against a real mosquitto:
the keepalive and the last will the node sets reach the broker and do their job.

- a node that vanishes without DISCONNECT (its TCP connection cut, as Wi-Fi dropping
  under it) gets its retained "offline" will published by the broker;
- a node that stays connected but silent (a hung loop) is dropped by the broker after
  1.5 x the keepalive it asked for, and its will published;
- a clean close sends DISCONNECT: no will;
- batches go out at QoS 1 and a message on the ack topic comes back through ``service``.

The other node tests use umqtt.simple 1.1 from PyPI (no keepalive, no will)."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from midshift.firmware.core import session
from midshift.simulator.broker import Broker
from tests.integration.mqtt_probe import Probe
from tests.mpy_board.rig import board_modules

VENDORED = Path(__file__).resolve().parents[1] / "mpy_board" / "umqtt_180" / "simple.py"
SITE, GW = "plant-2", "door3-scale"


def umqtt_180() -> ModuleType:
    spec = importlib.util.spec_from_file_location("umqtt_180_simple", VENDORED)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with Broker(backend="mosquitto") as b:
        yield b


@pytest.fixture
def board() -> Iterator[None]:
    with board_modules():
        yield


def make_uplink(broker: Broker, keepalive_s: int, boot_id: str) -> object:
    import usocket  # the stand-in, on sys.path inside board_modules()

    from midshift.firmware.mpy.umqtt_uplink import UmqttUplink
    mqtt = umqtt_180()
    will = session.last_will(SITE, GW, "test", boot_id)
    return UmqttUplink(broker.host, broker.port, f"{GW}-wifi-{boot_id}",
                       session.subscriptions(SITE, GW, False), timeout_s=1.0,
                       keepalive_s=keepalive_s, will=will, mqtt_module=mqtt,
                       socket_module=usocket)


def watch_status(broker: Broker, name: str) -> Probe:
    probe = Probe(broker.host, broker.port, name)
    assert probe.connect()
    probe.client.subscribe(session.last_will(SITE, GW)[0], qos=1)
    return probe


def wills(probe: Probe, boot_id: str) -> list[dict]:
    """The status documents of this boot (retained ones of earlier tests are skipped)."""
    out = []
    for _topic, payload in list(probe.messages):
        doc = json.loads(payload)
        if doc.get("boot_id") == boot_id:
            out.append(doc)
    return out


def wait_will(probe: Probe, boot_id: str, timeout_s: float) -> list[dict]:
    with probe._cv:
        probe._cv.wait_for(lambda: wills(probe, boot_id), timeout_s)
    return wills(probe, boot_id)


def test_connection_cut_without_disconnect_publishes_the_will(broker: Broker, board: None) -> None:
    probe = watch_status(broker, "watch-cut")
    up = make_uplink(broker, keepalive_s=30, boot_id="cut00001")
    assert up.connect(0), up.last_error  # type: ignore[attr-defined]
    up.sockets.last._s.sever()  # type: ignore[attr-defined]  # Wi-Fi gone: no DISCONNECT
    got = wait_will(probe, "cut00001", 5.0)
    assert got and got[0]["state"] == "offline", probe.messages
    probe.close()


def test_a_silent_node_is_dropped_after_its_keepalive(broker: Broker, board: None) -> None:
    probe = watch_status(broker, "watch-silent")
    up = make_uplink(broker, keepalive_s=1, boot_id="sil00001")
    assert up.connect(0), up.last_error  # type: ignore[attr-defined]
    t0 = time.monotonic()
    # no ping, no traffic: the broker gives up after 1.5 x 1 s (mosquitto looks at its
    # clients' keepalives every few seconds: seen 2 to 5 s) and publishes the will
    got = wait_will(probe, "sil00001", 10.0)
    assert got and got[0]["state"] == "offline"
    assert 1.5 <= time.monotonic() - t0 < 10.0
    probe.close()


def test_clean_close_sends_no_will_and_traffic_flows(broker: Broker, board: None) -> None:
    probe = watch_status(broker, "watch-clean")
    up = make_uplink(broker, keepalive_s=30, boot_id="cln00001")
    assert up.connect(0), up.last_error  # type: ignore[attr-defined]
    topic = f"midshift/v1/{SITE}/{GW}/events"
    assert up.publish(topic, b"MSB1-batch", 0, qos=1)  # returns after the PUBACK  # type: ignore[attr-defined]
    ack_topic = f"midshift/v1/{SITE}/{GW}/ack"
    mid = probe.publish(ack_topic, b'{"v":2}', qos=1)
    assert probe.wait_acked(mid, 5.0)
    deadline = time.monotonic() + 5.0
    while not up.inbox and time.monotonic() < deadline:  # type: ignore[attr-defined]
        assert up.service(int(time.monotonic() * 1000))  # type: ignore[attr-defined]
    assert up.take_messages() == [(ack_topic, b'{"v":2}')]  # type: ignore[attr-defined]
    up.close()  # type: ignore[attr-defined]
    time.sleep(0.5)  # nothing should arrive: a short bounded look, not a synchronisation
    assert wills(probe, "cln00001") == []
    probe.close()
