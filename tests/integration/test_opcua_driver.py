"""The OPC UA driver against the OPC UA PLC emulator over loopback: every value change in
the ground truth arrives once and in order, stamped with its SourceTimestamp; Bad status
is an error and no event, then recovery; a server restart is survived without restarting
the driver; refusals, unknown nodes, an unreachable endpoint, security options, config
errors, nothing left running after stop."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from midshift.firmware.core.errors import ConfigError, JournalFull
from midshift.firmware.core.event import Event
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.opcua import OpcUaDriver
from midshift.simulator.devices.opcua import OpcUaPLC
from midshift.simulator.network import FaultProxy

WAIT_S = 8.0
TAGS = ("counter", "temperature", "status")
VARIABLES = [
    {"tag": "counter", "type": "counter", "start": 1000},
    {"tag": "temperature", "type": "temperature", "start": 30.0, "noise": 1.0},
    {"tag": "status", "type": "status", "states": ["RUNNING", "IDLE", "SETUP"], "change_every": 3},
]


class Sink:
    """The pipeline's place: collects events, can refuse the next ones with JournalFull."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refuse = 0
        self.refused = 0
        self.cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self.cond:
            if self.refuse:
                self.refuse -= 1
                self.refused += 1
                raise JournalFull("txn", 100, 0)
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[Event]], bool], timeout_s: float = WAIT_S) -> list[Event]:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.events), timeout_s), self.events[-5:]
            return list(self.events)

    def of(self, tag: str) -> list[tuple[Any, int]]:
        with self.cond:
            return [(e.data["value"], e.read_ms) for e in self.events if e.data["tag"] == tag]


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll a condition another thread makes true (a counter, a state), bounded."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def truth_of(plc: OpcUaPLC, tag: str) -> list[tuple[Any, int]]:
    return [(e["value"], e["source_ms"]) for e in plc.truth()
            if e["kind"] == "opcua" and e["expect"] and e["tag"] == tag]


def config(plc: OpcUaPLC, tags: tuple[str, ...] = TAGS, **extra: Any) -> dict[str, Any]:
    table = {"endpoint": plc.endpoint, "publishing_ms": 20, "timeout_s": 1.0,
             "nodes": [{"tag": t, "node_id": plc.node_id(t)} for t in tags], **extra}
    return OpcUaDriver.validate_config("plc1", table, "devices.plc1")


def settle(plc: OpcUaPLC, sink: Sink) -> None:
    """Wait until the driver's last event of every tag is the PLC's last value of it."""
    sink.wait_for(lambda evs: all(sink.of(t)[-1:] == truth_of(plc, t)[-1:] for t in TAGS))


def assert_once_in_order(plc: OpcUaPLC, sink: Sink, tag: str) -> None:
    """The driver's events of ``tag`` are the ground truth's values from the first one the
    driver saw (the current value when it subscribed) on: none missing, none twice."""
    got, truth = sink.of(tag), truth_of(plc, tag)
    assert got, tag
    start = truth.index(got[0])
    assert got == truth[start:], tag


@pytest.fixture
def rig() -> Iterator[Callable[..., tuple[OpcUaPLC, OpcUaDriver, Sink]]]:
    made: list[Any] = []

    def make(plc: OpcUaPLC | None = None, **extra: Any) -> tuple[OpcUaPLC, OpcUaDriver, Sink]:
        if plc is None:
            plc = OpcUaPLC("line1", port=0, period_ms=60, seed=5, variables=VARIABLES).start()
            made.append(plc)
        sink = Sink()
        driver = OpcUaDriver("plc1", config(plc, **extra), sink, SystemClock())
        made.append(driver)
        return plc, driver.start(), sink

    yield make
    for thing in reversed(made):
        thing.stop()


