"""The ledger's OpenMetrics endpoint (``ledger serve --metrics HOST:PORT``, off by default).

``LedgerCollector`` reads the service's counters at scrape time (``LedgerService.
snapshot``); it is served by the agent's endpoint class (``midshift/firmware/edges/metrics.py``).
Names, types and labels: ``docs/metrics.md``. With ``--workers N`` each worker is its own
process with its own counters: the endpoint belongs to one process, so ``--metrics`` is
refused there (run workers with ``--shared`` and a port each instead).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from midshift.firmware.edges.metrics import counter, gauge, labelled

log = logging.getLogger(__name__)


class LedgerCollector(Collector):
    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        snap = self.service.snapshot()
        c = snap["counters"]
        yield counter("midshift_ledger_batches", "Batches stored and acknowledged.",
                      c.get("batches"))
        yield counter("midshift_ledger_events", "New events stored (duplicates not counted).",
                      c.get("events"))
        yield counter("midshift_ledger_duplicates",
                      "Events received again and dropped as duplicates.", c.get("duplicates"))
        yield labelled(CounterMetricFamily, "midshift_ledger_events_by_gateway",
                       "New events stored, by gateway.", ["gateway"],
                       (([g], n) for g, n in sorted(snap["events_by_gateway"].items())))
        reasons = sorted(k[len("rejected_"):] for k in c if k.startswith("rejected_"))
        yield labelled(CounterMetricFamily, "midshift_ledger_rejections",
                       "Batches rejected, by reason (bad_mac, out_of_range, unknown_gateway, "
                       "unstorable...).", ["reason"],
                       (([r], c[f"rejected_{r}"]) for r in reasons))
        yield counter("midshift_ledger_store_unavailable",
                      "Batches left unacknowledged because the store was down.",
                      c.get("store_unavailable"))
        yield counter("midshift_ledger_nudges",
                      "Resend nudges sent to gateways after subscribing on a new session.",
                      c.get("nudges"))
        yield gauge("midshift_ledger_broker_connected", "1 while connected to the broker.",
                    snap["connected"])
        yield gauge("midshift_ledger_inbox", "Batches received, waiting for the writer.",
                    snap["queued"])
