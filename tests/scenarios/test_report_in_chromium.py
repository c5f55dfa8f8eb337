"""The HTML report renders in headless Chromium (Debian's chromium package): the DOM
after rendering carries the verdict, the charts and the reconciliation table, and the
screenshot is a page with content, not a blank one."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.short_runs import ShortRun

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: .ci/setup installs Debian's chromium package")
    return path


def _png_rows_vary(png: bytes) -> int:
    """Distinct scanlines in a PNG (8-bit RGB/RGBA, non-interlaced): a blank page has ~1."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, channels = 8, b"", 0, 4
    while pos < len(png):
        n = int.from_bytes(png[pos:pos + 4], "big")
        kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width = int.from_bytes(body[:4], "big")
            channels = {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + width * channels
    return len({raw[i + 1:i + stride] for i in range(0, len(raw), stride)})


@pytest.mark.scenario("bad-input")
def test_report_renders_in_headless_chromium(tmp_path: Path,
                                              short_run: Callable[[str], ShortRun]) -> None:
    proc, r, report = short_run("bad-input")  # the run test_scenario_runs judges too
    assert proc.returncode == 0, r["assertions"]
    page = (report / "report.html").as_uri()
    common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout
    assert "Shift report: bad-input" in dom and "PASSED" in dom
    assert "exactly once" in dom  # the verdict a store manager reads first
    assert dom.count("<svg") == 4  # events/s, backlog, uplink, latency
    assert "<h2>Reconciliation</h2>" in dom and "gw-01" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1100,2400", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    assert _png_rows_vary(shot.read_bytes()) > 200