def test_every_change_arrives_once_in_order_with_source_time(rig: Callable[..., Any]) -> None:
    plc, driver, sink = rig()
    sink.wait_for(lambda evs: sum(e.data["tag"] == "counter" for e in evs) >= 15)
    plc.pause_updates()
    n = len(truth_of(plc, "counter"))
    settle(plc, sink)
    for tag in TAGS:
        assert_once_in_order(plc, sink, tag)
    assert len(sink.of("counter")) >= 15 and n == len(truth_of(plc, "counter"))
    first = sink.events[0]
    assert (first.source, first.kind) == ("plc1", "opcua")
    assert set(first.data) == {"tag", "node", "value", "status"}
    assert all(e.data["status"] == "Good" and e.data["node"] == plc.node_id(e.data["tag"])
               for e in sink.events)
    assert all(isinstance(v, float) for v, _ in sink.of("temperature"))
    assert driver.status.state == "ok"
    assert driver.status.counter("events") == len(sink.events)
    assert driver.status.counter("bad_status") == 0


def test_bad_status_is_error_without_event_then_recovers(rig: Callable[..., Any]) -> None:
    plc, driver, sink = rig()
    sink.wait_for(lambda evs: len(sink.of("temperature")) >= 1)
    wait_until(lambda: driver.status.state == "ok")
    plc.set_bad("temperature", True)
    wait_until(lambda: driver.status.state == "error")
    assert "temperature" in driver.status.last_error and "BadSensorFailure" in driver.status.last_error
    assert driver.status.counter("bad_status") == 1
    counters_before = len(sink.of("counter"))
    sink.wait_for(lambda evs: len(sink.of("counter")) >= counters_before + 3)  # others flow on
    assert driver.status.state == "error"
    plc.set_bad("temperature", False)
    wait_until(lambda: driver.status.state == "ok")
    good_again = [e for e in plc.truth() if e.get("source") == "good_again"]
    sink.wait_for(lambda evs: (good_again[0]["value"], good_again[0]["source_ms"])
                  in sink.of("temperature"))
    assert all(v is not None for v, _ in sink.of("temperature"))
    plc.pause_updates()
    settle(plc, sink)
    for tag in TAGS:
        assert_once_in_order(plc, sink, tag)
    assert driver.status.counter("to_error") == 1


def test_server_restart_resubscribes_without_restarting_the_driver(
        rig: Callable[..., Any]) -> None:
    plc, driver, sink = rig()
    thread = driver._thread
    sink.wait_for(lambda evs: len(sink.of("counter")) >= 5)
    plc.pause_updates()  # nothing changes while the driver is away: every value must arrive
    settle(plc, sink)
    before = len(sink.events)
    plc.restart()
    wait_until(lambda: driver.status.counter("reconnects") >= 1 and driver.status.state == "ok")
    assert driver.status.counter("connection_lost") >= 1
    assert driver.status.counter("to_disconnected") >= 1
    # the current values come again with the new subscription ...
    wait_until(lambda: driver.status.counter("repeated_values") >= len(TAGS))
    assert len(sink.events) == before  # ... and not emitted twice
    plc.resume_updates()
    last = truth_of(plc, "counter")[-1][0]
    sink.wait_for(lambda evs: sink.of("counter")[-1][0] >= last + 5)
    assert driver._thread is thread and thread is not None and thread.is_alive()
    plc.pause_updates()
    settle(plc, sink)
    for tag in TAGS:
        assert_once_in_order(plc, sink, tag)


