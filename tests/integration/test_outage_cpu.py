"""A silent outage costs no CPU: a real agent process (``python -m midshift.firmware run``) whose
only uplink is blackholed (fault proxy) with batches in flight stays under a few percent
of a core and keeps polling its Modbus PLC at the configured rate, then delivers what it
journaled meanwhile. (The issue measured a full core from the forwarder spinning on
overdue acks with no uplink; 10 s here stand for its minute: the batches in flight pass
their 5 s ack deadline inside the window, and a spin would show as ~100% against the
5% allowed, a second of CPU against half a second.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from midshift.simulator.devices.modbus import ModbusPLC
from midshift.simulator.lab import KEY, Lab, wait_for

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = 10.0
BEFORE_S = 3.0  # the polling rate before the outage: ~30 polls at 100 ms


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _site(tmp: Path, uplink_port: int, plc_port: int) -> Path:
    (tmp / "gw.key").write_text(KEY.hex())
    (tmp / "board.toml").write_text("""
[board]
name = "test board"
[journal]
path = "journal"
segment_size = 65536
segment_count = 32
""")
    site = tmp / "site.toml"
    site.write_text(f"""
board_config = "board.toml"
[gateway]
id = "gw-t"
site = "lab"
key_file = "{tmp / 'gw.key'}"
[devices.plc1]
type = "modbus"
host = "127.0.0.1"
port = {plc_port}
poll_ms = 100
[[devices.plc1.registers]]
tag = "count"
address = 0
type = "uint32"
[uplinks.up0]
broker = "mqtt://127.0.0.1:{uplink_port}"
priority = 10
""")
    return site


def _measure(proc: subprocess.Popen, plc: ModbusPLC, seconds: float) -> tuple[float, float]:
    """(share of one core, PLC polls per second) of the agent over ``seconds``."""
    cpu0, polls0, t0 = _cpu_s(proc.pid), plc.requests, time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return (_cpu_s(proc.pid) - cpu0) / wall, (plc.requests - polls0) / wall


def test_an_agent_with_its_only_uplink_blackholed_burns_no_cpu_and_keeps_polling(
        tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=1)
    regs = [{"tag": "count", "address": 0, "type": "uint32", "behaviour": "counter",
             "period_ms": 50}]
    proc = None
    try:
        with ModbusPLC("plc1", regs) as plc:
            site = _site(tmp_path, lab.proxies[0].address[1], plc.port)
            proc = subprocess.Popen(
                [sys.executable, "-m", "midshift.firmware", "run", "--config", str(site)], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert wait_for(lambda: lab.ledger_count() >= 20, 20), "nothing forwarded"
            cpu_before, rate_before = _measure(proc, plc, BEFORE_S)
            lab.proxies[0].set_mode("blackhole")  # silent: no reset, no refusal
            time.sleep(4.0)  # keepalive notices; batches in flight pass their ack deadline
            stuck = lab.ledger_count()
            cpu, rate = _measure(proc, plc, OUTAGE_S)
            assert proc.poll() is None
            assert lab.ledger_count() == stuck  # the outage was real
            print(f"before: {cpu_before:.1%} of a core, {rate_before:.2f} polls/s; "
                  f"blackholed: {cpu:.1%}, {rate:.2f} polls/s")
            assert cpu < 0.05, f"the agent burned {cpu:.1%} of a core during the outage"
            assert rate >= 0.9 * rate_before and rate >= 8.0, (rate, rate_before)
            lab.proxies[0].set_mode("pass")
            assert wait_for(lambda: lab.ledger_count() > stuck + OUTAGE_S * 10, 30), (
                "the outage's telemetry never arrived")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        lab.close()
