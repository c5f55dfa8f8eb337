"""Fixtures shared by the test files: one PostgreSQL cluster per run, the shipped
scenarios' short runs, and helpers that several files need.

The cluster (``midshift/simulator/postgres.py``) is started the first time a test asks for ``pg``
and stopped when the run ends, so a run that selects no PostgreSQL test starts none, and
a full run starts one instead of one per module. Each test makes a database of its own in
it (``pg.create_database("<name unique in the run>")``), so tests stay independent of each
other's rows.

A scenario's short run (``short_run(name)``) is played once per test run however many
tests read it: each reader gets the process, a fresh copy of its JSON and the report
directory, and only reads them (the scenario test and the report-in-Chromium test both
judge bad-input's run, which costs half a minute).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.simulator.postgres import ThrowawayPostgres

ROOT = Path(__file__).resolve().parents[1]
ShortRun = tuple[subprocess.CompletedProcess, dict[str, Any], Path]


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    """The run's PostgreSQL cluster; tests that restart it must leave it running."""
    with ThrowawayPostgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ShortRun]:
    """``short_run(name)``: (process, JSON, report directory) of ``python -m midshift.simulator run
    NAME --short --json --report DIR``, played on the first call for NAME."""
    runs: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def run(name: str) -> ShortRun:
        if name not in runs:
            report = tmp_path_factory.mktemp(f"short-{name}")
            proc = subprocess.run([sys.executable, "-m", "midshift.simulator", "run", name, "--short",
                                   "--json", "--report", str(report)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=240)
            runs[name] = (proc, report)
        proc, report = runs[name]
        assert proc.stdout.strip(), f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
        return proc, json.loads(proc.stdout), report
    return run
