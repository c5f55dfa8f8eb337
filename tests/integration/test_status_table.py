"""``python -m midshift.host_tools status``: a real agent process publishes its retained status
to mosquitto; the tool shows it online, then offline once the agent is SIGKILLed and
the broker publishes its last will (critical with ``--once``); on a terminal the table is
redrawn in place. The clean stop and the alarms: ``test_status_truth.py``."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midshift.host_tools.__main__ import main as host_tools
from midshift.host_tools.status_table import StatusBoard, StatusSubscriber
from midshift.simulator.broker import Broker
from midshift.simulator.lab import wait_for

ROOT = Path(__file__).resolve().parents[2]


def status_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midshift.host_tools", "status", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_live_gateway_is_online_and_a_killed_one_turns_offline(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        (tmp_path / "gw").mkdir()
        agent = subprocess.Popen([sys.executable, "-m", "tests.integration.agent_child",
                                  str(tmp_path / "gw"), str(broker.port), "1"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        board = StatusBoard()
        sub = StatusSubscriber(board, broker.url, "midshift/v1/+/+/status").start()
        try:
            assert wait_for(lambda: (board.get("gw-t") or {}).get("state") == "online", 30)
            out = status_cli("--broker", broker.url, "--gateway", "gw-t", "--once")
            assert out.returncode == 0, out.stderr
            summary, header, row = out.stdout.splitlines()[:3]
            assert summary.startswith("OK: online, uplink primary, backlog ")
            assert header.split()[:4] == ["GATEWAY", "SITE", "STATE", "UPLINK"]
            assert row.split()[:4] == ["gw-t", "lab", "online", "primary"]
            agent.send_signal(signal.SIGKILL)
            agent.wait(30)
            # The kernel closes the dead process's socket without an MQTT DISCONNECT: the
            # broker publishes the agent's last will (retained "offline").
            assert wait_for(lambda: (board.get("gw-t") or {}).get("state") == "offline", 30)
            out = status_cli("--broker", broker.url, "--gateway", "gw-t", "--once")
            assert out.returncode == 2  # critical, as a monitoring plugin says
            lines = out.stdout.splitlines()
            assert lines[0] == ("CRITICAL: gw-t offline (connection lost: the broker sent its "
                                "last will)")
            assert lines[2].split()[:3] == ["gw-t", "lab", "offline"]
        finally:
            sub.stop()
            if agent.poll() is None:
                agent.kill()
                agent.wait(30)


def test_on_a_terminal_the_table_is_redrawn_in_place(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        master, slave = pty.openpty()
        p = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "status", "--broker",
                              broker.url, "--count", "3", "--refresh-s", "0.1"], cwd=ROOT,
                             stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded; EOF when the tool exits
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        assert p.wait(30) == 0, p.stderr.read() if p.stderr else ""
    assert out.count(b"\x1b[H\x1b[2J") == 3
    assert b"GATEWAY" in out and b"(no gateway has published a status yet)" in out


def test_stale_full_and_unreadable_statuses_are_shown_as_such() -> None:
    board = StatusBoard()
    board.update("midshift/v1/s1/gw-a/status", b'{"state":"online","uplink":"secondary",'
                 b'"backlog_records":12,"devices_in_error":1,"journal_refusing_txn":true,'
                 b'"forwarding":{"in_flight":2,"clock_offset_ms":740,'
                 b'"alarms":["clock_offset"]}}', False, now=100.0)
    board.update("midshift/v1/s1/gw-b/status", b"\xff garbage", True, now=100.0)
    rows = board.rows(now=105.0)
    assert rows[0] == ["gw-a", "s1", "online FULL", "secondary", "12", "2", "1", "740",
                       "clock_offset", "5s ago"]
    assert rows[1][2] == "unreadable" and rows[1][-1] == "5s ago (retained)"
    assert board.rows(now=200.0)[0][2] == "stale FULL"
    board.update("midshift/v1/s1/gw-b/status", b"", True, now=101.0)  # retained cleared
    assert [r[0] for r in board.rows(now=105.0)] == ["gw-a"]


@pytest.mark.parametrize("url", ["tcp://x:1", "mqtt://", "mqtt://h:port"])
def test_a_bad_broker_url_is_exit_2_or_unknown_for_a_monitor(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert host_tools(["status", "--broker", url]) == 2
    assert "expected mqtt://HOST:PORT or mqtts://HOST:PORT" in capsys.readouterr().err
    assert host_tools(["status", "--broker", url, "--once"]) == 3  # plugin: unknown
    out = capsys.readouterr()
    assert "expected mqtt://HOST:PORT" in out.err and out.out.startswith("UNKNOWN: ")
