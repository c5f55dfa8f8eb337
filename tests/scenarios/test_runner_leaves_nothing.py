"""``python -m midshift.simulator run`` leaves no process behind: stopped by SIGTERM mid-scenario
(what ``timeout`` or a CI limit sends), killed outright (SIGKILL: its children get their
parent-death signal), or interrupted with Ctrl-C while it is still starting (one line on
stderr, no traceback, no asyncio "Task was destroyed").

A run's processes are found by a marker in their environment, which every child inherits
(mosquitto, the ledger, the agents, PostgreSQL and its backends)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from midshift.simulator.broker import free_port

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
[scenario]
name = "cleanup"
duration_s = 300
settle_s = 10
{ledger}
[devices.scanner1]
type = "scanner"
rate_per_s = 2

[devices.scale1]
type = "scale"

[devices.plc2]
type = "opcua"
period_ms = 500

[[fault]]
at_s = 2
kind = "link"
uplink = "primary"
mode = "blackhole"
for_s = 200

[expect]
lost = 0
"""


def _marked(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose environment carries ``marker``."""
    needle = f"MIDSHIFT_RUN_MARKER={marker}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes():
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(d.name), cmd))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def _none_left(marker: str, within_s: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + within_s
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the kernel's and the children's own shutdown: nothing to wait on
    return left


def _start(tmp_path: Path, ledger: str = "") -> tuple[subprocess.Popen, str]:
    path = tmp_path / "cleanup.toml"
    path.write_text(SCENARIO.format(ledger=ledger))
    marker = uuid.uuid4().hex
    # --report: the run's files in tmp_path, so a killed runner's leftovers go with it.
    proc = subprocess.Popen([sys.executable, "-m", "midshift.simulator", "run", str(path), "--report",
                             str(tmp_path / "report")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MIDSHIFT_RUN_MARKER": marker})
    return proc, marker


def _read_until(proc: subprocess.Popen, text: str, timeout_s: float = 90) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # progress lines come every few seconds
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    proc.kill()
    pytest.fail(f"no {text!r} in the runner's output:\n{''.join(seen)}\n{proc.stderr.read()}")


def _children_seen(marker: str) -> set[str]:
    cmds = " ".join(c for _, c in _marked(marker))
    return {name for name in ("mosquitto", "firmware run", "ledger serve", "postgres")
            if name in cmds}


def test_sigterm_mid_scenario_stops_every_process(tmp_path: Path) -> None:
    proc, marker = _start(tmp_path)
    try:
        _read_until(proc, "fault: primary blackhole")
        assert _children_seen(marker) == {"mosquitto", "firmware run", "ledger serve"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert _none_left(marker, 5) == []


def test_sigkill_of_the_runner_takes_its_children_along(tmp_path: Path) -> None:
    proc, marker = _start(tmp_path, ledger='[ledger]\ndb = "postgresql"\n')
    try:
        _read_until(proc, "shift started")
        assert _children_seen(marker) == {"mosquitto", "firmware run", "ledger serve",
                                          "postgres"}
        pg_dirs = {Path(c.split(" -D ")[1].split()[0]).parent for _, c in _marked(marker)
                   if " -D " in c}
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    assert _none_left(marker, 20) == []
    for d in pg_dirs:  # the cluster's files: nobody was left to remove them
        shutil.rmtree(d, ignore_errors=True)


def test_ctrl_c_during_start_up_ends_cleanly(tmp_path: Path) -> None:
    proc, marker = _start(tmp_path)
    try:
        _read_until(proc, "files in")  # printed as the site starts
        time.sleep(0.5)  # into the start: broker, ledger, devices, agents being brought up
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 128 + signal.SIGINT
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err and "Task was destroyed" not in err, err
    assert "stopped by SIGINT" in err
    assert _none_left(marker, 5) == []


def test_devices_command_ctrl_c_while_an_emulator_starts(tmp_path: Path) -> None:
    """Ctrl-C while the OPC UA server is coming up: it is brought up, then stopped with
    the rest; no traceback and no destroyed asyncio tasks."""
    conf = tmp_path / "devices.toml"
    conf.write_text('[devices.scanner1]\ntype = "scanner"\n[devices.plc2]\ntype = "opcua"\n'
                    f"port = {free_port()}\n")
    proc = subprocess.Popen([sys.executable, "-m", "midshift.simulator", "devices", "--config",
                             str(conf), "--ground-truth", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MIDSHIFT_RUNTIME_DIR": str(tmp_path / "rt")})
    try:
        _read_until(proc, '"name": "scanner1"')  # the scanner is up; the PLC is starting
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 128 + signal.SIGINT
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err and "Task was destroyed" not in err, err
    assert "never awaited" not in err and "stopped by SIGINT" in err, err
