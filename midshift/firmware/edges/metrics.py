"""The agent's OpenMetrics endpoint (prometheus-client), off unless ``[metrics] bind`` is set.

Nothing in the core knows about it: ``AgentCollector`` reads the agent's status document
(``Agent.snapshot()``, the same one published on the ``status`` topic) at scrape time and
turns it into metric families, so the metrics and the status can never disagree and no
counter has a second home. Names, types and labels: ``docs/metrics.md``.

``MetricsEndpoint`` serves a private registry (this collector and the process collector:
RSS, CPU, open files) with prometheus-client's own HTTP server on one thread; a scraper
that asks for ``application/openmetrics-text`` gets OpenMetrics, others the Prometheus
text format. The ledger serves its collector through the same class
(``midshift/host_tools/ledger/metrics.py``).

When the far end is gone: a scraper that stops scraping costs nothing (nothing is kept
between scrapes); a status document that cannot be built (the agent stopping) yields an
empty scrape rather than a 500 that would read as "the gateway is down".

Label cardinality is bounded by the config: device names from the config (an event from
an unknown source is counted as ``(unknown)``), uplink names, sell rules, reasons from
fixed sets in the code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.device_status import STATES as DEVICE_STATES

log = logging.getLogger(__name__)

# Alarms exported at 0 while quiet, so an alert can tell "quiet" from "never scraped".
KNOWN_ALARMS = ("no_ack", "device_down", "clock_offset", "ledger_rejected", "journal_lost",
                "journal_no_space", "journal_commit_write", "command_id_write",
                "epoch_mark_write", "sync_log_write", "config_rejected")
ACK_RESULTS = (("acked", "ok"), ("rejected", "rejected"), ("stale_acks", "stale"),
               ("bad_acks", "bad"))


def counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=_num(value))


def gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=_num(value))


def labelled(kind: type, name: str, doc: str, labels: list[str],
             rows: Iterable[tuple[list[str], Any]]) -> Any:
    fam = kind(name, doc, labels=labels)
    for values, value in rows:
        fam.add_metric([str(v) for v in values], _num(value))
    return fam


def _num(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value or 0)


class AgentCollector(Collector):
    """Metric families from ``status()`` (the agent's ``snapshot``) at every scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        try:
            doc = self.status()
        except Exception:  # noqa: BLE001 - a scrape must not take the agent down
            log.exception("metrics: the status document could not be built")
            return
        yield from agent_families(doc)


def agent_families(doc: dict[str, Any]) -> Iterator[Any]:
    fwd = doc.get("forwarding") or {}
    fc = fwd.get("counters") or {}
    journal = doc.get("journal") or {}
    info = InfoMetricFamily("midshift_build", "The firmware and this run of it.")
    info.add_metric([], {"version": str(doc.get("version", "")),
                         "gateway": str(doc.get("gateway", "")), "site": str(doc.get("site", "")),
                         "runtime": str(doc.get("runtime", "")),
                         "boot_id": str(doc.get("boot_id", ""))})
    yield info
    yield gauge("midshift_uptime_seconds", "Seconds since the agent started.", doc.get("uptime_s"))

    # ---- devices and events
    devices = [d for d in doc.get("devices") or () if isinstance(d, dict)]
    down = set(doc.get("devices_down") or ())
    yield labelled(CounterMetricFamily, "midshift_device_events",
                   "Events by device and outcome: journaled, or why not (an invalid reason "
                   "from the pipeline, a journal refusal code).", ["device", "outcome"],
                   [((dev, outcome), n) for dev, by in sorted(
                       (doc.get("events_by_device") or {}).items())
                    for outcome, n in sorted(by.items())])
    yield labelled(GaugeMetricFamily, "midshift_device_state",
                   "1 for the state each device is in now, 0 for the others.",
                   ["device", "state"],
                   [((d["name"], s), d.get("state") == s) for d in devices
                    for s in DEVICE_STATES])
    yield labelled(GaugeMetricFamily, "midshift_device_down",
                   "1 while a device has not been ok for longer than its stale time.",
                   ["device"], (([d["name"]], d["name"] in down) for d in devices))
    yield labelled(CounterMetricFamily, "midshift_device_errors",
                   "A driver's own counters of trouble (timeouts, reconnects, rejected "
                   "lines...), by device and counter.", ["device", "counter"],
                   [((d["name"], k), v) for d in devices
                    for k, v in sorted((d.get("counters") or {}).items())
                    if k != "events" and not k.startswith(("to_", "refused"))])
    pipe = doc.get("pipeline") or {}
    yield labelled(CounterMetricFamily, "midshift_events_invalid",
                   "Events the pipeline refused, by reason.", ["reason"],
                   (([r], n) for r, n in sorted((pipe.get("invalid") or {}).items())))
    yield counter("midshift_events_masked", "Card numbers masked in event data.",
                  pipe.get("masked"))

    # ---- journal
    yield gauge("midshift_journal_backlog_records", "Records durable, not yet acknowledged.",
                doc.get("backlog_records"))
    yield gauge("midshift_journal_backlog_bytes", "Bytes of those records.",
                doc.get("backlog_bytes"))
    age = doc.get("oldest_unacked_age_s")
    yield gauge("midshift_journal_oldest_unacked_age_seconds",
                "Age of the oldest record the ledger has not acknowledged (0: none waits).", age)
    yield gauge("midshift_journal_free_bytes", "Ring space left.", journal.get("free_bytes"))
    yield gauge("midshift_journal_refusing_txn", "1 while the journal refuses transactions.",
                doc.get("journal_refusing_txn"))
    yield counter("midshift_journal_telemetry_dropped",
                  "Telemetry records dropped to make room for transactions.",
                  journal.get("dropped"))
    yield counter("midshift_journal_refused", "Appends the journal refused (full).",
                  journal.get("refused"))
    yield counter("midshift_journal_lost_to_damage", "Records lost to flash damage.",
                  journal.get("lost_to_damage"))
    yield counter("midshift_journal_syncs", "fsyncs of the journal (group commits).",
                  journal.get("syncs"))

    # ---- forwarding
    yield counter("midshift_batches_sent", "Batches published (first sends).", fc.get("batches"))
    yield counter("midshift_records_sent", "Records in those batches.", fc.get("sent"))
    yield counter("midshift_batches_resent", "Batches sent again after the ack timeout.",
                  fc.get("resent"))
    yield gauge("midshift_batches_in_flight", "Batches sent, not yet acknowledged.",
                fwd.get("in_flight"))
    yield counter("midshift_batches_hedged", "Batches copied onto a standby uplink after "
                  "the hedge delay.", fc.get("hedged"))
    yield counter("midshift_hedge_bytes", "Bytes those copies cost.", fc.get("hedge_bytes"))
    yield counter("midshift_hedges_won", "Hedged batches answered on the standby first.",
                  fc.get("hedges_won"))
    yield gauge("midshift_hedge_delay_seconds", "How long a batch waits for its ack before "
                "it is hedged (follows the round trip).", (fwd.get("hedge_delay_ms") or 0) / 1000)
    yield labelled(CounterMetricFamily, "midshift_acks", "Acks from the ledger by result: ok, "
                   "rejected (the ledger refused the batch for good), stale (no batch in "
                   "flight matched), bad (signature or epoch).", ["result"],
                   (([label], fc.get(key)) for key, label in ACK_RESULTS))
    yield gauge("midshift_batches_rejected_unsettled",
                "Batch ranges the ledger rejected, waiting for an operator to settle them.",
                len(fwd.get("rejected") or ()))
    yield counter("midshift_publish_refused", "Publishes the MQTT client could not take.",
                  fc.get("publish_refused"))
    yield counter("midshift_commits", "Commit points persisted (ring space reclaimed).",
                  fc.get("commits"))
    cmds = fwd.get("commands") or {}
    yield counter("midshift_commands_accepted", "Signed commands obeyed.", cmds.get("accepted"))
    yield labelled(CounterMetricFamily, "midshift_commands_rejected",
                   "Commands refused, by reason.", ["reason"],
                   (([r], n) for r, n in sorted((cmds.get("rejected") or {}).items())))
    offset = fwd.get("clock_offset_ms")
    if offset is not None:
        yield gauge("midshift_clock_offset_seconds",
                    "The ledger's clock minus this gateway's (estimate).", offset / 1000.0)

    # ---- uplinks
    ups = fwd.get("uplinks") or {}
    active = fwd.get("active_uplink")
    yield labelled(GaugeMetricFamily, "midshift_uplink_up", "1 while an uplink is connected.",
                   ["uplink"], (([n], v) for n, v in sorted(ups.items())))
    yield labelled(GaugeMetricFamily, "midshift_uplink_active",
                   "1 for the uplink carrying the batches.", ["uplink"],
                   (([n], n == active) for n in sorted(ups)))
    yield counter("midshift_uplink_failovers", "Switches to a less preferred uplink.",
                  fwd.get("failovers"))
    yield counter("midshift_uplink_failbacks", "Returns to a more preferred uplink.",
                  fwd.get("failbacks"))
    yield counter("midshift_uplink_demotions", "Failovers because the active uplink's "
                  "batches kept being answered through their hedges.", fwd.get("demotions"))
    uc = doc.get("uplink_counters") or {}
    for key, what in (("connects", "Connections made"), ("disconnects", "Connections lost"),
                      ("published", "Messages handed to the client"),
                      ("publish_errors", "Publishes the client refused")):
        yield labelled(CounterMetricFamily, f"midshift_uplink_{key}", f"{what}, by uplink.",
                       ["uplink"], (([n], c.get(key)) for n, c in sorted(uc.items())))

    # ---- alarms and the agent's own trouble
    alarms = set(doc.get("alarms") or fwd.get("alarms") or ())
    names = sorted(set(KNOWN_ALARMS) | alarms)
    yield labelled(GaugeMetricFamily, "midshift_alarm", "1 while an alarm is raised.",
                   ["alarm"], (([a], a in alarms) for a in names))
    yield labelled(CounterMetricFamily, "midshift_thread_crashes",
                   "Crashes of a supervised loop, by loop.", ["thread"],
                   (([t], n) for t, n in sorted((doc.get("thread_crashes") or {}).items())))
    yield counter("midshift_incidents_dropped", "Link or device incidents the journal refused.",
                  doc.get("incidents_dropped"))
    tills = doc.get("tills")
    if isinstance(tills, dict):
        yield from till_families(tills)
    refdata = doc.get("refdata")
    if isinstance(refdata, dict):
        yield from refdata_families(refdata)


def refdata_families(r: dict[str, Any]) -> Iterator[Any]:
    """Reference data down (issue 20): each dataset's version and age, the rejections."""
    ds = r.get("datasets") or {}
    yield labelled(GaugeMetricFamily, "midshift_refdata_version",
                   "The version of each dataset the gateway holds (0: none yet).", ["dataset"],
                   (([d], v.get("version")) for d, v in sorted(ds.items())))
    yield labelled(GaugeMetricFamily, "midshift_refdata_age_seconds",
                   "Seconds since the gateway last knew its version was the newest (0 while "
                   "connected and current; absent before the first version).", ["dataset"],
                   (([d], v["age_s"]) for d, v in sorted(ds.items())
                    if isinstance(v.get("age_s"), (int, float))))
    yield labelled(CounterMetricFamily, "midshift_refdata_rejected",
                   "Reference data messages refused, by reason.", ["reason"],
                   (([k], v) for k, v in sorted((r.get("rejected") or {}).items())))
    yield counter("midshift_refdata_deltas_applied", "Deltas applied.", r.get("deltas_applied"))
    yield counter("midshift_refdata_snapshots_installed", "Snapshots installed.",
                  r.get("snapshots_installed"))
    yield counter("midshift_refdata_stock_corrections",
                  "Provisional stock levels an authoritative delta replaced.",
                  (r.get("stock_corrections") or {}).get("count"))


def till_families(t: dict[str, Any]) -> Iterator[Any]:
    """The till API's sell rules (issue 17: every rule's counters and headroom), queue and
    request outcomes, from its part of the status."""
    rules = t.get("rules") or {}
    yield labelled(CounterMetricFamily, "midshift_till_sell_refused",
                   "Transactions an offline sell rule refused, by rule.", ["rule"],
                   (([r], v.get("refused")) for r, v in sorted(rules.items())))
    yield labelled(GaugeMetricFamily, "midshift_till_sell_headroom",
                   "What is left under a rule's limit now (rules with a limit only; "
                   "card_floor_limit and txn_cap: the limit itself, per transaction).",
                   ["rule"], (([r], v["headroom"]) for r, v in sorted(rules.items())
                              if isinstance(v.get("headroom"), (int, float))))
    yield labelled(GaugeMetricFamily, "midshift_till_sell_limit",
                   "A rule's configured limit (rules with a numeric limit only).", ["rule"],
                   (([r], v["limit"]) for r, v in sorted(rules.items())
                    if isinstance(v.get("limit"), (int, float))
                    and not isinstance(v.get("limit"), bool)))
    q = t.get("queued") or {}
    yield gauge("midshift_till_queued_transactions",
                "Till transactions accepted, not yet in the ledger.", q.get("count"))
    yield gauge("midshift_till_queued_amount",
                "Their amount, in minor units of the store's currency.", q.get("amount"))
    yield gauge("midshift_till_queued_offline_amount",
                "Of that, taken while offline (what the exposure cap counts).",
                q.get("offline_amount"))
    yield gauge("midshift_till_queued_oldest_age_seconds",
                "Age of the oldest queued transaction (0: none).", q.get("oldest_age_s"))
    yield gauge("midshift_till_online", "1 while the tills sell online (an uplink, not forced "
                "offline).", t.get("state") == "online")
    yield gauge("midshift_till_forced_offline", "1 while a manager has forced offline.",
                t.get("forced_offline"))
    yield labelled(CounterMetricFamily, "midshift_till_requests",
                   "Till API requests by outcome (accepted, replayed, refused, invalid...).",
                   ["outcome"], (([k], v) for k, v in sorted((t.get("counters") or {}).items())))


class MetricsEndpoint:
    """``collector`` served on ``bind`` (host, port; port 0: any free one, see ``port``)."""

    def __init__(self, collector: Collector, bind: tuple[str, int],
                 key: str = "metrics.bind") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        self.bind = bind
        self.key = key
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsEndpoint:
        host, port = self.bind
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise ConfigError(self.key, f"cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}", "a free port on an address of this "
                              "machine") from None
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
