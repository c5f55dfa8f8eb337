"""The agent as a process of its own (``python -m midshift.firmware run``) reading the battery module
through the emulated USB-CAN adapter (slcan on a pty): faults on the node, and afterwards
the journal on disk holds every value the node put on the wire exactly once, and every EMCY.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from midshift.firmware.core.event import decode_body
from midshift.firmware.edges.flash import open_or_create_journal
from midshift.simulator.devices.canopen import EDS, BatteryModule
from midshift.simulator.devices.slcan_adapter import SlcanAdapter

ROOT = Path(__file__).resolve().parents[2]


def _site(tmp: Path, port: Path) -> Path:
    (tmp / "board.toml").write_text('[board]\nname = "test"\n[journal]\npath = "journal"\n'
                                    "segment_size = 65536\nsegment_count = 16\n")
    site = tmp / "site.toml"
    site.write_text(f"""board_config = "board.toml"
[gateway]
id = "gw-can"
site = "lab"
[devices.bms1]
type = "canopen"
interface = "slcan"
channel = "{port}"
node_id = 16
eds = "{EDS}"
tpdos = [1, 2]
heartbeat_ms = 100
sdo_timeout_s = 0.3
[[devices.bms1.objects]]
tag = "cycle_count"
index = 0x2020
poll_ms = 100
""")
    return site


def _wait_log(path: Path, text: str, count: int = 1, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while path.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count}: {path.read_text()[-3000:]}"
        time.sleep(0.05)


def test_agent_process_journals_every_value_once_through_faults(tmp_path: Path) -> None:
    (tmp_path / "truth").mkdir()
    node = BatteryModule("bms1", 16, f"proc-{os.getpid()}", seed=11, tpdo_period_ms=50,
                         ground_truth=tmp_path / "truth" / "bms1.jsonl")
    log_path = tmp_path / "agent.log"
    with SlcanAdapter(tmp_path / "canable", node) as adapter:
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "midshift.firmware", "run", "--config",
                 str(_site(tmp_path, adapter.link_path))], cwd=ROOT, stdout=out, stderr=out,
                env=os.environ | {"PYTHONPATH": str(ROOT)})
        try:
            _wait_log(log_path, "bms1: ok")
            node.emcy(0x4210, 0x08)
            node.garbage()
            node.reboot()
            _wait_log(log_path, "bms1: ok", 2)
            node.heartbeat(False)
            _wait_log(log_path, "bms1: disconnected (no heartbeat for")
            node.heartbeat(True)
            _wait_log(log_path, "bms1: ok", 3)
            node.command_contactor(True)
            sent = node.tpdos_sent  # a few more TPDOs and polls while the agent watches
            deadline = time.monotonic() + 10
            while node.tpdos_sent < sent + 10:
                assert time.monotonic() < deadline, "the node stopped sending"
                time.sleep(0.01)
            node.silence(True)  # the node stops sending; the agent drains its queue
            _wait_log(log_path, "bms1: disconnected", 2)
        finally:
            proc.terminate()
            proc.wait(20)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    journal = open_or_create_journal(tmp_path / "journal", 65536, 16, "gw-can")
    events = [decode_body(r.body) for r in journal.records()]
    journal.close()
    got: dict[str, list] = {}
    for e in events:
        if e["source"] != "bms1":
            continue
        key = e["data"]["tag"] if e["kind"] == "canopen" else "(emcy)"
        got.setdefault(key, []).append(e["data"]["value"] if e["kind"] == "canopen"
                                       else e["data"]["code"])
    want: dict[str, list] = {}
    for t in node.truth():
        if t["kind"] in ("canopen", "emcy"):
            key = t["tag"] if t["kind"] == "canopen" else "(emcy)"
            want.setdefault(key, []).append(t["value"])
    assert got == want
    assert got["(emcy)"] == [0x4210] and got["cycle_count"] == [0, 1]
    text = log_path.read_text()
    assert "node 16 booted" in text and "Traceback" not in text, text[-3000:]
