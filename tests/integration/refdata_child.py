"""A child process that applies one large prices delta to a gateway's refdata store, to be
SIGKILLed by ``test_refdata_power_cut.py``. ``python -m tests.integration.refdata_child
STORE DELTA_FILE KEY_HEX pause|run``: prints ``applying`` before it starts; with ``pause``
it also prints ``before-commit`` with every row written and the COMMIT not yet issued, and
waits there for a kill."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from midshift.firmware.core.refdata import RefdataGate
from midshift.firmware.core.signing import Signer
from midshift.firmware.edges.refdata_store import RefdataStore


class PausingDb:
    """The store's connection, stopping before COMMIT until stdin says more (never)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            print("before-commit", flush=True)
            sys.stdin.readline()
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.db.executemany(sql, rows)


def main() -> None:
    store_path, delta_path, key_hex, mode = sys.argv[1:5]
    store = RefdataStore(store_path)
    gate = RefdataGate(Signer(bytes.fromhex(key_hex)), "gw-t")
    doc = gate.read(Path(delta_path).read_bytes())
    if mode == "pause":
        store._db = PausingDb(store._db)  # type: ignore[assignment]  # noqa: SLF001
    print("applying", flush=True)
    store.apply_delta(gate, doc, 1)
    print("done", flush=True)


if __name__ == "__main__":
    main()
