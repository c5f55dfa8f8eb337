"""The fault proxy between a real paho-mqtt client and a real mosquitto: each mode's
effect as that client sees it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import Broker
from simulator.network import FaultProxy, check_mode, send_control
from tests.integration.mqtt_probe import Probe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def proxy(broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    monkeypatch.setenv("MIDSHIFT_RUNTIME_DIR", str(tmp_path))
    with FaultProxy(("127.0.0.1", broker.port), name="lte") as p:
        yield p


def _probe(proxy: FaultProxy, name: str) -> Probe:
    probe = Probe("127.0.0.1", proxy.port, name)
    assert probe.connect()
    return probe


def _established(local_port: int) -> bool:
    """Is there an ESTABLISHED TCP connection from this local port (per /proc/net/tcp)?"""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port and fields[3] == "01":
            return True
    return False


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "pass")
    probe.client.subscribe("t/pass", qos=1)
    mid = probe.publish("t/pass", b"hello")
    assert probe.wait_acked(mid, 5) and probe.wait_messages(1, 5)
    assert probe.messages[0] == ("t/pass", b"hello")
    assert proxy.bytes_up > 0 and proxy.bytes_down > 0
    probe.close()


def test_blackhole_keeps_the_connection_open_and_silent(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "bh")
    local_port = probe.client.socket().getsockname()[1]
    proxy.set_mode("blackhole")
    up, down = proxy.bytes_up, proxy.bytes_down
    mid = probe.publish("t/bh", b"lost?")
    assert not probe.wait_acked(mid, 1.5), "a PUBACK came through a blackhole"
    assert _established(local_port), "the client's TCP connection should stay ESTABLISHED"
    assert not probe.disconnected.is_set()
    assert (proxy.bytes_up, proxy.bytes_down) == (up, down), "bytes flowed in a blackhole"
    proxy.set_mode("pass")  # restored: the held publish goes through, TCP was never cut
    assert probe.wait_acked(mid, 5)
    probe.close()


def test_refuse_rejects_new_connections_and_resets_open_ones(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "refuse")
    proxy.set_mode("refuse")
    assert probe.disconnected.wait(5), "open connection should be reset"
    other = Probe("127.0.0.1", proxy.port, "refused")
    with pytest.raises(ConnectionRefusedError):
        other.client.connect("127.0.0.1", proxy.port)
    proxy.set_mode("pass")
    assert _probe(proxy, "after-refuse").connected.is_set()
    probe.client.loop_stop()


def test_reset_cuts_open_connections_once(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "reset")
    proxy.set_mode("reset")
    assert probe.disconnected.wait(5)
    assert proxy.mode == "pass"
    assert _probe(proxy, "after-reset").connected.is_set()
    probe.client.loop_stop()


def test_latency_delays_the_round_trip(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "lat")
    proxy.set_mode("latency", ms=150, jitter_ms=20)
    t0 = time.monotonic()
    mid = probe.publish("t/lat", b"x")
    assert probe.wait_acked(mid, 5)
    rtt = time.monotonic() - t0
    assert 0.3 <= rtt < 2.0, f"round trip {rtt:.3f}s should carry 2 x 150 ms"
    probe.close()


def test_bandwidth_cap_slows_a_large_payload(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "bw")
    proxy.set_mode("bandwidth", bytes_per_s=100_000)
    t0 = time.monotonic()
    mid = probe.publish("t/bw", bytes(150_000))
    assert probe.wait_acked(mid, 10)
    assert time.monotonic() - t0 >= 1.2, "150 kB at 100 kB/s takes over a second"
    probe.close()


def test_flap_alternates_up_and_down(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "flap")
    proxy.set_mode("flap", up_ms=300, down_ms=300, down_mode="blackhole")
    saw_down = saw_up = False
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (saw_down and saw_up):  # bounded: 3 s
        flowing = proxy._flowing.is_set()
        saw_down |= not flowing
        saw_up |= flowing
        time.sleep(0.02)
    assert saw_down and saw_up and proxy.mode == "flap"
    proxy.set_mode("pass")
    mid = probe.publish("t/flap", b"after")
    assert probe.wait_acked(mid, 5)
    probe.close()


def test_stall_pauses_then_resumes(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "stall")
    proxy.set_mode("stall", ms=200, every_ms=100)
    mids = [probe.publish("t/stall", bytes([i])) for i in range(20)]
    assert all(probe.wait_acked(m, 10) for m in mids), "a stall must delay, never drop"
    probe.close()


@pytest.mark.parametrize("mode,params,error", [
    ("cable-cut", {}, "is not one of"),
    ("latency", {"seconds": 1}, "unknown parameter"),
    ("latency", {"ms": -5}, "must be a number >= 0"),
    ("flap", {"down_mode": "sometimes"}, "is not blackhole or refuse"),
])
def test_bad_modes_are_rejected_with_what_is_allowed(mode: str, params: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_mode(mode, params)


def test_cli_proxy_is_controlled_by_proxy_set(broker: Broker, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDSHIFT_RUNTIME_DIR", str(tmp_path))
    env = {"MIDSHIFT_RUNTIME_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "proxy", "127.0.0.1:0", f"127.0.0.1:{broker.port}",
         "--name", "eth0"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["name"] == "eth0" and info["mode"] == "pass"
        out = subprocess.run(
            [sys.executable, "-m", "simulator", "proxy-set", "eth0", "latency", "--ms", "80"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["mode"] == "latency"
        assert send_control("eth0", {})["params"] == {"ms": 80, "jitter_ms": 0}
        bad = subprocess.run(
            [sys.executable, "-m", "simulator", "proxy-set", "nope", "pass"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "no fault proxy named 'nope'" in bad.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not (tmp_path / "eth0.sock").exists(), "the control socket must be removed"


def test_broker_crash_and_restart_without_persistence_forgets_sessions(broker: Broker) -> None:
    sub = Probe("127.0.0.1", broker.port, "durable-sub", clean=False)
    assert sub.connect()
    subscribed = threading.Event()
    sub.client.on_subscribe = lambda *a: subscribed.set()
    sub.client.subscribe("t/keep", qos=1)
    assert subscribed.wait(5)
    sub.client.disconnect()
    sub.client.loop_stop()
    pid = broker.process.pid
    broker.crash()
    assert not Path(f"/proc/{pid}").exists()
    broker.start()
    pub = Probe("127.0.0.1", broker.port, "pub")
    assert pub.connect()
    assert pub.wait_acked(pub.publish("t/keep", b"queued?"), 5)
    pub.close()
    again = Probe("127.0.0.1", broker.port, "durable-sub", clean=False)
    assert again.connect()
    assert not again.wait_messages(1, 1.0), "without persistence the session is gone"
    again.close()


def test_proxy_and_broker_shut_down_without_leaks(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("MIDSHIFT_RUNTIME_DIR", str(tmp_path))
    threads_before = threading.active_count()
    broker = Broker(tmp_path / "b").start()
    pid, port = broker.process.pid, broker.port
    proxy = FaultProxy(("127.0.0.1", port), name="leak").start()
    probe = _probe(proxy, "leak")
    proxy_port = proxy.port
    probe.close()
    proxy.stop()
    broker.close()
    assert not Path(f"/proc/{pid}").exists(), "mosquitto still running"
    for p in (port, proxy_port):
        with socket.socket() as s:  # both ports can be bound again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
    assert threading.active_count() <= threads_before
    assert not (tmp_path / "leak.sock").exists()
