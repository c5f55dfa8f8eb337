"""The status never lies, end to end: a real ``python -m midshift.firmware run`` process with three
devices that are not there, mosquitto, and ``python -m midshift.host_tools status --once`` judging
the retained status as a monitoring plugin. The ledger is away at first (records wait: the
``no_ack`` alarm, critical), comes (acks: only ``device_down`` is left, a warning naming
the three devices), then the agent is stopped with SIGTERM (its own retained ``offline``:
critical, "stopped cleanly"). In process: the same dead devices light the fault LED."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from midshift.firmware.agent import Agent
from midshift.firmware.edges.preflight import load_checked
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.host_tools.status_table import StatusBoard, StatusSubscriber
from midshift.simulator.broker import Broker
from midshift.simulator.lab import KEY, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOWN = ["plc1", "scan1", "scan2"]
FAULT_PIN = 23  # midshift/board_configs/sim.toml


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_site(d: Path, broker_port: int | None) -> Path:
    """A gateway on the sim board whose three devices are not there: two scanners on ttys
    that do not exist, a PLC on a port nobody listens on."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "gw.key").write_text(KEY.hex())
    text = f"""board_config = "sim"
[gateway]
id = "gw-s"
site = "lab"
key_file = "gw.key"
[journal]
path = "journal"
[status]
period_s = 0.5
device_down_s = 1
no_ack_s = 2
[devices.scan1]
type = "scanner"
port = "{d / 'no-tty-1'}"
[devices.scan2]
type = "scanner"
port = "{d / 'no-tty-2'}"
[devices.plc1]
type = "modbus"
host = "127.0.0.1"
port = {_closed_port()}
poll_ms = 200
stale_s = 1
[[devices.plc1.registers]]
tag = "count"
address = 0
type = "uint32"
"""
    if broker_port is not None:
        text += f'[uplinks.eth]\nbroker = "mqtt://127.0.0.1:{broker_port}"\n'
    site = d / "site.toml"
    site.write_text(text)
    return site


def status_once(broker: Broker, *more: str) -> tuple[int, list[str]]:
    out = subprocess.run([sys.executable, "-m", "midshift.host_tools", "status", "--broker", broker.url,
                          "--once", "--wait-s", "5", *more], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    return out.returncode, out.stdout.splitlines()


def test_outage_devices_down_and_a_clean_stop_are_each_told(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        site = write_site(tmp_path / "gw", broker.port)
        board = StatusBoard()
        sub = StatusSubscriber(board, broker.url, "midshift/v1/+/+/status").start()
        agent = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config", str(site),
                                  "--log-level", "WARNING"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ledger = None
        store = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
        try:
            def doc() -> dict:
                return board.get("gw-s") or {}

            # No ledger yet: the device incidents wait, unacknowledged.
            assert wait_for(lambda: "no_ack" in (doc().get("alarms") or ()) and
                            doc().get("devices_down") == DOWN, 30), doc()
            d = doc()
            assert d["devices_in_error"] == 3 and d["alarm_detail"]["device_down"] == \
                "plc1,scan1,scan2"
            assert d["oldest_unacked_age_s"] >= 2 and d["boot_id"] and d["version"]
            code, lines = status_once(broker, "--gateway", "gw-s")
            assert code == 2, lines
            assert lines[0].startswith("CRITICAL: gw-s alarm no_ack (no ack for ")
            assert "alarm device_down (plc1,scan1,scan2)" in lines[0]
            # The ledger comes: acks clear no_ack; the devices are still down.
            ledger = LedgerService(store, {"gw-s": KEY}, broker.url).start()
            assert wait_for(lambda: doc().get("alarms") == ["device_down"], 30), doc()
            code, lines = status_once(broker, "--gateway", "gw-s")
            assert (code, lines[0]) == (1, "WARNING: gw-s alarm device_down (plc1,scan1,scan2)")
            row = lines[2].split()
            assert row[:3] == ["gw-s", "lab", "online"] and row[6] == "3"  # DEV-ERR
            boot = doc()["boot_id"]
            # SIGTERM: a clean stop, no last will from the broker; the agent says offline.
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, agent.stderr.read() if agent.stderr else ""
            assert wait_for(lambda: doc().get("state") == "offline", 15), doc()
            d = doc()
            assert d["reason"] == "stopped" and d["boot_id"] == boot and d["ts_ms"] > 0
            code, lines = status_once(broker, "--gateway", "gw-s")
            assert code == 2 and lines[0].startswith("CRITICAL: gw-s offline (stopped cleanly "), \
                lines
            assert lines[2].split()[:3] == ["gw-s", "lab", "offline"]
        finally:
            sub.stop()
            if ledger is not None:
                ledger.stop()
            store.close()
            if agent.poll() is None:
                agent.kill()
                agent.wait(30)


def test_a_retained_online_status_is_judged_by_its_own_age(tmp_path: Path) -> None:
    """What a gateway that died without the broker noticing leaves behind: a retained
    ``online`` from long ago. Judged by its ``ts_ms``, it is stale (critical); a status
    without one cannot be aged (unknown); a provisioned gateway never seen is listed."""
    import paho.mqtt.publish as publish
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "site.json").write_text(json.dumps(
        {"site": "lab", "gateways": {"gw-old": {}, "gw-never": {}, "gw-gone": {"revoked": 1}}}))
    with Broker(tmp_path / "broker") as broker:
        old = {"v": 1, "gateway": "gw-old", "site": "lab", "state": "online",
               "ts_ms": 1700000000000, "uplink": "primary", "backlog_records": 0}
        publish.single("midshift/v1/lab/gw-old/status", json.dumps(old), qos=1, retain=True,
                       hostname="127.0.0.1", port=broker.port)
        code, lines = status_once(broker, "--site-dir", str(site_dir))
        assert code == 2, lines
        assert lines[0].startswith("CRITICAL: gw-old silent for ")
        assert lines[0].endswith("; never seen: gw-never")
        assert lines[2].split()[:3] == ["gw-old", "lab", "stale"]
        unstamped = {k: v for k, v in old.items() if k != "ts_ms"}
        publish.single("midshift/v1/lab/gw-old/status", json.dumps(unstamped), qos=1,
                       retain=True, hostname="127.0.0.1", port=broker.port)
        code, lines = status_once(broker, "--gateway", "gw-old")
        assert (code, lines[0]) == (3, "UNKNOWN: gw-old retained status without ts_ms: its "
                                       "age cannot be told")
        code, lines = status_once(broker, "--gateway", "gw-never", "--wait-s", "1")
        assert (code, lines[0]) == (3, "UNKNOWN: gw-never: no status on this broker (never "
                                       "seen)")


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    saved = Device.pin_factory
    f = MockFactory()
    try:
        yield f
    finally:
        f.reset()
        Device.pin_factory = saved


def test_devices_down_light_the_fault_led(tmp_path: Path, factory: MockFactory) -> None:
    agent = Agent(load_checked(write_site(tmp_path / "gw", None), need_devices=False),
                  pin_factory=factory).start()
    try:
        assert wait_for(lambda: agent.snapshot()["devices_down"] == DOWN, 15)
        fault = factory.pin(FAULT_PIN)
        assert isinstance(fault, MockPin)
        fault.clear_states()
        assert wait_for(lambda: len(fault.states) > 4, 5), "the fault LED does not blink"
        snap = agent.snapshot()
        assert snap["alarms"] == ["device_down"] and snap["devices_in_error"] == 3
    finally:
        agent.stop()
