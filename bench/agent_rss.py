"""Resident memory of a real agent process: ``python -m midshift.firmware run`` with a serial
scanner, a Modbus PLC and two uplinks configured, against emulated devices and a local
mosquitto, read from /proc after it has settled.

Drivers not yet on this build are configured disabled, and the result says which
(``rss_devices``), so the figure is never passed off as covering what did not run.

``rss_mb`` is measured with the OpenMetrics endpoint (``[metrics] bind``) and the status
page (``[status_page] bind``) on, each fetched once before the reading, the heavier of the
two ways a gateway runs (issue 18 bounds it at 40 MB); ``rss_mb_metrics_off`` is the same
agent without either, measured after.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from midshift.simulator.broker import Broker

ROOT = Path(__file__).resolve().parents[1]
IDLE_AGENT = """
import sys, time
from pathlib import Path
from midshift.firmware.agent import Agent
from midshift.simulator.lab import lab_config
agent = Agent(lab_config(Path(sys.argv[1]), [int(sys.argv[2])] * 2)).start()
time.sleep(60)
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure_rss_mb(tmp: Path, settle_s: float = 5.0) -> dict[str, Any]:
    on = tmp / "metrics-on"
    off = tmp / "metrics-off"
    on.mkdir(exist_ok=True)
    off.mkdir(exist_ok=True)
    out = _measure(on, settle_s, metrics=True)
    out["rss_mb_metrics_off"] = _measure(off, settle_s, metrics=False)["rss_mb"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(tmp: Path, settle_s: float, metrics: bool) -> dict[str, Any]:
    have = {m: importlib.util.find_spec(f"midshift.firmware.edges.{m}") is not None
            for m in ("scanner", "modbus")}
    (tmp / "gw.key").write_text("11" * 32)
    from midshift.simulator.devices.modbus import ModbusPLC
    plc = ModbusPLC("plc1", [{"tag": "count", "address": 0, "type": "uint32",
                              "behaviour": "counter", "period_ms": 200}]).start()
    plc_port = plc.port
    with Broker(tmp / "broker") as broker:
        devices = ""
        if have["scanner"]:
            devices += f'[devices.scanner1]\ntype = "scanner"\nport = "{tmp / "no-such-tty"}"\n'
        if have["modbus"]:
            devices += ('[devices.plc1]\ntype = "modbus"\nhost = "127.0.0.1"\n'
                        f'port = {plc_port}\npoll_ms = 100\n'
                        '[[devices.plc1.registers]]\ntag = "count"\naddress = 0\n'
                        'type = "uint32"\n')
        if devices:
            have_gpio = importlib.util.find_spec("midshift.firmware.edges.gpio") is not None
            board = (ROOT / "midshift" / "board_configs" / "sim.toml").read_text()
            if not have_gpio:  # no status lights on this build yet: a board without pins
                board = board.replace("[pins]", "[unused_pins]").replace("[unused_pins]\n", "")
                board = "\n".join(x for x in board.splitlines()
                                   if not x.split("=")[0].strip().endswith(("_led", "_button")))
            (tmp / "board.toml").write_text(board)
            port = _free_port()
            page_port = _free_port()
            if metrics:
                devices += (f'[metrics]\nbind = "127.0.0.1:{port}"\n'
                            f'[status_page]\nbind = "127.0.0.1:{page_port}"\n')
            site = tmp / "site.toml"
            site.write_text(f"""
board_config = "board.toml"
[gateway]
id = "gw-rss"
site = "bench"
key_file = "gw.key"
[journal]
path = "journal"
{devices}
[uplinks.eth]
broker = "mqtt://127.0.0.1:{broker.port}"
priority = 10
[uplinks.lte]
broker = "mqtt://127.0.0.1:{broker.port}"
priority = 20
""")
            cmd = [sys.executable, "-m", "midshift.firmware", "run", "--config", str(site),
                   "--log-level", "WARNING"]
        else:  # no driver on this build yet: the same agent, devices disabled
            cmd = [sys.executable, "-c", IDLE_AGENT, str(tmp), str(broker.port)]
            metrics = False
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(settle_s)
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                plc.stop()
                return {"rss_mb": None, "rss_error": err.strip()[-300:]}
            scraped = paged = 0
            if metrics:  # as Prometheus would: the collectors and the HTTP thread run
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=10) as resp:
                    scraped = len(resp.read())
                with urllib.request.urlopen(f"http://127.0.0.1:{page_port}/",
                                            timeout=10) as resp:
                    paged = len(resp.read())
            rss = _rss_kb(proc.pid) / 1024
        finally:
            proc.terminate()
            proc.wait(10)
    plc.stop()
    return {"rss_mb": round(rss, 1), "rss_metrics": metrics, "rss_scrape_bytes": scraped,
            "rss_page_bytes": paged,
            "rss_devices": {"scanner": have["scanner"], "modbus": have["modbus"]}}
