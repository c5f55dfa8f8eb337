"""Reload and commands end to end: a real ``python -m midshift.firmware run`` for gw-01 of a
provisioned site, on mosquitto configured only from what ``provision broker`` generated
(TLS, the ACL), with the reference ledger; ``python -m midshift.host_tools command`` signs as the
ledger's identity, sends, and waits for the answer in the gateway's retained status.

SIGHUP and the ``reload-config`` command share one path: a bad site file is refused (the
agent keeps running on the old one, the alarm ``config_rejected`` carries the error), a
good one restarts the agent's loops with it (the status page's refresh shows which
config runs)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.host_tools.__main__ import main as host_tools
from midshift.simulator.broker import free_port
from midshift.simulator.lab import wait_for
from tests.integration.test_generated_broker import lab  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def site_text(rig: dict[str, Any], page_port: int, refresh_s: int, extra: str = "") -> str:
    s = rig["site"]
    g = s / "gateways/gw-01"
    return f"""board_config = "sim"
[gateway]
id = "gw-01"
site = "plant1"
key_file = "{g / 'batch.key'}"
command_key_file = "{g / 'command.key'}"
[journal]
path = "{rig['tmp'] / 'gw-journal'}"
segment_size = 65536
segment_count = 8
[status]
period_s = 0.5
[status_page]
bind = "127.0.0.1:{page_port}"
refresh_s = {refresh_s}
[devices.scan1]
type = "scanner"
port = "/dev/null-scanner"
enabled = false
[uplinks.tls]
broker = "mqtts://127.0.0.1:{rig['tls_port']}"
ca = "{s / 'ca/ca.crt'}"
cert = "{g / 'gateway.crt'}"
key = "{g / 'gateway.key'}"
{extra}"""


def page(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def refresh_of(text: str) -> int | None:
    found = re.search(r'http-equiv="refresh" content="(\d+)"', text)
    return int(found.group(1)) if found else None


@pytest.fixture
def agent(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:  # noqa: F811
    port = free_port()
    conf = lab["tmp"] / "gw-01.toml"
    conf.write_text(site_text(lab, port, 10))
    log = open(lab["tmp"] / "agent.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config", str(conf)],
                            cwd=ROOT, stdout=log, stderr=log,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert wait_for(lambda: "Online" in page(port) or proc.poll() is not None, 30)
        assert proc.poll() is None and "Online" in page(port), \
            (lab["tmp"] / "agent.log").read_text()[-3000:]
        yield {"proc": proc, "conf": conf, "port": port, "log": lab["tmp"] / "agent.log"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


def command(rig: dict[str, Any], capsys: pytest.CaptureFixture[str], gw: str,
            *argv: str) -> tuple[int, str]:
    rc = host_tools(["command", gw, *argv, "--site-dir", str(rig["site"]),
                     "--broker", f"mqtts://127.0.0.1:{rig['ledger_port']}", "--timeout", "10"])
    out = capsys.readouterr()
    return rc, (out.out + out.err).strip()


def test_commands_are_answered_and_reload_takes_one_path(
        lab: dict[str, Any], agent: dict[str, Any],  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, line = command(lab, capsys, "gw-01", "ping")
    assert (rc, "\n" in line) == (0, False) and re.fullmatch(
        r"gw-01: ping \(command \d+\): ok", line), line
    assert command(lab, capsys, "gw-01", "set-log-level", "debug")[0] == 0
    assert command(lab, capsys, "gw-01", "drain-now")[0] == 0
    rc, line = command(lab, capsys, "gw-01", "replay-from", "1")
    assert rc == 0 and re.fullmatch(r'gw-01: replay-from \(command \d+\): {"from_seq": \d+}', line), line
    assert command(lab, capsys, "gw-01", "replay-from", "x") == (
        2, "command: replay-from x: the seq is a number >= 1")

    # A bad file and reload-config: refused with the error, the old config runs on.
    conf, port = agent["conf"], agent["port"]
    conf.write_text(site_text(lab, port, 10).replace("period_s = 0.5", "period_s = -1"))
    rc, line = command(lab, capsys, "gw-01", "reload-config")
    assert rc == 1 and "status.period_s: -1" in line and "rejected:" in line, line
    assert "\n" not in line
    text = page(port)
    assert 'data-alarm="config_rejected"' in text and "A new configuration was refused" in text
    assert agent["proc"].poll() is None and refresh_of(text) == 10

    # A good one by SIGHUP (systemctl reload): the loops restart with it, the alarm is gone.
    conf.write_text(site_text(lab, port, 7))
    agent["proc"].send_signal(signal.SIGHUP)
    assert wait_for(lambda: refresh_of(page(port)) == 7, 20), agent["log"].read_text()[-3000:]
    assert wait_for(lambda: "Online" in page(port), 20)
    assert "config_rejected" not in page(port)

    # A bad one by SIGHUP: the same refusal, the page names the problem (escaped).
    conf.write_text(site_text(lab, port, 7).replace('bind = "127.0.0.1:', 'bind = "<b>x:'))
    agent["proc"].send_signal(signal.SIGHUP)
    assert wait_for(lambda: "config_rejected" in page(port), 20)
    text = page(port)
    assert "status_page.bind" in text and "&#x27;&lt;b&gt;x:" in text and "<b>x" not in text

    # A good one by command: answered ok, then the agent runs the new file.
    conf.write_text(site_text(lab, port, 5))
    rc, line = command(lab, capsys, "gw-01", "reload-config")
    assert rc == 0 and re.fullmatch(r"gw-01: reload-config \(command \d+\): ok", line), line
    assert wait_for(lambda: refresh_of(page(port)) == 5, 20)
    assert agent["proc"].poll() is None
    log = agent["log"].read_text()
    assert "refused, keeping the running config" in log and "config reloaded from" in log


def test_no_answer_is_one_line_and_exit_1(lab: dict[str, Any],  # noqa: F811
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = host_tools(["command", "gw-02", "ping", "--site-dir", str(lab["site"]), "--broker",
                     f"mqtts://127.0.0.1:{lab['ledger_port']}", "--timeout", "1.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and err.startswith("gw-02: ping (command ")
    assert "no answer within 1.5 s" in err
