"""The ledger's MQTT session outlives its connection: batches published while the ledger
is away wait at the broker and reach it at the reconnect, not at a gateway's resend.

A real mosquitto with persistence (``midshift/simulator/broker.py``), the real ledger (in this
process, or ``ledger serve`` as a process with its default client id), and a publisher
that sends each batch exactly once and never resends: whatever the ledger stores came
from the broker's queue. The publisher also listens on its ``ack`` topic, so the ack the
ledger sends for a queued batch is checked too.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from midshift.firmware.core import topics
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, decode_ack, encode_batch
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.simulator.broker import Broker
from midshift.simulator.lab import wait_for

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-s"
KEY = bytes(range(32))
SITE = "sess"


class OneShotGateway:
    """Publishes signed batches at QoS 1 once each (no resend, ever) and collects acks."""

    def __init__(self, broker: Broker) -> None:
        self.acks: queue.Queue[bytes] = queue.Queue()
        self.subscribed = queue.Queue[int]()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="one-shot-gw",
                                  clean_session=True)
        self.client.on_message = lambda c, u, m: self.acks.put(m.payload)
        self.client.on_connect = lambda c, u, f, r, p=None: c.subscribe(
            topics.topic(SITE, GW, topics.ACK), qos=1)
        self.client.on_subscribe = lambda c, u, mid, *a: self.subscribed.put(mid)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        self.subscribed.get(timeout=5)

    def publish(self, first_seq: int, n: int = 3) -> None:
        recs = [(first_seq + i, 0, first_seq + i, b'{"scan":"%d"}' % (first_seq + i))
                for i in range(n)]
        info = self.client.publish(topics.topic(SITE, GW, topics.EVENTS),
                                   encode_batch(Signer(KEY), Batch(GW, 1, recs, 0)), qos=1)
        info.wait_for_publish(5)  # the broker has it (PUBACK)
        assert info.is_published()

    def ack_for(self, first_seq: int, timeout_s: float = 5.0, status: str = "ok") -> bool:
        try:
            while True:  # bounded: each get waits timeout_s at most, then raises
                _epoch, first, _last, _ms, got = decode_ack(
                    self.acks.get(timeout=timeout_s), Signer(KEY))
                if first == first_seq and got == status:
                    return True
        except queue.Empty:
            return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", persistence=True) as b:
        yield b


def _events(ledger: LedgerService) -> int:
    return int(ledger.snapshot()["counters"]["events"])


def _serve(broker: Broker, db: str, keys: Path) -> subprocess.Popen[str]:
    """``ledger serve`` with no session flags (its default client id), once serving."""
    proc = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", db,
                             "--broker", broker.url, "--keys", str(keys), "--log-level",
                             "WARNING"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # '' if it exits first; it gives up after 10 s
    assert line.startswith("ledger: serving"), line
    return proc


@pytest.mark.parametrize("broker_restart", ["crash", "stop"])
def test_a_batch_sent_while_ledger_and_broker_were_down_waits_at_the_broker(
        broker: Broker, tmp_path: Path, broker_restart: str) -> None:
    """The ledger process is SIGKILLed, the broker crashes (or stops) and comes back from
    its persisted state, a batch is published once while no ledger runs; the next
    ``ledger serve`` (same default client id) gets it from its session and acks it.
    About 4 s (two ledger processes)."""
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[gateways]\n"{GW}" = "{KEY.hex()}"\n')
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = _serve(broker, db, keys)
    try:
        ledger.send_signal(signal.SIGKILL)
        ledger.wait(10)
        # the case here is a broker back *from its saved state*: the session must be in
        # it first (a crash before mosquitto saves it is the next test's case)
        assert broker.wait_saved(b"midshift-ledger", topics.every(topics.EVENTS).encode())
        broker.restart(crash=broker_restart == "crash")
        gw = OneShotGateway(broker)
        try:
            gw.publish(1)
            ledger = _serve(broker, db, keys)
            assert gw.ack_for(1), "no ack for the batch queued while the ledger was away"
        finally:
            gw.close()
    finally:
        ledger.terminate()
        ledger.wait(15)
    with open_store(db) as store:
        assert [(gw, seq) for gw, _epoch, seq in store.keys()] == [(GW, 1), (GW, 2), (GW, 3)]


def test_a_broker_back_without_its_state_is_subscribed_again(broker: Broker,
                                                             tmp_path: Path) -> None:
    """The broker crashes and its database is gone; a batch sent before the ledger is back
    reaches no one. The ledger's CONNACK says no session: it subscribes again, then asks
    the gateway it has heard from to resend (a signed ``resend`` nudge on its ack topic),
    and a batch published afterwards is stored. About 1 s."""
    with open_store(f"sqlite:///{tmp_path / 'l.db'}") as store:
        ledger = LedgerService(store, {GW: KEY}, broker.url, client_id="ledger-t").start()
        try:
            assert ledger.session_present is False  # a first connect: nothing to resume
            # its acks and PUBACKs leave at once (edges/paho_client.py: Nagle held them)
            assert ledger.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            gw = OneShotGateway(broker)
            gw.publish(1)
            assert gw.ack_for(1)
            gw.close()
            ledger.client.loop_stop()  # held off the broker until the gateway is back
            broker.crash()
            broker.db_path.unlink()
            ledger._subscribed.clear()
            broker.start()
            gw = OneShotGateway(broker)
            try:
                gw.publish(4)  # no subscriber yet: gone
                ledger.client.loop_start()
                assert ledger._subscribed.wait(10), "the ledger did not subscribe again"
                assert ledger.session_present is False
                assert gw.ack_for(0, status="resend"), "no resend nudge"
                assert ledger.snapshot()["counters"]["nudges"] == 1
                gw.publish(7)
                assert gw.ack_for(7)
            finally:
                gw.close()
            assert _events(ledger) == 6  # 1..3 and 7..9; 4..6 await the gateway's resend
        finally:
            ledger.stop()


def test_a_ledger_back_on_a_kept_session_resumes_it(broker: Broker, tmp_path: Path) -> None:
    """The broker crashes and comes back from its database while the ledger retries: the
    ledger's CONNACK says its session is there; batches flow on. About 1 s."""
    with open_store(f"sqlite:///{tmp_path / 'l.db'}") as store:
        ledger = LedgerService(store, {GW: KEY}, broker.url, client_id="ledger-t").start()
        try:
            gw = OneShotGateway(broker)
            gw.publish(1)
            assert gw.ack_for(1)
            gw.close()
            ledger._subscribed.clear()
            broker.restart(crash=True)
            assert ledger._subscribed.wait(10)
            assert ledger.session_present is True
            assert ledger.snapshot()["counters"]["nudges"] == 0  # nothing was lost
            gw = OneShotGateway(broker)
            try:
                gw.publish(4)
                assert gw.ack_for(4)
            finally:
                gw.close()
        finally:
            ledger.stop()


