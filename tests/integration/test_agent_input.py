"""The agent's input side from a TOML config: emulated scanner and scale on ptys, the real
drivers, the pipeline and the journal. Every proper scan and stable weight is journaled
exactly once, card numbers are masked before they reach flash, a full journal refuses
transactions and says so, and `python -m midshift.firmware check` names the file and key of a bad
config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from midshift.firmware.agent import Agent
from midshift.firmware.core.event import decode_body
from midshift.firmware.edges.config_file import load_config
from midshift.simulator.devices.scale import Scale
from midshift.simulator.devices.scanner import BarcodeScanner
from midshift.simulator.lab import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _site(tmp: Path, extra: str = "", segments: int = 64, pins: str = "") -> Path:
    board = tmp / "board.toml"
    board.write_text(f"""
{pins}
[board]
name = "test board"
[serial]
scanner = "{tmp / 'scanner1'}"
scale = "{tmp / 'scale1'}"
[journal]
path = "journal"
segment_size = 4096
segment_count = {segments}
""")
    site = tmp / "site.toml"
    site.write_text(f"""
board_config = "board.toml"
[gateway]
id = "gw-in"
site = "lab"
[devices.scanner1]
type = "scanner"
port = "scanner"
inter_char_timeout_ms = 80
[devices.scale1]
type = "scale"
port = "scale"
poll_ms = 50
{extra}
""")
    return site


def _journaled(agent: Agent) -> list[dict]:
    assert agent.journal is not None
    return [decode_body(r.body) for r in agent.journal.journal.records()]


def test_scans_and_stable_weights_are_journaled_once_with_cards_masked(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    with BarcodeScanner("scanner1", tmp_path / "scanner1") as scanner, \
            Scale("scale1", tmp_path / "scale1") as scale:
        agent = Agent(cfg).start()
        try:
            assert scanner.wait_client(5) and scale.wait_client(5)
            sent = [scanner.scan() for _ in range(20)]
            sent.append(scanner.scan("4111111111111111"))  # a card number typed as a scan
            scanner.garbage(12)  # rejected, never journaled
            scale.place(1234.5)
            assert wait_for(lambda: sum(e["kind"] == "scan" for e in _journaled(agent)) == 21
                            and any(e["kind"] == "weight" for e in _journaled(agent)), 10)
            events = _journaled(agent)
            codes = [e["data"]["code"] for e in events if e["kind"] == "scan"]
            assert codes == sent[:-1] + ["411111******1111"]
            raw = b"".join((tmp_path / "journal").glob("seg-*.dat") and
                           [p.read_bytes() for p in (tmp_path / "journal").glob("seg-*.dat")])
            assert b"4111111111111111" not in raw  # never written to flash
            weights = [e["data"] for e in events if e["kind"] == "weight"]
            assert len(weights) == 1 and weights[0]["stable"] is True
            snap = agent.snapshot()
            states = {d["name"]: d for d in snap["devices"]}
            assert states["scanner1"]["counters"]["events"] == 21
            assert states["scanner1"]["counters"].get("rejected", 0) >= 1
            assert snap["pipeline"]["masked"] == 1
        finally:
            agent.stop()


PINS = """[pins]
uplink_led = 17
backlog_amber_led = 27
backlog_red_led = 22
fault_led = 23
"""


def test_a_full_journal_refuses_scans_and_lights_the_red_led(tmp_path: Path) -> None:
    from gpiozero.pins.mock import MockFactory

    cfg = load_config(_site(tmp_path, segments=2, pins=PINS))  # 8 KiB of ring: fills fast
    factory = MockFactory()
    with BarcodeScanner("scanner1", tmp_path / "scanner1") as scanner, \
            Scale("scale1", tmp_path / "scale1"):
        agent = Agent(cfg, pin_factory=factory).start()
        try:
            assert scanner.wait_client(5)
            for _ in range(120):
                scanner.scan()
            drv = next(d for d in agent.drivers if d.name == "scanner1")
            assert wait_for(lambda: drv.status.counter("refused_journal_full") > 0, 10)
            assert agent.snapshot()["journal_refusing_txn"] is True
            assert "journal full" in (drv.status.last_error or "")
            assert wait_for(lambda: factory.pin(22).state, 3)  # red: refusing transactions
            assert factory.pin(27).state  # amber: records wait for the ledger
            assert not factory.pin(17).state  # no uplink configured
        finally:
            agent.stop()


@pytest.mark.parametrize("extra, key", [
    ("baudrate = 9601", "devices.scale1.baudrate"),
    ("colour = 'red'", "devices.scale1.colour"),
    ("[devices.plc9]\ntype = 'printer'", "devices.plc9.type"),
])
def test_check_names_the_file_and_the_key(tmp_path: Path, extra: str, key: str) -> None:
    site = _site(tmp_path, extra)
    r = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--config", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith(f"config error: {site}: {key}: "), r.stderr


def test_check_prints_what_would_run(tmp_path: Path) -> None:
    site = _site(tmp_path)
    r = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--config", str(site),
                        "--json", "--offline"],  # no scanner or scale on this machine
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(d["name"], d["type"], d["class"]) for d in doc["devices"]] == [
        ("scanner1", "scanner", "txn"), ("scale1", "scale", "txn")]
    assert doc["devices"][0]["port"] == str(tmp_path / "scanner1")


def test_a_bad_pin_in_the_board_file_names_that_file(tmp_path: Path) -> None:
    site = _site(tmp_path, pins=PINS.replace("fault_led = 23", "fault_led = 22"))
    r = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--config", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith(f"config error: {tmp_path / 'board.toml'}: pins.fault_led: 22 "
                               "is already pins.backlog_red_led"), r.stderr


def test_a_modbus_plc_from_the_site_file_is_journaled_as_telemetry(tmp_path: Path) -> None:
    from midshift.firmware.core.record import TELEMETRY
    from midshift.simulator.devices.modbus import ModbusPLC

    regs = [{"tag": "count", "address": 0, "type": "uint32", "behaviour": "counter",
             "period_ms": 100}]
    with ModbusPLC("plc1", regs) as plc, BarcodeScanner("scanner1", tmp_path / "scanner1"), \
            Scale("scale1", tmp_path / "scale1"):
        site = _site(tmp_path, f"""
