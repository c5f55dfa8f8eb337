"""The Raspberry Pi boards' platforms against the package index (marked ``network``: run
by ``make test-network``): every requirement of the agent resolves to a wheel for
Raspberry Pi OS Bookworm 64-bit (aarch64, Python 3.11); for 32-bit (armv7l) the index
alone lacks one wheel, cffi (needed by cryptography), and the wheelhouse says so in one
line, naming the way out (an index with armv7l builds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midshift.host_tools.__main__ import main as host_tools

pytestmark = pytest.mark.network


def test_every_requirement_has_an_aarch64_wheel_for_bookworm(tmp_path: Path) -> None:
    assert host_tools(["wheelhouse", "--arch", "aarch64", "--python", "3.11",
                       "-o", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "wheelhouse.json").read_text())
    names = {n.split("-")[0].lower() for n in doc["wheels"]}
    for req in doc["requirements"]:  # each direct requirement, the pi extra's lgpio too
        name = req.split(">")[0].split("<")[0].split("=")[0].split("[")[0]
        assert name.replace("-", "_").lower() in names, req
    native = [n for n in doc["wheels"] if not n.endswith("-none-any.whl")]
    assert native and all("aarch64" in n for n in native), native
    assert not list(tmp_path.glob("*.tar.gz"))


def test_armv7l_names_the_one_missing_wheel(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert host_tools(["wheelhouse", "--arch", "armv7l", "--python", "3.11",
                       "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "no wheel of cffi (for cryptography)" in err and "--extra-index-url" in err
