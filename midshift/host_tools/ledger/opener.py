"""Opening the ledger's store: the one place that picks a backend from a URL.

``open_store("sqlite:///ledger.db")`` (or a bare path) opens ``SqliteStore``, which brings
the file to the latest schema itself; ``open_store("postgresql://...")`` opens
``PgStore``, which migrates only when ``migrate`` is true and otherwise stops with one
line (``StoreError``) on an unmigrated or newer schema. Any other scheme is a
``ValueError`` naming the accepted forms. The backends import ``store.py`` for the
interface and nothing imports them but this module, so there is no import circle.
"""

from __future__ import annotations

from midshift.host_tools.ledger.pg_store import PgStore
from midshift.host_tools.ledger.sqlite_store import SqliteStore
from midshift.host_tools.ledger.store import LedgerStore, backend_of


def open_store(url: str, migrate: bool = False) -> LedgerStore:
    """The store for ``url``. SQLite always migrates; PostgreSQL only when ``migrate``."""
    if backend_of(url) == "postgresql":
        return PgStore(url, migrate=migrate)
    return SqliteStore(url)


def open_existing(url: str) -> LedgerStore:
    """The store for ``url`` for a command that reads or reviews a ledger: a SQLite file
    that does not exist is an error (opening would create an empty ledger and show
    nothing), as are a bad URL (ValueError) and an unreachable or unmigrated database
    (StoreError)."""
    from midshift.host_tools.ledger.store import StoreError, sqlite_path

    if backend_of(url) == "sqlite" and not sqlite_path(url).exists():
        raise StoreError(f"no ledger database at {sqlite_path(url)}")
    return open_store(url)


def open_for_command(url: str, command: str) -> LedgerStore | None:
    """``open_existing`` for a host_tools command: None after one line on stderr naming
    the command and what is wrong (the caller exits 2)."""
    import sys

    from midshift.host_tools.ledger.store import StoreError

    try:
        return open_existing(url)
    except (StoreError, ValueError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
