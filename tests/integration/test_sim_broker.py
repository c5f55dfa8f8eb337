"""The simulator's broker (real mosquitto) and power faults, against real paho-mqtt clients:
MQTT 5 and 3.1.1, crash and restart with and without persistence, a TLS listener that
identifies gateways by certificate, the amqtt fallback, the CLI, and clean shutdown."""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from midshift.simulator.broker import Broker, BrokerUnavailable, TlsListener
from midshift.simulator.power import kill_at, kill_randomly
from tests.integration.pki import make_pki

ROOT = Path(__file__).resolve().parents[2]
V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311
ACCEPTED = (0, 16)  # PUBACK: success, or (MQTT 5) success with no matching subscribers


class Client:
    """A paho client that records CONNACK, SUBACK, PUBACK reason codes and messages."""

    def __init__(self, port: int, client_id: str, protocol: int = V5, clean: bool = True,
                 tls: dict[str, Any] | None = None) -> None:
        kw: dict[str, Any] = {} if protocol == V5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol, **kw)
        if tls is not None:
            self.c.tls_set(**tls)
        self.port, self.protocol, self.clean = port, protocol, clean
        self.cv = threading.Condition()
        self.connack: Any = None
        self.disconnected = False
        self.subacks = 0
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self._note(disconnected=True)
        self.c.on_subscribe = lambda *a: self._note(subacks=self.subacks + 1)
        self.c.on_publish = lambda c, u, mid, rc, p: self._note(pubacks={**self.pubacks,
                                                                         mid: rc.value})
        self.c.on_message = lambda c, u, m: self._note(
            messages=[*self.messages, (m.topic, m.payload, bool(m.retain))])

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self._note(connack=rc.value)

    def _note(self, **changes: Any) -> None:
        with self.cv:
            for k, v in changes.items():
                setattr(self, k, v)
            self.cv.notify_all()

    def wait(self, pred: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        with self.cv:
            return self.cv.wait_for(pred, timeout_s)

    def connect(self) -> Client:
        kw: dict[str, Any] = {}
        if self.protocol == V5 and not self.clean:
            props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kw = {"clean_start": False, "properties": props}
        self.c.connect("127.0.0.1", self.port, keepalive=30, **kw)
        self.c.loop_start()
        assert self.wait(lambda: self.connack is not None or self.disconnected)
        return self

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        """PUBACK reason code (0: success), None if no PUBACK came."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        return self.pubacks[mid] if self.wait(lambda: mid in self.pubacks) else None

    def subscribe(self, topic: str) -> None:
        n = self.subacks
        self.c.subscribe(topic, qos=1)
        assert self.wait(lambda: self.subacks > n)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


# ---- protocols -------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
def test_round_trip_in_both_protocol_versions(tmp_path: Path, protocol: int) -> None:
    with Broker(tmp_path) as broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        c = Client(broker.port, "both", protocol).connect()
        assert c.connack == 0
        c.subscribe("t/rt")
        assert c.publish("t/rt", b"ping") == 0
        assert c.wait(lambda: c.messages == [("t/rt", b"ping", False)])
        c.close()


# ---- crash, restart, persistence ---------------------------------------------------------------

def _leave_queued_and_retained(port: int) -> None:
    """A durable subscriber leaves; a QoS 1 message is queued for it and one retained."""
    sub = Client(port, "ledger", V311, clean=False).connect()
    sub.subscribe("t/queued")
    sub.close()
    pub = Client(port, "gateway").connect()
    assert pub.publish("t/queued", b"queued-for-ledger") in ACCEPTED
    assert pub.publish("t/retained", b"retained-status", retain=True) in ACCEPTED
    pub.close()


@pytest.mark.parametrize("persistence", [True, False], ids=["persistence", "no-persistence"])
def test_sigkill_and_restart_keeps_messages_only_with_persistence(tmp_path: Path,
                                                                  persistence: bool) -> None:
    with Broker(tmp_path, persistence=persistence) as broker:
        port = broker.port
        _leave_queued_and_retained(port)
        if persistence:  # mosquitto saves just after it acks: wait for the bytes on disk
            assert broker.wait_saved(b"queued-for-ledger", b"retained-status")
        pid = broker.pid
        assert pid is not None
        broker.crash()
        assert _gone(pid)
        broker.start()
        assert broker.port == port and broker.pid != pid

        ledger = Client(port, "ledger", V311, clean=False).connect()
        fresh = Client(port, "fresh").connect()
        fresh.subscribe("t/retained")
        if persistence:
            assert ledger.wait(lambda: [m[1] for m in ledger.messages] == [b"queued-for-ledger"])
            assert fresh.wait(lambda: fresh.messages == [
                ("t/retained", b"retained-status", True)])
        else:
            assert not ledger.wait(lambda: bool(ledger.messages), 1.0)
            assert not fresh.messages
            assert not broker.db_path.exists()
        ledger.close()
        fresh.close()


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_without_autosave_only_a_clean_stop_saves(tmp_path: Path, how: str) -> None:
    with Broker(tmp_path, persistence=True, autosave_changes=0) as broker:
        _leave_queued_and_retained(broker.port)
        process = broker.process
        assert process is not None
        broker.restart(crash=how == "crash")
        assert process.returncode == (0 if how == "stop" else -signal.SIGKILL)
        ledger = Client(broker.port, "ledger", V311, clean=False).connect()
        got = ledger.wait(lambda: bool(ledger.messages), 2.0 if how == "stop" else 1.0)
        assert got == (how == "stop")
        ledger.close()


# ---- TLS and identity --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    acl = pki / "acl"
    acl.write_text("# a gateway may use only its own prefix\n"
                   "pattern readwrite midshift/v1/+/%u/#\n")
    tls = TlsListener(pki / "ca.crt", pki / "server.crt", pki / "server.key",
                      require_certificate=True, use_identity_as_username=True)
    with Broker(tmp_path_factory.mktemp("tls-broker"), tls=tls, acl_file=acl,
                allow_anonymous=False) as broker:
        yield broker, pki


def test_tls_client_certificate_is_the_identity_and_the_acl_confines_it(tls_broker: Any) -> None:
    broker, pki = tls_broker
    assert broker.tls_url == f"mqtts://127.0.0.1:{broker.tls_port}"
    gw = Client(broker.tls_port, "gw1-uplink", tls={
        "ca_certs": str(pki / "ca.crt"), "certfile": str(pki / "gw1.crt"),
        "keyfile": str(pki / "gw1.key")}).connect()
    assert gw.connack == 0
    assert gw.publish("midshift/v1/site1/gw1/events", b"batch") in ACCEPTED
    assert gw.publish("midshift/v1/site1/gw2/events", b"forged") == 135  # not authorized
    gw.close()


@pytest.mark.parametrize("cert", [None, "rogue"], ids=["no-cert", "untrusted-ca"])
def test_tls_listener_refuses_a_client_without_a_trusted_certificate(
        tls_broker: Any, cert: str | None) -> None:
    broker, pki = tls_broker
    tls: dict[str, Any] = {"ca_certs": str(pki / "ca.crt")}
    if cert:
        tls |= {"certfile": str(pki / f"{cert}.crt"), "keyfile": str(pki / f"{cert}.key")}
    c = Client(broker.tls_port, "intruder", tls=tls)
    try:
        c.connect()  # TLS 1.3 finishes the client's side first; the alert comes on read
    except (ssl.SSLError, OSError):
        pass
    assert c.connack != 0, "a client without a trusted certificate got in"
    c.c.loop_stop()


def test_anonymous_plain_clients_are_refused_when_not_allowed(tls_broker: Any) -> None:
    broker, _ = tls_broker
    c = Client(broker.port, "anon").connect()
    assert c.connack == 135  # not authorized
    c.c.loop_stop()


def test_a_config_mosquitto_rejects_is_reported_with_its_log(tmp_path: Path) -> None:
    tls = TlsListener(tmp_path / "missing-ca.crt", tmp_path / "s.crt", tmp_path / "s.key")
    broker = Broker(tmp_path, tls=tls)
    with pytest.raises(BrokerUnavailable, match=r"(?s)did not listen.*missing-ca\.crt"):
        broker.start(timeout_s=5)
    assert broker.process is None


# ---- the amqtt fallback ------------------------------------------------------------------------

def test_amqtt_fallback_serves_mqtt311_and_says_what_it_lacks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="midshift.simulator.broker"):
        broker = Broker(tmp_path, backend="amqtt")
    assert "in-process amqtt broker" in caplog.text
    with broker:
        c = Client(broker.port, "old", V311).connect()
        c.subscribe("t/a")
        assert c.publish("t/a", b"hi") == 0
        assert c.wait(lambda: len(c.messages) == 1)
        c.close()
        v5 = Client(broker.port, "new", V5).connect()
        assert v5.connack != 0, "amqtt 0.12 speaks MQTT 3.1.1 only"
        v5.c.loop_stop()
        broker.restart()
        assert Client(broker.port, "again", V311).connect().connack == 0
    with socket.socket() as s:  # stopped: the port is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", broker.port))
    with pytest.raises(BrokerUnavailable, match="need mosquitto"):
        Broker(tmp_path, backend="amqtt", acl_file=tmp_path / "acl")


# ---- the command line and shutdown -------------------------------------------------------------

def test_cli_broker_runs_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "midshift.simulator", "broker", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["backend"] == "mosquitto"
        port = int(info["url"].rsplit(":", 1)[1])
        c = Client(port, "cli").connect()
        assert c.connack == 0
        c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    assert _gone(info["pid"]) and not Path(info["directory"]).exists()


def test_close_leaves_no_process_no_port_and_no_directory() -> None:
    broker = Broker(persistence=True).start()
    pid, port, directory = broker.pid, broker.port, broker.directory
    assert pid is not None
    broker.close()
    assert _gone(pid)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert not directory.exists()


# ---- power faults ------------------------------------------------------------------------------

def _child() -> subprocess.Popen:
    """A process that lives until its stdin closes."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)


def test_kill_at_sigkills_and_a_cancelled_cut_does_not() -> None:
    victim, spared = _child(), _child()
    cut = kill_at(victim, 0.05)
    reprieve = kill_at(spared, 30)
    assert cut.wait(5) and cut.outcome == "killed" and cut.fired
    assert victim.wait(5) == -signal.SIGKILL
    assert reprieve.cancel() and reprieve.outcome == "cancelled"
    assert spared.poll() is None
    assert spared.stdin is not None and victim.stdin is not None
    spared.stdin.close()
    victim.stdin.close()
    assert spared.wait(5) == 0


def test_kill_randomly_is_reproducible_and_a_dead_process_is_left_alone(tmp_path: Path) -> None:
    victim = _child()
    cut = kill_randomly(victim, random.Random(42), 0.01, 0.2)
    assert cut.delay_s == random.Random(42).uniform(0.01, 0.2)
    assert cut.wait(5) and victim.wait(5) == -signal.SIGKILL
    again = kill_at(victim, 0)
    assert again.wait(5) and again.outcome == "already exited" and not again.fired
    assert victim.stdin is not None
    victim.stdin.close()
    with Broker(tmp_path) as broker:  # a power cut under the broker is a crash
        assert broker.process is not None
        assert kill_at(broker.process, 0).wait(5)
        assert broker.process.wait(5) == -signal.SIGKILL and not broker.running
        broker.start()
        assert Client(broker.port, "after-cut").connect().connack == 0
