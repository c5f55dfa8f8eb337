"""What an integrator installs: every command answers ``--version`` with the one version
string (``midshift.firmware.__version__``), and the systemd unit stays hardened:
``systemd-analyze security --offline=true`` rates it under 4.0 (it was 8.9 EXPOSED)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import midshift.firmware

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["midshift.firmware", "midshift.host_tools", "midshift.simulator",
                                     "bench"])
def test_every_command_says_its_version(package: str) -> None:
    done = subprocess.run([sys.executable, "-m", package, "--version"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"midshift {midshift.firmware.__version__}\n"
    assert midshift.firmware.__version__ != "unknown"     # the test venv has midshift installed


def test_the_unit_is_hardened_below_4() -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(ROOT / "midshift/firmware/midshift.service")], capture_output=True,
                          text=True, timeout=60)
    found = re.search(r"Overall exposure level for midshift\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr
    assert float(found.group(1)) < 4.0, done.stdout


def test_the_unit_reloads_with_the_signal_the_agent_handles() -> None:
    # python -m midshift.firmware run handles SIGHUP (tests/integration/test_reload_commands.py).
    unit = (ROOT / "midshift/firmware/midshift.service").read_text()
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in unit