[devices.plc1]
type = "modbus"
host = "127.0.0.1"
port = {plc.port}
poll_ms = 30
[[devices.plc1.registers]]
tag = "count"
address = 0
type = "uint32"
""")
        agent = Agent(load_config(site)).start()
        try:
            assert wait_for(lambda: sum(e["kind"] == "register"
                                        for e in _journaled(agent)) >= 5, 10)
            assert agent.journal is not None
            recs = [r for r in agent.journal.journal.records()
                    if decode_body(r.body)["source"] == "plc1"]
        finally:
            agent.stop()
        values = [decode_body(r.body)["data"]["value"] for r in recs]
        assert values == sorted(set(values))  # a counter: each change once, rising
        assert all(r.cls == TELEMETRY for r in recs)
        served = [e["value"] for e in plc.truth() if e["kind"] == "register"]
        assert values == served[:len(values)]


def test_an_opcua_plc_from_the_site_file_is_journaled_through_a_restart(tmp_path: Path) -> None:
    from midshift.simulator.devices.opcua import OpcUaPLC

    plc = OpcUaPLC("line1", port=0, period_ms=60,
                   variables=[{"tag": "counter", "type": "counter", "start": 1}]).start()
    try:
        with BarcodeScanner("scanner1", tmp_path / "scanner1"), Scale("scale1", tmp_path / "scale1"):
            site = _site(tmp_path, f"""
[devices.line1]
type = "opcua"
endpoint = "{plc.endpoint}"
publishing_ms = 20
timeout_s = 1.0
[[devices.line1.nodes]]
tag = "counter"
node_id = "{plc.node_id('counter')}"
""")
            agent = Agent(load_config(site)).start()
            try:
                def counters() -> list[int]:
                    return [e["data"]["value"] for e in _journaled(agent)
                            if e["source"] == "line1"]
                assert wait_for(lambda: len(counters()) >= 3, 15)
                plc.restart()  # the agent re-subscribes by itself
                n = len(counters())
                assert wait_for(lambda: len(counters()) >= n + 3, 20)
                values = counters()
            finally:
                agent.stop()
    finally:
        plc.stop()
    assert values == sorted(set(values))  # each value once, in order, across the restart
