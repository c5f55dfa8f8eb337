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
judge bad-input's run, which costs half a minute). The runs the selected tests read (their
``scenario(name)`` marks) start in the background when collection ends, a few at a time
(``tests/short_runs.py``), so the tests judge finished runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from midshift.simulator.postgres import ThrowawayPostgres
from tests.short_runs import ShortRun, ShortRuns

ROOT = Path(__file__).resolve().parents[1]
_RUNS = pytest.StashKey[ShortRuns]()


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    """The run's PostgreSQL cluster; tests that restart it must leave it running."""
    with ThrowawayPostgres() as cluster:
        yield cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): the test reads NAME's short run "
                            "(short_run fixture); the run starts in the background at the "
                            "session's start")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the short runs the selected tests read, in the background."""
    names = list(dict.fromkeys(m.args[0] for item in session.items
                               for m in item.iter_markers("scenario")))
    if names and not session.config.option.collectonly:
        runs = ShortRuns()
        session.config.stash[_RUNS] = runs
        runs.start(names)


def pytest_sessionfinish(session: pytest.Session) -> None:
    runs = session.config.stash.get(_RUNS, None)
    if runs is not None:
        runs.close()


@pytest.fixture(scope="session")
def short_run(pytestconfig: pytest.Config) -> Callable[[str], ShortRun]:
    """``short_run(name)``: (process, JSON, report directory) of ``python -m midshift.simulator run
    NAME --short --json --report DIR``; a test marked ``scenario(NAME)`` finds it started."""
    runs = pytestconfig.stash.get(_RUNS, None)
    if runs is None:
        runs = pytestconfig.stash[_RUNS] = ShortRuns()
    return runs.result
