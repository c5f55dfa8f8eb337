"""Provisioning against a real mosquitto configured from the generated material (CA,
server certificate, ACL, CRL) and the real ledger fed from the generated key registry.

One site serves the module: gw-01 to gw-04 provisioned (gw-04 is rotated and gw-03
revoked by their tests, which restart the broker, so they run last), and a second site whose CA no one trusts issued its own "gw-01". What each test proves
is in its name; every wait is on a condition with a bound.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from midshift.firmware.agent import Agent
from midshift.firmware.core.event import Event
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.site_config import DeviceType, validate
from midshift.firmware.core.wire import Batch, encode_batch
from midshift.host_tools.__main__ import main as host_tools
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService, load_keys
from midshift.simulator.broker import Broker, TlsListener
from midshift.simulator.lab import wait_for
from tests.integration.provisioned import provisioned_site

SITE = "plant1"


class Peer:
    """A TLS MQTT client holding a gateway's certificate: connects, publishes, subscribes,
    and records whether the broker took it (CONNACK) or refused it (TLS alert, close)."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(ctx)
        self.port = port
        self.connected = threading.Event()
        self.ended = threading.Event()     # refused, failed or dropped
        self.subacks: list[list[Any]] = []
        self.acked: set[int] = set()
        self.client.on_connect = lambda c, u, f, rc, p=None: (
            self.ended if rc.is_failure else self.connected).set()
        self.client.on_connect_fail = lambda c, u: self.ended.set()
        self.client.on_disconnect = lambda c, u, f, rc, p=None: self.ended.set()
        self.client.on_subscribe = lambda c, u, mid, codes, p=None: self.subacks.append(codes)
        self.client.on_publish = lambda c, u, mid, rc=None, p=None: self.acked.add(mid)

    def start(self) -> Peer:
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        return self

    def outcome(self, timeout_s: float = 10.0) -> str:
        """'connected' or 'refused', whichever the broker decides first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # bounded
            if self.connected.is_set() and not self.ended.is_set():
                return "connected"
            if self.ended.is_set():
                return "refused"
            self.connected.wait(0.05)
        return "undecided"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("provision")
    site = provisioned_site(tmp / "site", ["init-site", SITE],
                            *(["gateway", f"gw-0{i}", "--board", "sim"] for i in range(1, 5)),
                            ["broker", "--host", "127.0.0.1", "--host", "localhost"])
    rogue = provisioned_site(tmp / "rogue-site", ["init-site", SITE],
                             ["gateway", "gw-01", "--board", "sim"])
    tls = TlsListener(site / "ca/ca.crt", site / "broker/server.crt", site / "broker/server.key",
                      require_certificate=True, use_identity_as_username=True,
                      crlfile=site / "ca/crl.pem")
    broker = Broker(tmp / "broker", tls=tls, acl_file=site / "broker/acl").start()
    store = open_store(f"sqlite:///{tmp / 'ledger.db'}")
    keys = load_keys(site / "ledger/keys.toml")
    ledger = LedgerService(store, keys, broker.tls_url, tls_files=_ledger_files(site)).start()
    try:
        yield {"tmp": tmp, "site": site, "rogue": rogue, "broker": broker, "store": store,
               "keys": keys}
    finally:
        ledger.stop()
        store.close()
        broker.close()


def _ledger_files(site: Path) -> tuple[Path, Path, Path]:
    return site / "ca/ca.crt", site / "ledger/ledger.crt", site / "ledger/ledger.key"


def _peer(lab: dict[str, Any], gw: str, site_dir: Path | None = None, name: str = "gateway",
          ) -> Peer:
    g = (site_dir or lab["site"]) / "gateways" / gw
    return Peer(lab["broker"].tls_port, lab["site"] / "ca/ca.crt", g / f"{name}.crt",
                g / f"{name}.key", f"{gw}-probe-{time.monotonic_ns()}").start()


def _agent(lab: dict[str, Any], gw: str) -> Agent:
    g, run = lab["site"] / "gateways" / gw, lab["tmp"] / f"agent-{gw}"
    doc = {
        "gateway": {"id": gw, "site": SITE, "key_file": str(g / "batch.key")},
        "board": {"name": "test"},
        "journal": {"path": str(run / "journal"), "segment_size": 65536, "segment_count": 8},
        "devices": {"dev1": {"type": "scanner", "enabled": False}},
        "uplinks": {"tls": {"broker": lab["broker"].tls_url, "ca": str(lab["site"] / "ca/ca.crt"),
                            "cert": str(g / "gateway.crt"), "key": str(g / "gateway.key")}},
    }
    agent = Agent(validate(doc, {"scanner": DeviceType("txn", lambda n, t, p: t)}))
    agent.forwarding_options = {"ack_timeout_ms": 1500, "keepalive_s": 1}
    return agent.start()


def _batch(gw: str, key: bytes, seq: int, code: str) -> bytes:
    body = json.dumps({"src": "dev1", "k": "scan", "t": 1, "d": {"code": code}}).encode()
    return encode_batch(Signer(key), Batch(gw, 77, [(seq, 0, seq, body)], 1))


def test_provisioned_gateway_connects_with_mutual_tls_and_its_batches_reach_the_ledger(
        lab: dict[str, Any]) -> None:
    agent = _agent(lab, "gw-01")
    try:
        assert wait_for(lambda: agent.forwarding.active == "tls", 15), lab["broker"].log_tail()
        for i in range(3):
            agent.emit(Event("dev1", "scan", 1_700_000_000_000 + i, {"code": f"OK{i}"}))
        assert wait_for(lambda: lab["store"].count("gw-01") >= 3, 15)
        assert wait_for(lambda: agent.snapshot()["backlog_records"] == 0, 15)  # acks came back
    finally:
        agent.stop()
    codes = {json.loads(r[0])["code"] for r in lab["store"].query(
        "SELECT data FROM event_fields WHERE gateway='gw-01' AND source <> 'agent'")}
    assert {"OK0", "OK1", "OK2"} <= codes


def test_a_gateway_publishing_under_another_gateways_topic_is_dropped_by_the_broker(
        lab: dict[str, Any]) -> None:
    """gw-02 sends a batch the ledger would accept (gw-01's key, gw-01's topic), then one
    of its own on the same connection. mosquitto delivers a connection's QoS 1 messages
    in order, so once gw-02's own batch is stored the forged one would be there too, had
    the broker passed it on."""
    peer = _peer(lab, "gw-02")
    try:
        assert peer.outcome() == "connected"
        forged = peer.client.publish(f"midshift/v1/{SITE}/gw-01/events",
                                     _batch("gw-01", lab["keys"]["gw-01"], 1000, "FORGED"), qos=1)
        own = peer.client.publish(f"midshift/v1/{SITE}/gw-02/events",
                                  _batch("gw-02", lab["keys"]["gw-02"], 1, "OWN"), qos=1)
        forged.wait_for_publish(10)
        own.wait_for_publish(10)
        assert wait_for(lambda: lab["store"].count("gw-02") == 1, 15)
    finally:
        peer.close()
    rows = lab["store"].query("SELECT COUNT(*) FROM events WHERE body LIKE '%FORGED%'")
    assert rows[0][0] == 0
    assert lab["store"].query("SELECT COUNT(*) FROM rejections")[0][0] == 0  # never reached it


def test_a_gateway_reads_only_its_own_ack_topic(lab: dict[str, Any]) -> None:
    """gw-02 subscribes to gw-01's acks and its own; the ledger's identity then publishes
    one to each, in that order, on one connection: gw-02 gets only its own."""
    peer = _peer(lab, "gw-02")
    got: list[str] = []
    peer.client.on_message = lambda c, u, m: got.append(m.topic)
    site = lab["site"]
    host = Peer(lab["broker"].tls_port, *_ledger_files(site), "ledger-probe").start()
    try:
        assert peer.outcome() == "connected" and host.outcome() == "connected"
        peer.client.subscribe([(f"midshift/v1/{SITE}/gw-01/ack", 1),
                               (f"midshift/v1/{SITE}/gw-02/ack", 1)])
        assert wait_for(lambda: len(peer.subacks) == 1, 10)
        host.client.publish(f"midshift/v1/{SITE}/gw-01/ack", b"for gw-01", qos=1)
        host.client.publish(f"midshift/v1/{SITE}/gw-02/ack", b"for gw-02", qos=1)
        assert wait_for(lambda: f"midshift/v1/{SITE}/gw-02/ack" in got, 10)
    finally:
        host.close()
        peer.close()
    assert got == [f"midshift/v1/{SITE}/gw-02/ack"]


def test_a_certificate_from_a_foreign_ca_is_refused(lab: dict[str, Any]) -> None:
    peer = _peer(lab, "gw-01", site_dir=lab["rogue"])   # same CN, another CA
    try:
        assert peer.outcome() == "refused"
    finally:
        peer.close()


def _outcomes(lab: dict[str, Any], gw: str, names: list[str]) -> list[str]:
    peers = [_peer(lab, gw, name=n) for n in names]
    try:
        return [p.outcome() for p in peers]
    finally:
        for p in peers:
            p.close()


def test_a_rotated_out_certificate_works_during_the_overlap_and_is_refused_after(
        lab: dict[str, Any]) -> None:
    site = lab["site"]
    pem = (site / "gateways/gw-04/gateway.crt").read_bytes()
    old = f"{x509.load_pem_x509_certificate(pem).serial_number:x}"
    assert host_tools(["provision", "--site-dir", str(site), "rotate", "gw-04"]) == 0
    lab["broker"].restart()  # as after any provisioning change
    assert _outcomes(lab, "gw-04", ["gateway", f"retired/{old}"]) == ["connected", "connected"]
    reg = json.loads((site / "site.json").read_text())  # the overlap window has passed
    next(c for c in reg["gateways"]["gw-04"]["certs"] if c["serial"] == old)[
        "retire_at"] = "2000-01-01T00:00:00Z"
    (site / "site.json").write_text(json.dumps(reg))
    assert host_tools(["provision", "--site-dir", str(site), "crl"]) == 0
    lab["broker"].restart()
    assert _outcomes(lab, "gw-04", ["gateway", f"retired/{old}"]) == ["connected", "refused"]


def test_a_revoked_certificate_is_refused_once_mosquitto_has_read_the_new_crl(
        lab: dict[str, Any]) -> None:
    before = _peer(lab, "gw-03")
    try:
        assert before.outcome() == "connected"   # the same certificate, not yet revoked
    finally:
        before.close()
    assert host_tools(["provision", "--site-dir", str(lab["site"]), "revoke", "gw-03",
                       "--reason", "stolen"]) == 0
    lab["broker"].restart()  # mosquitto reads the CRL and the ACL at start
    after = _peer(lab, "gw-03")
    other = _peer(lab, "gw-01")
    try:
        assert after.outcome() == "refused"
        assert other.outcome() == "connected"    # the CRL refuses gw-03 only
    finally:
        after.close()
        other.close()
    assert "user gw-03" not in (lab["site"] / "broker/acl").read_text()
    assert "gw-03" not in load_keys(lab["site"] / "ledger/keys.toml")


def test_reference_data_published_as_the_ledger_is_read_by_its_gateway_only(
        lab: dict[str, Any]) -> None:
    """``refdata publish`` over TLS with the ledger's certificate leaves gw-02's prices on
    the broker; gw-02 reads them, gw-01 asking for gw-02's gets nothing (the ACL)."""
    site = lab["site"]
    prices = lab["tmp"] / "prices.csv"
    prices.write_text("sku,price\nA,100\nB,250\n")
    assert host_tools(["refdata", "publish", "--store", "store-7", "--dataset", "prices",
                       str(prices), "--gateway", "gw-02", "--broker", lab["broker"].tls_url,
                       "--site-dir", str(site)]) == 0
    mine, other = _peer(lab, "gw-02"), _peer(lab, "gw-01")
    got: dict[str, list[str]] = {"gw-02": [], "gw-01": []}
    mine.client.on_message = lambda c, u, m: got["gw-02"].append(m.topic)
    other.client.on_message = lambda c, u, m: got["gw-01"].append(m.topic)
    try:
        assert mine.outcome() == "connected" and other.outcome() == "connected"
        other.client.subscribe(f"midshift/v1/{SITE}/gw-02/refdata/#", qos=1)
        mine.client.subscribe(f"midshift/v1/{SITE}/gw-02/refdata/#", qos=1)
        # latest, delta/1, snapshot/1/0
        assert wait_for(lambda: len(got["gw-02"]) == 3 and len(other.subacks) == 1, 10)
    finally:
        mine.close()
        other.close()
    assert f"midshift/v1/{SITE}/gw-02/refdata/prices/latest" in got["gw-02"]
    assert got["gw-01"] == []