def test_a_shared_worker_gets_what_was_queued_for_it_while_away(broker: Broker,
                                                                tmp_path: Path) -> None:
    """A worker of ``$share/g/...`` with a session expiry leaves (its process ends); a
    batch published meanwhile is queued in its session, and the worker that comes back
    with the same client id stores and acks it. About 1 s."""
    with open_store(f"sqlite:///{tmp_path / 'l.db'}") as store:
        first = LedgerService(store, {GW: KEY}, broker.url, shared_group="g",
                              client_id="worker-0", session_expiry_s=60).start()
        first.stop()
        gw = OneShotGateway(broker)
        try:
            gw.publish(1)
            again = LedgerService(store, {GW: KEY}, broker.url, shared_group="g",
                                  client_id="worker-0", session_expiry_s=60).start()
            try:
                assert gw.ack_for(1), "the batch queued for the worker did not reach it"
                assert again.session_present is True
                assert wait_for(lambda: _events(again) == 3, 5)
            finally:
                again.stop()
        finally:
            gw.close()


def test_without_a_session_expiry_a_shared_worker_starts_afresh(broker: Broker,
                                                                tmp_path: Path) -> None:
    """The control for the test above: a worker with a clean session gets nothing that
    was published while it was away (what the gateways' resends were there for)."""
    with open_store(f"sqlite:///{tmp_path / 'l.db'}") as store:
        first = LedgerService(store, {GW: KEY}, broker.url, shared_group="g",
                              client_id="").start()
        first.stop()
        gw = OneShotGateway(broker)
        try:
            gw.publish(1)
            again = LedgerService(store, {GW: KEY}, broker.url, shared_group="g",
                                  client_id="").start()
            try:
                assert not gw.ack_for(1, timeout_s=1.0)
                assert _events(again) == 0
            finally:
                again.stop()
        finally:
            gw.close()
