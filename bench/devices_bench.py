"""Device protocols benchmark (issue 19): Modbus RTU polls on one line, and the agent's
memory with the shop-floor protocols configured.

- ``rtu_polls_per_s``: two agent drivers (``midshift/firmware/edges/modbus.py``) polling units 1
  and 2 on one emulated 115,200-baud RS-485 line (``midshift/simulator/devices/modbus_rtu.py``:
  pymodbus's serial server on a pty, each chunk held for its wire time at 115,200 baud,
  8N2), each reading one 4-register block (a uint32 and a float32) every 10 ms, the
  shortest ``poll_ms``. Counted: answers the units served while the drivers ran, per
  second. Beside it ``rtu_polls_offered_per_s`` (what the two poll periods ask for),
  ``rtu_wire_limit_per_s`` (request, answer and two inter-frame gaps at the line's
  speed: no master can do better), and the baseline ``rtu_polls_per_s_bare``: one bare
  pymodbus serial client reading the same blocks back to back on the same line, no
  driver, no turns, no events. ``rtu_events`` is how many register events the drivers
  emitted (the counters move every poll).
- ``rss_mb``: resident memory of a real agent process (``python -m midshift.firmware run``) with a
  Modbus TCP PLC, two Modbus RTU meters on one pty line, a CANopen battery module (slcan
  on a pty) and an OPC UA cell configured
  and answering (emulators in this process), one uplink to a local mosquitto; read from
  /proc after ``settle_s``. ``rss_protocols`` says which protocols were configured and
  whether the agent's device was ``ok`` (its OpenMetrics ``midshift_device_state``).
  ``rss_mb_without_opcua``: the same agent without the OPC UA cell, measured after. The
  gap is asyncua's import (its generated type system and ``cryptography``: about 40 MB
  in a bare interpreter here), not the driver's state. Target <= 40 MB.

- ``canopen_tpdo_per_s`` and its companions: ``bench/canopen_rate.py`` (one battery
  module on python-can's virtual bus offered 2,500 TPDOs a second, what the agent
  journaled). The ``rss_mb`` agent also reads a CANopen battery module behind an emulated
  USB-CAN adapter (slcan on a pty).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.agent_rss import _free_port, _rss_kb
from bench.canopen_rate import tpdo_per_s
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.modbus import ModbusDriver
from midshift.firmware.edges.modbus_rtu import frame_gap_s
from midshift.simulator.broker import Broker
from midshift.simulator.devices.canopen import EDS, BatteryModule
from midshift.simulator.devices.modbus import ModbusPLC
from midshift.simulator.devices.modbus_rtu import RtuLinePLC, char_time_s
from midshift.simulator.devices.opcua import OpcUaPLC
from midshift.simulator.devices.slcan_adapter import SlcanAdapter

ROOT = Path(__file__).resolve().parents[1]
BAUD = 115200
LINE = {"baudrate": BAUD, "parity": "N", "stop_bits": 2}
POLL_MS = 10
REGS = [{"tag": "energy_wh", "address": 0, "type": "uint32", "behaviour": "counter",
         "period_ms": 10},
        {"tag": "power_w", "address": 2, "type": "float32", "behaviour": "random_walk",
         "value": 4200.0, "period_ms": 10}]
AGENT_REGS = [{k: r[k] for k in ("tag", "address", "type")} for r in REGS]
REQUEST_BYTES = 8  # unit, function, address, count, CRC
ANSWER_BYTES = 5 + 2 * 4  # unit, function, byte count, 4 registers, CRC


def wire_limit_per_s() -> float:
    """Transactions per second the wire allows: both frames and two silences."""
    char_s = char_time_s(BAUD, LINE["parity"], LINE["stop_bits"])
    gap_s = frame_gap_s(BAUD, LINE["parity"], LINE["stop_bits"])
    return 1 / ((REQUEST_BYTES + ANSWER_BYTES) * char_s + 2 * gap_s)


def _line(tmp: Path) -> RtuLinePLC:
    return RtuLinePLC("rs485", tmp / "rs485", [ModbusPLC(f"m{u}", REGS, unit_id=u)
                                              for u in (1, 2)], **LINE)


def measure_rtu(tmp: Path, seconds: float) -> dict[str, Any]:
    with _line(tmp) as line:
        events = [0]
        lock = threading.Lock()

        def sink(_event: Any) -> None:
            with lock:
                events[0] += 1

        drivers = []
        for u in (1, 2):
            table = {"port": str(line.link_path), "unit_id": u, **LINE, "poll_ms": POLL_MS,
                     "timeout_s": 0.2, "registers": AGENT_REGS}
            cfg = ModbusDriver.validate_config(f"m{u}", table, f"devices.m{u}")
            drivers.append(ModbusDriver(f"m{u}", cfg, sink, SystemClock()).start())
        time.sleep(0.5)  # ports open, first polls done
        before = sum(line.requests(u) for u in (1, 2))
        events_before = events[0]
        time.sleep(seconds)
        served = sum(line.requests(u) for u in (1, 2)) - before
        emitted = events[0] - events_before
        for drv in drivers:
            drv.stop()
        errors = {d.name: {k: v for k, v in d.status.as_dict()["counters"].items()
                           if k in ("timeouts", "crc_errors", "poll_failures")}
                  for d in drivers}
    with _line(tmp) as line:  # the baseline: a bare client, back to back
        from pymodbus.client import ModbusSerialClient
        client = ModbusSerialClient(str(line.link_path), baudrate=BAUD, parity="N",
                                    stopbits=2, timeout=0.2, retries=0)
        client.connect()
        bare = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rr = client.read_holding_registers(0, count=4, device_id=1 + bare % 2)
            bare += not rr.isError()
        client.close()
    return {"rtu_polls_per_s": round(served / seconds, 1),
            "rtu_polls_offered_per_s": 2 * 1000 / POLL_MS,
            "rtu_wire_limit_per_s": round(wire_limit_per_s(), 1),
            "rtu_polls_per_s_bare": round(bare / seconds, 1),
            "rtu_ratio_to_bare": round(served / bare, 2) if bare else None,
            "rtu_events": emitted, "rtu_errors": errors, "rtu_baudrate": BAUD}


def measure_rss(tmp: Path, settle_s: float, opcua: bool = True) -> dict[str, Any]:
    tmp.mkdir()
    (tmp / "gw.key").write_text("11" * 32)
    tcp = ModbusPLC("plc1", REGS).start()
    cell = OpcUaPLC("cell1", port=0, period_ms=200).start()
    line = _line(tmp).start()
    can = SlcanAdapter(tmp / "can0", BatteryModule("bms1", 16, f"rss-{id(tmp):x}",
                                                   tpdo_period_ms=500)).start()
    try:
        with Broker(tmp / "broker") as broker:
            devices = (f'[devices.plc1]\ntype = "modbus"\nhost = "127.0.0.1"\nport = {tcp.port}\n'
                       f"poll_ms = 100\nregisters = {_toml_regs()}\n")
            for u in (1, 2):
                devices += (f'[devices.meter{u}]\ntype = "modbus"\nport = "{line.link_path}"\n'
                            f'unit_id = {u}\nbaudrate = {BAUD}\nparity = "N"\nstop_bits = 2\n'
                            f"poll_ms = 100\nregisters = {_toml_regs()}\n")
            devices += (f'[devices.bms1]\ntype = "canopen"\ninterface = "slcan"\n'
                        f'channel = "{tmp / "can0"}"\nnode_id = 16\neds = "{EDS}"\n'
                        "tpdos = [1, 2]\nheartbeat_ms = 200\n")
            devices += "" if not opcua else (f'[devices.cell1]\ntype = "opcua"\nendpoint = "{cell.endpoint}"\n'
                        "publishing_ms = 100\nnodes = [\n" + "".join(
                            f'  {{ tag = "{v}", node_id = "ns=2;s=cell1.{v}" }},\n'
                            for v in ("counter", "temperature", "status")) + "]\n")
            board = (ROOT / "midshift" / "board_configs" / "sim.toml").read_text()
            (tmp / "board.toml").write_text(board)
            metrics_port = _free_port()
            site = tmp / "site.toml"
            site.write_text(f'board_config = "board.toml"\n[gateway]\nid = "gw-rss"\n'
                            f'site = "bench"\nkey_file = "gw.key"\n[journal]\npath = "journal"\n'
                            f"{devices}[uplinks.eth]\n"
                            f'broker = "mqtt://127.0.0.1:{broker.port}"\npriority = 10\n'
                            f"[status]\nperiod_s = 5.0\n[metrics]\n"
                            f'bind = "127.0.0.1:{metrics_port}"\n')
            proc = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config",
                                     str(site), "--log-level", "WARNING"], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                time.sleep(settle_s)
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    return {"rss_mb": None, "rss_error": err.strip()[-300:]}
                rss = _rss_kb(proc.pid) / 1024
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                            timeout=10) as resp:
                    metrics = resp.read().decode()
            finally:
                proc.terminate()
                proc.wait(10)
            ok = {d: f'midshift_device_state{{device="{d}",state="ok"}} 1' in metrics
                  for d in ("plc1", "meter1", "meter2", "cell1", "bms1")}
            answered = {"modbus_tcp": ok["plc1"], "modbus_rtu": ok["meter1"] and ok["meter2"],
                        "opcua": ok["cell1"] if opcua else None, "canopen": ok["bms1"]}
    finally:
        can.stop()
        line.stop()
        cell.stop()
        tcp.stop()
    return {"rss_mb": round(rss, 1), "rss_protocols": answered,
            "rss_metrics": True}


def _toml_regs() -> str:
    return "[" + ", ".join(f'{{ tag = "{r["tag"]}", address = {r["address"]}, '
                           f'type = "{r["type"]}" }}' for r in AGENT_REGS) + "]"


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    seconds = 2.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="midshift-devices-") as d:
        tmp = Path(d)
        say(f"RTU: two units on one {BAUD}-baud line, {seconds:.0f} s each way")
        (tmp / "rtu").mkdir()
        out = measure_rtu(tmp / "rtu", seconds)
        say(f"CANopen: 2,500 TPDOs a second offered for {seconds:.0f} s")
        out |= tpdo_per_s(seconds)
        settle_s = 4.0 if quick else 8.0
        say("RSS: an agent with Modbus TCP, Modbus RTU, CANopen and OPC UA configured")
        out |= measure_rss(tmp / "rss", settle_s)
        say("RSS: the same agent without OPC UA")
        out["rss_mb_without_opcua"] = measure_rss(tmp / "rss-no-opcua", settle_s,
                                                  opcua=False)["rss_mb"]
    return out
