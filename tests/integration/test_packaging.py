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


def test_the_wheel_installs_one_top_level_package_with_its_data(tmp_path: Path) -> None:
    """Nothing installed may collide with another project's module names: the wheel holds
    `midshift` alone (no `firmware`, `simulator` or `bench` at the top), its console scripts,
    the board files and the unit's files."""
    import zipfile
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                            "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("midshift-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} \
        == {"midshift"}
    for needed in ("midshift/__init__.py", "midshift/firmware/core/journal.py",
                   "midshift/board_configs/rpi4-eth-lte.toml",
                   "midshift/board_configs/examples/modbus.toml",
                   "midshift/firmware/midshift.service", "midshift/firmware/install.sh",
                   "midshift/firmware/till-api.openapi.json"):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert "midshift-agent = midshift.firmware.__main__:main" in scripts
    assert "bench" not in scripts