def test_blackholed_connection_found_by_keepalive_then_resumed(
        rig: Callable[..., Any]) -> None:
    """A connection that goes silent without closing (a cut cable past the switch) is
    found by asyncua's keepalive probe, every timeout_s, not by waiting for data."""
    plc = OpcUaPLC("line1", port=0, period_ms=60, variables=VARIABLES[:1]).start()
    proxy = FaultProxy(("127.0.0.1", plc.port), control=False).start()
    try:
        table = {"endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/midshift/plc",
                 "publishing_ms": 20, "timeout_s": 0.5,
                 "nodes": [{"tag": "counter", "node_id": plc.node_id("counter")}]}
        sink = Sink()
        driver = OpcUaDriver("plc1", OpcUaDriver.validate_config("plc1", table, "devices.plc1"),
                             sink, SystemClock()).start()
        try:
            sink.wait_for(lambda evs: len(evs) >= 3)
            proxy.set_mode("blackhole")
            t0 = time.monotonic()
            wait_until(lambda: driver.status.state == "disconnected")
            assert time.monotonic() - t0 < 3.0  # a probe every 0.5 s, answered within 0.5 s
            assert driver.status.counter("connection_lost") == 1
            proxy.set_mode("pass")
            n = len(sink.events)
            wait_until(lambda: driver.status.state == "ok" and len(sink.events) >= n + 3)
            assert driver.status.counter("reconnects") >= 1
            wait_until(lambda: proxy.describe()["connections_open"] == 1)  # the old one closed
        finally:
            driver.stop()
    finally:
        proxy.stop()
        plc.stop()


def test_refused_events_are_counted_and_the_driver_goes_on(rig: Callable[..., Any]) -> None:
    plc, driver, sink = rig()
    sink.wait_for(lambda evs: len(evs) >= 3)
    sink.refuse = 2
    sink.wait_for(lambda evs: sink.refused == 2 and len(sink.of("counter")) >= 8)
    assert driver.status.counter("refused") == 2
    assert driver.status.counter("refused_journal_full") == 2
    assert driver.status.state == "ok"
    assert "journal full" in (driver.status.last_error or "")


def test_unknown_node_is_error_and_the_others_flow(rig: Callable[..., Any]) -> None:
    plc = OpcUaPLC("line1", port=0, period_ms=60, variables=VARIABLES[:1]).start()
    try:
        table = {"endpoint": plc.endpoint, "publishing_ms": 20,
                 "nodes": [{"tag": "counter", "node_id": plc.node_id("counter")},
                           {"tag": "speed", "node_id": "ns=2;s=line1.speed"}]}
        sink = Sink()
        driver = OpcUaDriver("plc1", OpcUaDriver.validate_config("plc1", table, "devices.plc1"),
                             sink, SystemClock()).start()
        try:
            sink.wait_for(lambda evs: len(evs) >= 3)
            assert driver.status.state == "error"
            assert "speed (ns=2;s=line1.speed)" in driver.status.last_error
            assert "BadNodeIdUnknown" in driver.status.last_error
            assert driver.status.counter("bad_nodes") == 1
            assert {e.data["tag"] for e in sink.events} == {"counter"}
        finally:
            driver.stop()
    finally:
        plc.stop()


def test_unreachable_endpoint_is_disconnected_with_backoff() -> None:
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    table = {"endpoint": f"opc.tcp://127.0.0.1:{port}/x", "timeout_s": 0.5,
             "nodes": [{"tag": "a", "node_id": "ns=2;s=a"}]}
    driver = OpcUaDriver("plc1", OpcUaDriver.validate_config("plc1", table, "devices.plc1"),
                         Sink(), SystemClock()).start()
    try:
        wait_until(lambda: driver.status.counter("connect_failures") >= 3)
        assert driver.status.state == "disconnected"
        assert f"cannot connect to opc.tcp://127.0.0.1:{port}/x" in driver.status.last_error
        t0, n0 = time.monotonic(), driver.status.counter("connect_failures")
        wait_until(lambda: driver.status.counter("connect_failures") >= n0 + 2)
        assert time.monotonic() - t0 >= 0.8 + 1.6 - 0.2  # the backoff doubles (0.2, 0.4, 0.8 ...)
        assert driver.status.counter("reconnects") == 0
    finally:
        t_stop = time.monotonic()
        driver.stop()
        assert time.monotonic() - t_stop < 1.5  # a backoff wait is woken by stop


