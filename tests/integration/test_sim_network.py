"""The fault proxy between a real paho-mqtt client and a real mosquitto: each mode's
effect as that client sees it, the control socket, and the command line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.simulator.__main__ import UsageError, load_devices
from midshift.simulator.broker import Broker
from midshift.simulator.network import FaultProxy, check_mode, send_control
from tests.integration.mqtt_probe import Probe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIDSHIFT_RUNTIME_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def proxy(broker: Broker, runtime: Path) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", broker.port), name="lte", seed=7) as p:
        yield p


def _probe(proxy: FaultProxy, name: str) -> Probe:
    probe = Probe("127.0.0.1", proxy.port, name)
    assert probe.connect(), "no CONNACK through the proxy"
    return probe


def _tcp_state(local_port: int) -> str | None:
    """The kernel's TCP state of the loopback socket bound to local_port (/proc/net/tcp)."""
    states = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
              "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK"}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port:
            return states.get(fields[3], fields[3])
    return None


def _ack_latencies(probe: Probe, topic: str, duration_s: float, n_max: int = 100_000) -> list[float]:
    """Publish QoS 1 one after another for duration_s; each entry is one PUBACK's wait."""
    waits = []
    end = time.monotonic() + duration_s
    while time.monotonic() < end and len(waits) < n_max:  # bounded by time and count
        t0 = time.monotonic()
        mid = probe.publish(topic, b"x")
        assert probe.wait_acked(mid, 5), "a message was lost, not delayed"
        waits.append(time.monotonic() - t0)
    return waits


# ---- modes, as a paho client sees them -----------------------------------------------------

def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "pass")
    probe.client.subscribe("t/pass", qos=1)
    mid = probe.publish("t/pass", b"hello")
    assert probe.wait_acked(mid, 5) and probe.wait_messages(1, 5)
    assert probe.messages[0] == ("t/pass", b"hello")
    d = proxy.describe()
    assert d["bytes_up"] > 0 and d["bytes_down"] > 0
    assert d["connections_total"] == 1 and d["connections_open"] == 1
    probe.close()


def test_blackhole_keeps_the_connection_open_and_silent(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "bh")
    sock = probe.client.socket()
    local_port = sock.getsockname()[1]
    proxy.set_mode("blackhole")
    up, down = proxy.bytes_up, proxy.bytes_down
    mid = probe.publish("t/bh", b"lost?")
    late = Probe("127.0.0.1", proxy.port, "bh-new")  # a new connection is accepted, then silence
    late.client.connect("127.0.0.1", proxy.port)
    late.client.loop_start()

    assert not probe.wait_acked(mid, 1.5), "a PUBACK came through a blackhole"
    assert not late.connected.wait(0.5), "a CONNACK came through a blackhole"
    assert _tcp_state(local_port) == "ESTABLISHED"
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    sock.getpeername()  # still connected: raises if the socket had been reset or closed
    with pytest.raises(BlockingIOError):  # no data, no FIN (b""), no RST (ConnectionResetError)
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    assert not probe.disconnected.is_set() and not late.disconnected.is_set()
    assert (proxy.bytes_up, proxy.bytes_down) == (up, down), "bytes flowed in a blackhole"
    assert proxy.describe()["connections_open"] == 2

    proxy.set_mode("pass")  # the held publish goes through: TCP was never cut
    assert probe.wait_acked(mid, 5)
    assert late.connected.wait(5)
    probe.close()
    late.close()


def test_blackhole_buffers_boundedly_and_pushes_back(proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")
    with socket.create_connection(proxy.address, timeout=5) as s:
        s.setblocking(False)
        sent = 0
        chunk = bytes(65536)
        while sent < 64 * 2**20:  # bounded: 64 MiB would mean no back-pressure at all
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                break
        assert sent < 4 * 2**20, f"{sent} bytes swallowed: buffering is not bounded"
    assert proxy.bytes_up == 0


def test_refuse_rejects_new_connections_and_resets_open_ones(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "refuse")
    proxy.set_mode("refuse")
    assert probe.disconnected.wait(5), "open connection should be reset"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=5).close()
    d = proxy.describe()
    assert d["connections_reset"] == 1 and not d["listening"]
    proxy.set_mode("pass")
    _probe(proxy, "after-refuse").close()
    probe.client.loop_stop()


