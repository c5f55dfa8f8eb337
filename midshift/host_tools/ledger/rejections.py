"""Rejected batches counted in memory and written to the store in aggregate.

A forged batch costs the ledger an HMAC and a dict update here, not a synced insert: the
tally holds one row per (gateway, reason, interval) and the writer hands it to the store
(``record_rejections``, one transaction) at most once per ``flush_every_s``, or sooner when
it holds ``max_rows`` rows. Gateways that are not registered share one row ('' in the
store), so a forger inventing gateway ids cannot grow it; reasons are the codecs' fixed
set. A crash loses at most the last second's counts, never a batch: a rejection is about
a batch the ledger did not store.
"""

from __future__ import annotations

import time

from midshift.host_tools.ledger.store import REJECTION_INTERVAL_MS, RejectionRow


class RejectionTally:
    def __init__(self, flush_every_s: float = 1.0, max_rows: int = 1000) -> None:
        self.flush_every_s = flush_every_s
        self.max_rows = max_rows
        self.rows: dict[tuple[str, str, int], list] = {}  # key -> [count, first, last, detail]
        self._flushed_at = time.monotonic()

    def add(self, gateway: str, reason: str, detail: str, ledger_ms: int) -> bool:
        """Count one rejection; True when it opens a row (worth a log line)."""
        key = (gateway, reason, ledger_ms - ledger_ms % REJECTION_INTERVAL_MS)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = [1, ledger_ms, ledger_ms, detail]
            return True
        row[0] += 1
        row[2] = max(row[2], ledger_ms)
        row[3] = detail
        return False

    def due(self) -> bool:
        return bool(self.rows) and (len(self.rows) >= self.max_rows or
                                    time.monotonic() - self._flushed_at >= self.flush_every_s)

    def take(self) -> list[RejectionRow]:
        """The rows counted since the last take, for the store; the tally starts over."""
        rows = [(g, r, i, n, first, last, d) for (g, r, i), (n, first, last, d)
                in self.rows.items()]
        self.rows = {}
        self._flushed_at = time.monotonic()
        return rows

    def put_back(self, rows: list[RejectionRow]) -> None:
        """Rows the store could not take, counted again for the next flush."""
        for g, r, i, n, first, last, d in rows:
            row = self.rows.setdefault((g, r, i), [0, first, last, d])
            row[0] += n
            row[1], row[2] = min(row[1], first), max(row[2], last)
