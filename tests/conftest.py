"""Fixtures shared by the test files: one PostgreSQL cluster per run, and helpers that
several files need.

The cluster (``simulator/postgres.py``) is started the first time a test asks for ``pg``
and stopped when the run ends, so a run that selects no PostgreSQL test starts none, and
a full run starts one instead of one per module. Each test makes a database of its own in
it (``pg.create_database("<name unique in the run>")``), so tests stay independent of each
other's rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulator.postgres import ThrowawayPostgres


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    """The run's PostgreSQL cluster; tests that restart it must leave it running."""
    with ThrowawayPostgres() as cluster:
        yield cluster