def test_a_refusing_proxy_keeps_its_port(proxy: FaultProxy) -> None:
    """While refusing, no other socket can take the port (a free loopback port in the
    ephemeral range is handed to outgoing connects, the agent's own retries included), so
    listening again cannot fail "address already in use"."""
    port = proxy.address[1]
    for _ in range(3):  # bounded: three refuse/pass rounds on one port
        proxy.set_mode("refuse")
        with socket.socket() as squatter:
            with pytest.raises(OSError, match="in use"):
                squatter.bind(("127.0.0.1", port))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=5).close()
        proxy.set_mode("pass")
        assert proxy.address[1] == port
        _probe(proxy, "back").close()


def test_reset_sends_rst_and_keeps_the_mode(proxy: FaultProxy) -> None:
    proxy.set_mode("latency", ms=10)
    raw = socket.create_connection(proxy.address, timeout=5)  # mosquitto waits for CONNECT
    probe = _probe(proxy, "reset")
    proxy.set_mode("reset")
    with pytest.raises(ConnectionResetError):  # an RST, not an orderly FIN (b"")
        raw.recv(1)
    raw.close()
    assert probe.disconnected.wait(5)
    assert proxy.mode == "latency" and proxy.describe()["connections_reset"] == 2
    _probe(proxy, "after-reset").close()
    probe.client.loop_stop()


def test_latency_delays_the_round_trip(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "lat")
    proxy.set_mode("latency", ms=150, jitter_ms=20)
    waits = _ack_latencies(probe, "t/lat", 0.0, n_max=3) + _ack_latencies(probe, "t/lat", 0.5)
    assert all(0.26 <= w < 2.0 for w in waits), f"each round trip carries 2 x 150+-20 ms: {waits}"
    probe.close()


def test_bandwidth_cap_slows_a_large_payload(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "bw")
    proxy.set_mode("bandwidth", bytes_per_s=100_000)
    t0 = time.monotonic()
    mid = probe.publish("t/bw", bytes(150_000))
    assert probe.wait_acked(mid, 10)
    elapsed = time.monotonic() - t0
    assert 1.3 <= elapsed < 4, f"150 kB at 100 kB/s took {elapsed:.2f} s"
    probe.close()


def test_stall_pauses_then_resumes_and_loses_nothing(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "stall")
    proxy.set_mode("stall", ms=300, every_ms=100, probability=1.0)
    waits = _ack_latencies(probe, "t/stall", 1.5)
    assert proxy.stalls >= 2
    assert max(waits) >= 0.1, f"no PUBACK waited for a stall: {waits}"
    assert min(waits) < 0.1, "between stalls traffic should flow"
    probe.close()


def test_stall_with_probability_zero_never_stalls(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "nostall")
    proxy.set_mode("stall", ms=300, every_ms=20, probability=0)
    _ack_latencies(probe, "t/nostall", 0.3)
    assert proxy.stalls == 0
    probe.close()


def test_flap_blackhole_delays_acks_in_down_periods(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "flap")
    proxy.set_mode("flap", up_ms=250, down_ms=250, down_mode="blackhole")
    waits = _ack_latencies(probe, "t/flap", 1.2)
    assert proxy.flaps >= 1 and proxy.mode == "flap"
    assert max(waits) >= 0.1, f"no PUBACK waited out a down period: {waits}"
    assert not probe.disconnected.is_set(), "a blackhole flap must not cut the connection"
    probe.close()


def test_flap_refuse_cuts_the_client_then_lets_it_back(proxy: FaultProxy) -> None:
    probe = _probe(proxy, "flap-refuse")
    proxy.set_mode("flap", up_ms=200, down_ms=300, down_mode="refuse")
    assert probe.disconnected.wait(3), "a refuse flap resets open connections"
    assert proxy.describe()["connections_reset"] >= 1
    probe.client.loop_stop()
    proxy.set_mode("pass")
    _probe(proxy, "flap-back").close()


