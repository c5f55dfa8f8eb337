"""mosquitto configured only from what ``provision broker`` generated (``midshift.conf``,
the ACL, the CA, the CRL, the server certificate), with the ledger on its own certificate.

What each test proves is in its name. Started as root, mosquitto would drop to user
``mosquitto``, which cannot read our 0600 server key nor enter the test's temporary
directory: then a one-line wrapper config says ``user root`` and includes the generated
file unchanged (``include_dir``), as ``midshift/simulator/broker.py`` does for its own configs.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from midshift.firmware.core.commands import CommandGate, CommandRejected
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, decode_ack, encode_batch
from midshift.host_tools.__main__ import main as host_tools
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService, load_keys
from midshift.simulator.broker import find_mosquitto, free_port
from midshift.simulator.lab import wait_for
from tests.integration.provisioned import provisioned_site
from tests.integration.test_provision_broker import Peer

SITE = "plant1"
pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")


def _accepts(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("generated-broker")
    tls_port, ledger_port = free_port(), free_port()
    site = provisioned_site(tmp / "site", ["init-site", SITE],
                            ["gateway", "gw-01", "--board", "sim"],
                            ["gateway", "gw-02", "--board", "sim"],
                            ["broker", "--host", "127.0.0.1", "--tls-port", str(tls_port),
                             "--ledger-port", str(ledger_port), "--bind-client-ids"])
    conf = site / "broker/midshift.conf"
    if os.geteuid() == 0:
        wrapper = tmp / "wrapper"
        wrapper.mkdir()
        (wrapper / "midshift.conf").symlink_to(conf)
        (tmp / "root.conf").write_text(f"user root\ninclude_dir {wrapper}\n")
        conf = tmp / "root.conf"
    err = open(tmp / "mosquitto.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(find_mosquitto()), "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=err, stderr=err, start_new_session=True)
    try:
        assert wait_for(lambda: _accepts(tls_port) and _accepts(ledger_port), 10), \
            (tmp / "mosquitto.log").read_text()
        store = open_store(f"sqlite:///{tmp / 'ledger.db'}")
        ledger = LedgerService(store, load_keys(site / "ledger/keys.toml"),
                               f"mqtts://127.0.0.1:{ledger_port}",
                               tls_files=(site / "ca/ca.crt", site / "ledger/ledger.crt",
                                          site / "ledger/ledger.key")).start()
        try:
            yield {"tmp": tmp, "site": site, "store": store, "tls_port": tls_port,
                   "ledger_port": ledger_port, "log": tmp / "mosquitto.log"}
        finally:
            ledger.stop()
            store.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        err.close()


def _anonymous_connects(port: int, ca: Path | None) -> bool:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon")
    if ca is not None:
        c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    # Answered: a CONNACK either way, or the connection closed (a TLS port that a plain
    # client or one without a certificate reaches). Only a CONNACK that accepts is True;
    # no answer within 3 s is False, as before.
    answered, accepted = threading.Event(), threading.Event()

    def on_connect(cl: mqtt.Client, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        if not rc.is_failure:
            accepted.set()
        answered.set()
    c.on_connect = on_connect
    c.on_disconnect = lambda *a: answered.set()
    try:
        c.connect("127.0.0.1", port, keepalive=2)
    except (OSError, ssl.SSLError):
        return False
    c.loop_start()
    try:
        answered.wait(3)
        return accepted.is_set()
    finally:
        c.disconnect()
        c.loop_stop()


def _gateway(lab: dict[str, Any], gw: str, client_id: str, port: int | None = None) -> Peer:
    g = lab["site"] / "gateways" / gw
    return Peer(port or lab["tls_port"], lab["site"] / "ca/ca.crt", g / "gateway.crt",
                g / "gateway.key", client_id).start()


def _ledger_identity(lab: dict[str, Any], client_id: str) -> Peer:
    s = lab["site"]
    return Peer(lab["ledger_port"], s / "ca/ca.crt", s / "ledger/ledger.crt",
                s / "ledger/ledger.key", client_id).start()


def _batch(gw: str, seq: int, code: str, lab: dict[str, Any]) -> bytes:
    key = bytes.fromhex((lab["site"] / "gateways" / gw / "batch.key").read_text().strip())
    body = json.dumps({"src": "dev1", "k": "scan", "t": 1, "d": {"code": code}}).encode()
    return encode_batch(Signer(key), Batch(gw, 77, [(seq, 0, seq, body)], 1))


def test_the_generated_config_has_no_anonymous_listener(lab: dict[str, Any]) -> None:
    text = (lab["site"] / "broker/midshift.conf").read_text()
    assert "allow_anonymous false" in text
    assert all(line.split()[1] in (str(lab["tls_port"]), str(lab["ledger_port"]))
               for line in text.splitlines() if line.startswith("listener "))
    ca = lab["site"] / "ca/ca.crt"
    for port in (lab["tls_port"], lab["ledger_port"]):
        assert not _anonymous_connects(port, None)  # plain MQTT
        assert not _anonymous_connects(port, ca)    # TLS, but no client certificate


def test_the_ledger_stores_and_acks_over_tls_with_its_own_certificate(
        lab: dict[str, Any]) -> None:
    gw = _gateway(lab, "gw-01", "gw-01-tls")
    acks: list[bytes] = []
    gw.client.on_message = lambda c, u, m: acks.append(m.payload)
    try:
        assert gw.outcome() == "connected", lab["log"].read_text()
        gw.client.subscribe(f"midshift/v1/{SITE}/gw-01/ack", qos=1)
        assert wait_for(lambda: len(gw.subacks) == 1, 10)
        gw.client.publish(f"midshift/v1/{SITE}/gw-01/events", _batch("gw-01", 1, "A1", lab),
                          qos=1)
        assert wait_for(lambda: lab["store"].count("gw-01") == 1, 10), lab["log"].read_text()
        assert wait_for(lambda: acks, 10)
    finally:
        gw.close()
    key = bytes.fromhex((lab["site"] / "gateways/gw-01/batch.key").read_text().strip())
    assert decode_ack(acks[0], Signer(key))[1:3] == (1, 1)  # signed by the ledger


def test_the_ledgers_identity_reads_batches_and_statuses_and_writes_acks_and_commands_only(
        lab: dict[str, Any]) -> None:
    """With the ledger's certificate: a batch published on gw-02's events topic never
    reaches the (real) ledger, while its ack and command reach gw-02 and gw-02's status
    reaches it (``host_tools command`` waits there for answers). Each probe is followed,
    on the same connection, by one that must arrive, so 'not delivered' is not a race."""
    gw = _gateway(lab, "gw-02", "gw-02-tls")
    led = _ledger_identity(lab, "ledger-probe")
    got_gw: list[str] = []
    got_led: list[str] = []
    gw.client.on_message = lambda c, u, m: got_gw.append(m.topic)
    led.client.on_message = lambda c, u, m: got_led.append(m.topic)
    base = f"midshift/v1/{SITE}/gw-02"
    try:
        assert gw.outcome() == "connected" and led.outcome() == "connected"
        gw.client.subscribe([(f"{base}/ack", 1), (f"{base}/cmd", 1)])
        led.client.subscribe([(f"{base}/status", 1), (f"{base}/events", 1)])
        assert wait_for(lambda: len(gw.subacks) == 1 and len(led.subacks) == 1, 10)
        led.client.publish(f"{base}/events", _batch("gw-02", 500, "FORGED", lab), qos=1)
        led.client.publish(f"{base}/ack", b"ack probe", qos=1)
        led.client.publish(f"{base}/cmd", b"cmd probe", qos=1)
        assert wait_for(lambda: got_gw == [f"{base}/ack", f"{base}/cmd"], 10), got_gw
        gw.client.publish(f"{base}/status", b"{}", qos=1)
        gw.client.publish(f"{base}/events", _batch("gw-02", 1, "OWN", lab), qos=1)
        assert wait_for(lambda: f"{base}/events" in got_led, 10)
        assert wait_for(lambda: lab["store"].count("gw-02") == 1, 10)
    finally:
        gw.close()
        led.close()
    assert f"{base}/status" in got_led
    assert lab["store"].query("SELECT COUNT(*) FROM events WHERE body LIKE '%FORGED%'")[0][0] == 0


def test_a_gateway_cannot_take_another_gateways_client_id(lab: dict[str, Any]) -> None:
    """gw-02, with its own valid certificate, connects again and again as gw-01's client
    ids; gw-01 stays connected throughout and still gets what is published to it."""
    victim = _gateway(lab, "gw-01", "gw-01-eth")
    got: list[bytes] = []
    victim.client.on_message = lambda c, u, m: got.append(m.payload)
    try:
        assert victim.outcome() == "connected"
        victim.client.subscribe(f"midshift/v1/{SITE}/gw-01/cmd", qos=1)
        assert wait_for(lambda: len(victim.subacks) == 1, 10)
        for cid in ("gw-01-eth", "gw-01", "gw-01-eth", "gw-01-cell"):
            attacker = _gateway(lab, "gw-02", cid)
            try:
                assert attacker.outcome() == "connected"  # as itself: its id is its CN
                time.sleep(0.3)
            finally:
                attacker.close()
        time.sleep(1.0)
        assert not victim.ended.is_set(), lab["log"].read_text()[-2000:]
        assert victim.client.is_connected()
        led = _ledger_identity(lab, "ledger-probe-2")
        try:
            assert led.outcome() == "connected"
            led.client.publish(f"midshift/v1/{SITE}/gw-01/cmd", b"still here?", qos=1)
            assert wait_for(lambda: got == [b"still here?"], 10)
        finally:
            led.close()
    finally:
        victim.close()


def test_ledger_serve_finds_its_tls_files_in_the_site_directory(lab: dict[str, Any]) -> None:
    db = lab["tmp"] / "cli-ledger.db"
    argv = [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", f"sqlite:///{db}",
            "--broker", f"mqtts://127.0.0.1:{lab['ledger_port']}"]
    half = subprocess.run([*argv, "--keys", str(lab["site"] / "ledger/keys.toml"), "--cert",
                           str(lab["site"] / "ledger/ledger.crt")], capture_output=True,
                          text=True, timeout=60)
    assert half.returncode == 2 and half.stderr.strip().count("\n") == 0, half.stderr
    assert "--ca: needed with the other TLS files" in half.stderr
    proc = subprocess.Popen([*argv, "--site", str(lab["site"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    gw = _gateway(lab, "gw-01", "gw-01-cli")
    try:
        assert proc.stdout is not None and "serving 2 gateway(s)" in proc.stdout.readline()
        assert gw.outcome() == "connected"
        gw.client.publish(f"midshift/v1/{SITE}/gw-01/events", _batch("gw-01", 2, "CLI", lab),
                          qos=1)
        store = open_store(f"sqlite:///{db}")
        try:
            assert wait_for(lambda: store.count("gw-01") == 1, 15)
        finally:
            store.close()
    finally:
        gw.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_host_command_is_signed_for_its_gateway_numbered_and_sent_as_the_ledger(
        lab: dict[str, Any]) -> None:
    site = lab["site"]
    gw = _gateway(lab, "gw-01", "gw-01-cmd")
    got: list[bytes] = []
    gw.client.on_message = lambda c, u, m: got.append(m.payload)
    broker = f"mqtts://127.0.0.1:{lab['ledger_port']}"
    try:
        assert gw.outcome() == "connected"
        gw.client.subscribe(f"midshift/v1/{SITE}/gw-01/cmd", qos=1)
        assert wait_for(lambda: len(gw.subacks) == 1, 10)
        for argv in (["ping"], ["replay-from", "--seq", "7"]):  # no agent here to answer
            assert host_tools(["command", "gw-01", *argv, "--site-dir", str(site),
                               "--broker", broker, "--no-wait"]) == 0
        assert host_tools(["command", "gw-01", "replay-from", "--site-dir", str(site),
                           "--broker", broker]) == 2  # no --seq: refused, nothing sent
        assert wait_for(lambda: len(got) == 2, 10)
    finally:
        gw.close()
    key = bytes.fromhex((site / "gateways/gw-01/command.key").read_text().strip())
    gate = CommandGate(Signer(key), "gw-01")
    assert [gate.check(p) for p in got] == [(1, "ping", {}), (2, "replay-from", {"seq": 7})]
    other = bytes.fromhex((site / "gateways/gw-02/command.key").read_text().strip())
    try:
        CommandGate(Signer(other), "gw-02").check(got[0])
        raise AssertionError("gw-02 took gw-01's command")
    except CommandRejected as exc:
        assert exc.reason == "bad_signature"