def rsa_cert(d: Path, name: str, uri: str) -> tuple[Path, Path]:
    """A self-signed RSA certificate (DER) and key (PEM) carrying ``uri``, as OPC UA wants."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = d / f"{name}.der", d / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


CLIENT_URI = "urn:example.org:FreeOpcUa:opcua-asyncio"  # asyncua's client application URI


@pytest.mark.parametrize(("mode", "pin_server"), [("Sign", False), ("SignAndEncrypt", True)])
def test_secure_session_with_basic256sha256(rig: Callable[..., Any], tmp_path: Path,
                                            mode: str, pin_server: bool) -> None:
    server_cert, server_key = rsa_cert(tmp_path, "plc", "urn:freeopcua:python:server")
    cert, key = rsa_cert(tmp_path, "gw1", CLIENT_URI)
    plc = OpcUaPLC("line1", port=0, period_ms=60, variables=VARIABLES[:1],
                   certificate=server_cert, private_key=server_key).start()
    try:
        assert "Basic256Sha256_SignAndEncrypt" in plc.describe()["security"]
        extra: dict[str, Any] = {"security_policy": "Basic256Sha256", "security_mode": mode,
                                 "certificate": str(cert), "private_key": str(key)}
        if pin_server:
            extra["server_certificate"] = str(server_cert)
        _, driver, sink = rig(plc, tags=("counter",), **extra)
        sink.wait_for(lambda evs: len(evs) >= 3)
        assert driver.status.state == "ok" and driver.status.counter("connect_failures") == 0
        plc.pause_updates()
        sink.wait_for(lambda evs: sink.of("counter")[-1:] == truth_of(plc, "counter")[-1:])
        assert_once_in_order(plc, sink, "counter")
    finally:
        plc.stop()


def test_security_policy_the_server_lacks_is_a_clear_error(rig: Callable[..., Any],
                                                           tmp_path: Path) -> None:
    """A None-only server: asking for Basic256Sha256 with Sign (mode 2) must fail to
    connect, naming both, which it can only do if the options reached set_security."""
    cert, key = rsa_cert(tmp_path, "gw1", CLIENT_URI)
    plc = OpcUaPLC("line1", port=0, variables=VARIABLES[:1]).start()
    try:
        table = {"endpoint": plc.endpoint, "security_policy": "Basic256Sha256",
                 "security_mode": "Sign", "certificate": str(cert), "private_key": str(key),
                 "nodes": [{"tag": "counter", "node_id": plc.node_id("counter")}]}
        cfg = OpcUaDriver.validate_config("plc1", table, "devices.plc1")
        assert (cfg["security_mode"], cfg["server_certificate"]) == ("Sign", None)
        sink = Sink()
        driver = OpcUaDriver("plc1", cfg, sink, SystemClock()).start()
        try:
            wait_until(lambda: driver.status.counter("connect_failures") >= 1)
            assert driver.status.state == "disconnected" and not sink.events
            assert "No matching endpoints: 2, http://opcfoundation.org/UA/SecurityPolicy" \
                "#Basic256Sha256" in driver.status.last_error
        finally:
            driver.stop()
    finally:
        plc.stop()


def test_validate_config_defaults() -> None:
    cfg = OpcUaDriver.validate_config("plc1", {
        "endpoint": "opc.tcp://127.0.0.1:4840/midshift/plc",
        "nodes": [{"tag": "count", "node_id": "ns=2;s=line1.counter"},
                  {"tag": "speed", "node_id": "ns=3;i=1001"}]}, "devices.plc1")
    assert cfg == {"endpoint": "opc.tcp://127.0.0.1:4840/midshift/plc",
                   "nodes": [{"tag": "count", "node_id": "ns=2;s=line1.counter"},
                             {"tag": "speed", "node_id": "ns=3;i=1001"}],
                   "publishing_ms": 100, "sampling_ms": 0, "queue_size": 100, "timeout_s": 2.0,
                   "stale_s": 10.0, "security_policy": "None", "security_mode": None,
                   "certificate": None, "private_key": None, "server_certificate": None}


GOOD = {"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": [{"tag": "a", "node_id": "ns=2;s=a"}]}


@pytest.mark.parametrize(("change", "key", "text"), [
    ({"port": 4840}, "devices.plc1.port", "is not a known key"),
    ({"endpoint": "http://127.0.0.1:4840"}, "devices.plc1.endpoint", "is not an OPC UA endpoint"),
    ({"endpoint": "opc.tcp://127.0.0.1"}, "devices.plc1.endpoint", "is not an OPC UA endpoint"),
    ({"endpoint": 4840}, "devices.plc1.endpoint", "is not a string"),
    ({"nodes": []}, "devices.plc1.nodes", "is empty"),
    ({"nodes": "ns=2;s=a"}, "devices.plc1.nodes", "is not a list"),
    ({"nodes": [{"tag": "a"}]}, "devices.plc1.nodes[0].node_id", "is required"),
    ({"nodes": [{"tag": "a", "node_id": "bogus=1"}]}, "devices.plc1.nodes[0].node_id",
     "is not a node id"),
    ({"nodes": [{"tag": "a", "node_id": "nsu=urn:x;s=a"}]}, "devices.plc1.nodes[0].node_id",
     "names a namespace URI"),
    ({"nodes": [{"tag": "a", "node_id": "ns=2;s=a", "unit": "C"}]}, "devices.plc1.nodes[0].unit",
     "is not a known key"),
    ({"nodes": [{"tag": "a", "node_id": "ns=2;s=a"}, {"tag": "a", "node_id": "ns=2;s=b"}]},
     "devices.plc1.nodes[1].tag", "'a' is used twice"),
    ({"nodes": [{"tag": "a", "node_id": "ns=2;s=a"}, {"tag": "b", "node_id": "ns=2;s=a"}]},
     "devices.plc1.nodes[1].node_id", "is listed twice"),
    ({"publishing_ms": 5}, "devices.plc1.publishing_ms", "out of range"),
    ({"publishing_ms": 100.5}, "devices.plc1.publishing_ms", "is not an integer"),
    ({"queue_size": 0}, "devices.plc1.queue_size", "out of range"),
    ({"timeout_s": 0}, "devices.plc1.timeout_s", "out of range"),
    ({"stale_s": 0.2, "publishing_ms": 100}, "devices.plc1.stale_s", "shorter than three"),
    ({"security_policy": "Basic128Rsa15"}, "devices.plc1.security_policy", "is not allowed"),
    ({"security_mode": "Sign"}, "devices.plc1.security_mode", "security_policy is None"),
    ({"certificate": "/etc/hostname"}, "devices.plc1.certificate", "security_policy is None"),
    ({"security_policy": "Basic256Sha256"}, "devices.plc1.certificate", "is required"),
    ({"security_policy": "Basic256Sha256", "security_mode": "None"},
     "devices.plc1.security_mode", "is not allowed"),
    ({"security_policy": "Basic256Sha256", "certificate": "/nonexistent/c.der",
      "private_key": "/nonexistent/k.pem"}, "devices.plc1.certificate", "is not a readable file"),
])
def test_validate_config_rejects(change: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        OpcUaDriver.validate_config("plc1", {**GOOD, **change}, "devices.plc1")
    assert err.value.key == key
    assert text in str(err.value)


def test_stop_leaves_no_threads(rig: Callable[..., Any]) -> None:
    plc = OpcUaPLC("line1", port=0, period_ms=60, variables=VARIABLES[:1]).start()
    try:
        before = set(threading.enumerate())
        sink = Sink()
        cfg = config(plc, tags=("counter",))
        driver = OpcUaDriver("plc1", cfg, sink, SystemClock()).start()
        sink.wait_for(lambda evs: len(evs) >= 2)
        t0 = time.monotonic()
        driver.stop()
        assert time.monotonic() - t0 < 2.0
        assert set(threading.enumerate()) <= before
        n = len(sink.events)
        last = plc.truth()[-1]["n"]
        wait_until(lambda: plc.truth()[-1]["n"] >= last + 3)  # the PLC goes on ...
        assert len(sink.events) == n  # ... and nobody is listening
    finally:
        plc.stop()