@pytest.mark.parametrize("mode,params,error", [
    ("cable-cut", {}, "is not one of pass, blackhole, refuse"),
    ("latency", {"seconds": 1}, "unknown parameter"),
    ("latency", {"ms": -5}, "must be a number >= 0"),
    ("bandwidth", {"bytes_per_s": 0}, "must be > 0"),
    ("stall", {"probability": 2}, "probability must be in"),
    ("flap", {"down_mode": "sometimes"}, "is not blackhole or refuse"),
])
def test_bad_modes_are_rejected_with_what_is_allowed(mode: str, params: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_mode(mode, params)


# ---- the control socket ----------------------------------------------------------------------

def test_control_socket_switches_modes_and_reports_errors(proxy: FaultProxy) -> None:
    reply = send_control("lte", {"mode": "latency", "ms": 20})
    assert reply["ok"] and proxy.mode == "latency" and proxy.params["ms"] == 20
    bad = send_control("lte", {"mode": "teleport"})
    assert not bad["ok"] and "is not one of" in bad["error"]
    assert send_control("lte", {})["mode"] == "latency"  # an empty request just describes
    with pytest.raises(ValueError, match="no fault proxy named 'wifi'.*running: lte"):
        send_control("wifi", {})


def test_a_second_proxy_with_a_live_name_is_refused_a_stale_socket_is_taken(
        broker: Broker, proxy: FaultProxy, runtime: Path) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        FaultProxy(("127.0.0.1", broker.port), name="lte").start()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(runtime / "eth0.sock"))  # bound, never listening: a killed proxy's leftover
    stale.close()
    with FaultProxy(("127.0.0.1", broker.port), name="eth0"):
        assert send_control("eth0", {})["name"] == "eth0"


# ---- the command line ------------------------------------------------------------------------

def _sim(runtime: Path, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    env = {"MIDSHIFT_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "midshift.simulator", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_cli_proxy_is_controlled_by_proxy_set(broker: Broker, runtime: Path) -> None:
    env = {"MIDSHIFT_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "midshift.simulator", "proxy", "127.0.0.1:0", f"127.0.0.1:{broker.port}",
         "--name", "eth0", "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["name"] == "eth0" and info["mode"] == "pass"
        assert info["control"] == str(runtime / "eth0.sock")

        out = _sim(runtime, "proxy-set", "eth0", "blackhole")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["mode"] == "blackhole"
        port = int(info["listen"].rsplit(":", 1)[1])
        client = Probe("127.0.0.1", port, "cli")
        client.client.connect("127.0.0.1", port)
        client.client.loop_start()
        assert not client.connected.wait(0.5), "the CLI-set blackhole let a CONNACK through"

        out = _sim(runtime, "proxy-set", "eth0", "latency", "--ms", "80", "--jitter-ms", "5")
        assert out.returncode == 0, out.stderr
        assert client.connected.wait(5)
        assert json.loads(_sim(runtime, "proxy-show", "eth0").stdout)["params"] == {
            "ms": 80, "jitter_ms": 5}
        client.close()

        wrong = _sim(runtime, "proxy-set", "eth0", "latency", "--bytes-per-s", "5")
        assert wrong.returncode == 2 and "unknown parameter(s) bytes_per_s" in wrong.stderr
        bad = _sim(runtime, "proxy-set", "eth0", "warp")
        assert bad.returncode == 2 and "invalid choice: 'warp'" in bad.stderr
        assert "pass" in bad.stderr and "flap" in bad.stderr
        missing = _sim(runtime, "proxy-set", "nope", "pass")
        assert missing.returncode == 2 and "no fault proxy named 'nope'" in missing.stderr
        assert "running: eth0" in missing.stderr
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=10) == 0
    assert not (runtime / "eth0.sock").exists(), "the control socket must be removed"


def test_cli_help_and_bad_addresses(runtime: Path) -> None:
    helped = _sim(runtime, "proxy-set", "--help")
    assert helped.returncode == 0 and "latency    ms=50, jitter_ms=0" in helped.stdout
    bad = _sim(runtime, "proxy", "1883", "127.0.0.1:1883")
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr


class FakeDevice:
    """Stands in for an emulator to test the devices command's dispatch."""

    events: list[str] = []

    def __init__(self, name: str, cfg: dict[str, Any], ground_truth_dir: Path) -> None:
        self.name, self.cfg, self.ground_truth_dir = name, cfg, ground_truth_dir

    def start(self) -> None:
        if self.cfg.get("broken"):
            raise OSError("port 5021 is in use")
        self.events.append(f"start {self.name}")

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "serves": f"tcp://127.0.0.1:{self.cfg['port']}"}

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any], ground_truth_dir: Path) -> FakeDevice:
        if "port" not in cfg:
            raise ValueError("port: missing (a TCP port number)")
        return cls(name, cfg, ground_truth_dir)


def test_devices_config_dispatches_by_type_and_says_what_is_wrong(tmp_path: Path) -> None:
    registry = {"fake": "tests.integration.test_sim_network:FakeDevice",
                "ghost": "midshift.simulator.devices.no_such_module:Ghost"}
    conf = tmp_path / "lab.toml"
    conf.write_text('[devices.till1]\ntype = "fake"\nport = 5020\n'
                    '[devices.till2]\ntype = "fake"\nport = 5021\n')
    devices = load_devices(conf, tmp_path, registry)
    assert [(name, d.cfg) for name, d in devices.items()] == [("till1", {"port": 5020}),
                                                              ("till2", {"port": 5021})]
    assert devices["till1"].ground_truth_dir == tmp_path
    cases = [
        ('[devices.x]\ntype = "laser"\n', "devices.x.type: 'laser' is not one of fake, ghost"),
        ('[devices.x]\nport = 1\n', "devices.x.type: None is not one of"),
        ('[devices.x]\ntype = "ghost"\n', "device type 'ghost' is not available"),
        ('[devices.x]\ntype = "fake"\n', "devices.x: port: missing"),
        ('[devices.x\n', "not valid TOML"),
        ('title = "empty"\n', "no [devices.NAME] tables"),
    ]
    for text, error in cases:
        conf.write_text(text)
        with pytest.raises(UsageError, match=error.replace("[", r"\[").replace(".", r"\.")):
            load_devices(conf, tmp_path, registry)


def test_cli_devices_starts_describes_and_stops_them_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import midshift.simulator.__main__ as cli

    monkeypatch.setattr(cli, "DEVICE_TYPES", {"fake": "tests.integration.test_sim_network:FakeDevice"})
    monkeypatch.setattr(cli, "_wait_for_ctrl_c", lambda: FakeDevice.events.append("ctrl-c"))
    conf = tmp_path / "lab.toml"
    conf.write_text('[devices.a]\ntype = "fake"\nport = 5020\n'
                    '[devices.b]\ntype = "fake"\nport = 5021\n')
    FakeDevice.events = []
    assert cli.main(["devices", "--config", str(conf), "--ground-truth", str(tmp_path)]) == 0
    assert FakeDevice.events == ["start a", "start b", "ctrl-c", "stop b", "stop a"]
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"name": "a", "serves": "tcp://127.0.0.1:5020"}

    conf.write_text('[devices.a]\ntype = "fake"\nport = 5020\n'
                    '[devices.b]\ntype = "fake"\nport = 5021\nbroken = true\n')
    FakeDevice.events = []
    assert cli.main(["devices", "--config", str(conf), "--ground-truth", str(tmp_path)]) == 2
    assert FakeDevice.events == ["start a", "stop a"], "a failed start stops the started ones"
    assert "device b did not start: port 5021 is in use" in capsys.readouterr().err


def test_cli_devices_reports_an_unknown_type(runtime: Path) -> None:
    conf = runtime / "lab.toml"
    conf.write_text('[devices.gun]\ntype = "raygun"\n')
    out = _sim(runtime, "devices", "--config", str(conf))
    assert out.returncode == 2
    assert "devices.gun.type: 'raygun' is not one of canopen, modbus, opcua, scale, scanner" in out.stderr


# ---- shutdown --------------------------------------------------------------------------------

def test_proxy_and_broker_shut_down_without_leaks(runtime: Path) -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    broker = Broker(runtime / "b").start()
    pid, port = broker.pid, broker.port
    proxy = FaultProxy(("127.0.0.1", port), name="leak").start()
    probe = _probe(proxy, "leak")
    proxy_port = proxy.port
    proxy.stop()
    assert probe.disconnected.wait(5), "stopping the proxy cuts its connections"
    probe.client.loop_stop()
    broker.close()
    assert not Path(f"/proc/{pid}").exists(), "mosquitto still running"
    for p in (port, proxy_port):
        with socket.socket() as s:  # both ports can be bound again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
    assert {t.ident for t in threading.enumerate()} <= threads_before
    assert not (runtime / "leak.sock").exists()
