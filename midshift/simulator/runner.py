"""Runs one scenario end to end: bring the site up, wait until every gateway reports its
devices, play the timeline with progress lines, end the shift, let the backlog drain,
stop everything cleanly, then judge the ledger against the ground truth.

Phases and their bounds (every wait here ends by itself):

1. up: broker, ledger process, devices, fault proxies, agent processes; then until each
   gateway's status shows every device ok (at most 60 s; a gateway that never gets there
   is reported, and the run goes on so the report says why).
2. shift: ``duration_s / speed`` wall seconds; faults and the scales' items on time.
3. end of shift: the devices stop; the run waits until the ledger stops growing and every
   gateway reports an empty backlog (at most ``settle_s``).
4. down: agents SIGTERM, ledger SIGTERM, broker stopped; then the outcome.

The ledger is read only through its store (``midshift/host_tools/ledger/store.py``): SQLite in the
run's directory, or a throwaway PostgreSQL cluster when the file says ``[ledger] db =
"postgresql"``. A SIGTERM or Ctrl-C at any phase (``midshift/simulator/children.py`` makes it an
exception) goes through the same ``finally``: everything is stopped in the order of 4.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.store import LedgerStore
from midshift.host_tools.reconcile import reconcile
from midshift.simulator.ground_truth import read_ground_truth
from midshift.simulator.lab import wait_for
from midshift.simulator.outcome import evaluate, ledger_rows
from midshift.simulator.scenario import Scenario
from midshift.simulator.site import SimulatedSite
from midshift.simulator.status_monitor import StatusMonitor
from midshift.simulator.timeline import Timeline

UP_TIMEOUT_S = 60.0


class Progress:
    """One line per step or every few seconds, to ``out`` (stderr when stdout is JSON)."""

    def __init__(self, out: TextIO, quiet: bool = False) -> None:
        self.out, self.quiet, self.t0 = out, quiet, time.monotonic()

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", file=self.out, flush=True)


def _ledger_count(store: LedgerStore | None) -> int:
    if store is None:
        return 0
    try:
        return store.count()
    except Exception:  # noqa: BLE001 - busy or reconnecting: try again at the next tick
        return -1


def _produced(site: SimulatedSite) -> int:
    n = 0
    for g in site.gateways:
        for f in g.ground_truth_dir.glob("*.jsonl"):
            n += sum(1 for e in read_ground_truth(f) if e.get("expect"))
    return n


def _all_devices_ok(monitor: StatusMonitor, site: SimulatedSite) -> list[str]:
    """Gateways not yet reporting every device ok."""
    latest = monitor.latest()
    waiting = []
    for g in site.gateways:
        doc = latest.get(g.gw_id) or {}
        devs = doc.get("devices") or []
        if len(devs) < len(g.devices) or any(d.get("state") != "ok" for d in devs):
            waiting.append(g.gw_id)
    return waiting




def _status_line(monitor: StatusMonitor, site: SimulatedSite, timeline: Timeline,
                 store: LedgerStore | None) -> str:
    latest = monitor.latest()
    backlog = sum((latest.get(g.gw_id) or {}).get("backlog_records", 0) for g in site.gateways)
    ups: dict[str, int] = {}
    for g in site.gateways:
        u = (latest.get(g.gw_id) or {}).get("uplink", "?")
        ups[u] = ups.get(u, 0) + 1
    active = [w.label for w in timeline.windows if w.end_ms is None]
    return (f"produced {_produced(site)}  committed {_ledger_count(store)}  "
            f"backlog {backlog}  uplinks {', '.join(f'{k}:{v}' for k, v in sorted(ups.items()))}"
            f"  faults: {', '.join(active) or 'none'}")


def run(scenario: Scenario, speed: float = 1.0, gateways: int | None = None,
        report_dir: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    say = progress or Progress(sys.stderr, quiet=True)
    speed = min(speed, scenario.max_speed)
    n_gw = gateways or scenario.gateway_count
    tmp = None
    if report_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="midshift-scenario-")
        run_dir = Path(tmp.name)
    else:
        run_dir = report_dir / "run"
        if run_dir.exists():  # an earlier run's files: its ledger and logs are not this one's
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    pg: Any = None
    if scenario.ledger_db == "postgresql":
        from midshift.simulator.postgres import ThrowawayPostgres
        pg = ThrowawayPostgres()
    site = SimulatedSite(scenario, run_dir, n_gw, speed)
    monitor: StatusMonitor | None = None
    store: LedgerStore | None = None
    stop = threading.Event()
    wall_t0 = time.monotonic()
    notes: list[str] = []
    try:
        say(f"scenario {scenario.name}: {n_gw} gateway(s), {len(scenario.devices)} device(s) "
            f"each, {len(scenario.faults)} fault(s), {scenario.duration_s:g} s at speed "
            f"{speed:g} ({scenario.duration_s / speed:.0f} s of wall time); files in {run_dir}")
        if pg is not None:
            site.db_url = pg.start().url
            say(f"ledger database: a PostgreSQL cluster of its own ({pg.data_dir})")
        site.start()
        if not site.wait_ledger_ready():
            raise RuntimeError(f"the ledger did not start; see {run_dir / 'ledger.log'}")
        store = open_store(site.db_url)  # read only through the store, as reconcile does
        monitor = StatusMonitor("127.0.0.1", site.broker.port).start()
        say("broker, ledger, devices and agents started; waiting for every device to be ok")
        if not wait_for(lambda: not _all_devices_ok(monitor, site), UP_TIMEOUT_S, 0.25):
            late = _all_devices_ok(monitor, site)
            notes.append(f"not every device was ok after {UP_TIMEOUT_S:.0f} s: {late}")
            say(f"warning: {notes[-1]}")
        timeline = Timeline(site, speed)
        timeline.plan()
        site.start_tills()
        start_ms = int(time.time() * 1000)
        site_clock: dict[str, Any] = {"offset_ms": site.clock_offset_ms,
                                      "at_shift_start": _iso_ms(start_ms + site.clock_offset_ms)}
        if scenario.clock:  # aimed from the site's start: the run-up makes it a little early
            site_clock["reads_at_s"] = round((scenario.clock["reads_ms"] - start_ms
                                              - site.clock_offset_ms) / 1000 * speed, 1)
            say(f"site clock: {site_clock['at_shift_start']} at the shift's start; it reads "
                f"{scenario.clock['reads']} at t={site_clock['reads_at_s']:g} s")
            if not 0 <= site_clock["reads_at_s"] <= scenario.duration_s:
                notes.append(f"the site clock read {scenario.clock['reads']} at t="
                             f"{site_clock['reads_at_s']:g} s, outside the shift (the run-up "
                             "took too long): the scenario did not happen as written")
        t0 = time.monotonic()
        player = threading.Thread(target=timeline.run, args=(t0, stop.is_set), daemon=True,
                                  name="timeline")
        player.start()
        shift_s = scenario.duration_s / speed
        say("shift started")
        seen = 0
        while (left := t0 + shift_s - time.monotonic()) > 0:
            time.sleep(min(left, 5.0))
            for w in timeline.windows[seen:]:
                say(f"fault: {w.label} on {', '.join(w.gateways)}")
            seen = len(timeline.windows)
            say(f"t={(time.monotonic() - t0) * speed:5.0f}/{scenario.duration_s:g} s  "
                + _status_line(monitor, site, timeline, store))
        stop.set()
        player.join(30)
        site.stop_devices()
        timeline.join_fleet(scenario.settle_s)
        traffic_end_ms = int(time.time() * 1000)
        say("shift over: devices stopped; waiting for the backlog to drain")
        last = [-2, time.monotonic()]

        def drained() -> bool:
            n = _ledger_count(store)
            if n != last[0]:
                last[:] = [n, time.monotonic()]
            latest = monitor.latest()
            empty = all((latest.get(g.gw_id) or {}).get("backlog_records", 1) == 0
                        for g in site.gateways)
            return (empty and time.monotonic() - last[1] >= 2.0
                    and site.both_ways.erp_caught_up(lambda: _ledger_txns(store)))
        if not wait_for(drained, scenario.settle_s, 0.5):
            notes.append(f"the backlog had not drained {scenario.settle_s:g} s after the shift")
            say(f"warning: {notes[-1]}")
        say(_status_line(monitor, site, timeline, store))
        end_ms = int(time.time() * 1000)
        samples = monitor.snapshot()
        monitor.stop()
        monitor = None
        site.close()
        say("everything stopped; reconciling")
        rec = reconcile(store, [])
        # The ledger stamps with the site clock; the ground truth and the timeline are on
        # the host's: one constant offset between them (midshift/simulator/clock.py).
        rows = [(gw, src, kind, ms - site.clock_offset_ms, data)
                for gw, src, kind, ms, data in ledger_rows(store)]
        fleet = _fleet_outcome(site, timeline, rows)
        outcome = evaluate({g.gw_id: g.ground_truth_dir for g in site.gateways},
                           scenario.devices, [r for r in rows if r[0] not in fleet["names"]],
                           timeline.windows, samples, start_ms, traffic_end_ms, rec)
        if scenario.tills:
            from midshift.simulator.till_judge import judge_local_times
            outcome.update(_till_outcome(site, store),
                           **judge_local_times(store, scenario.tills["tz"]),
                           till_business_day=scenario.tills["business_day"])
        if scenario.erp or scenario.refdata:
            outcome.update(_both_ways_outcome(site, store, timeline))
        torn = sum(_count_in_log(g.directory / "agent.log", b"recovered with damage")
                   for g in site.gateways)
        delivered = outcome.pop("_delivered")
        fleet.pop("names")
        outcome["ledger_by_gateway"] = {
            gw: {"gaps": sum(e["gaps"] for e in g["epochs"].values()),
                 "duplicates_discarded": sum(e["duplicates_discarded"]
                                             for e in g["epochs"].values()),
                 "epochs": len(g["epochs"])}
            for gw, g in rec["gateways"].items() if gw in {x.gw_id for x in site.gateways}}
        result = {
            "scenario": scenario.name, "speed": speed, "gateways": n_gw,
            "ledger_db": scenario.ledger_db,
            **outcome, **fleet,
            "torn_tails_repaired": torn,
            "wall_s": round(time.monotonic() - wall_t0, 1),
            "faults": [w.as_dict() for w in timeline.windows],
            "notes": notes + timeline.notes,
            "run_dir": str(run_dir) if tmp is None else None,
            "start_ms": start_ms, "traffic_end_ms": traffic_end_ms, "end_ms": end_ms,
            "site_clock": site_clock,
        }
        result["assertions"] = [{"expect": e.text(), "actual": _actual(result, e.metric),
                                 "passed": e.holds(_actual(result, e.metric))}
                                for e in scenario.expect]
        result["passed"] = all(a["passed"] for a in result["assertions"]) and not notes
        if report_dir is not None:
            from midshift.simulator.shift_report import write_report
            write_report(report_dir, result, scenario, samples, delivered)
            if scenario.tills:
                result["morning_report"] = _morning_report(site, scenario, report_dir, say)
        return result
    finally:
        stop.set()
        if monitor is not None:
            monitor.stop()
        site.close()
        if store is not None:
            store.close()
        if pg is not None:
            pg.close()
        if tmp is not None:
            tmp.cleanup()


def _fleet_outcome(site: SimulatedSite, timeline: Timeline,
                   rows: list[tuple[str, Any, Any, int, Any]]) -> dict[str, Any]:
    """The virtual fleet: every seq each virtual gateway sent must be in the ledger."""
    if site.fleet is None:
        return {"names": set()}
    expected = {name: last for name, (_, last) in site.fleet.expected().items()}
    stored: dict[str, int] = {}
    for r in rows:
        if r[0] in expected:
            stored[r[0]] = stored.get(r[0], 0) + 1
    fr = timeline.fleet_result or {}
    return {"names": set(expected),
            "fleet_gateways": len(expected),
            "fleet_events": sum(expected.values()),
            "fleet_lost": sum(max(0, n - stored.get(g, 0)) for g, n in expected.items()),
            "fleet_drained": bool(fr.get("drained")),
            "fleet_drain_s": fr.get("drain_s"),
            "fleet_resends": fr.get("resends")}


def _ledger_txns(store: LedgerStore | None) -> int:
    if store is None:
        return 0
    try:
        return int(store.query("SELECT COUNT(*) FROM transactions")[0][0])
    except Exception:  # noqa: BLE001 - not created yet, or busy: not caught up either
        return 1 << 62


def _both_ways_outcome(site: SimulatedSite, store: LedgerStore,
                       timeline: Timeline) -> dict[str, Any]:
    from midshift.simulator.both_ways_judge import judge_erp, judge_feed, judge_prices
    bw, out = site.both_ways, {}
    pans = site.pans_typed()
    if bw.erp is not None:
        out.update(judge_erp(store.transactions(), bw.erp, pans))
        out["erp_rate_limited"] = out["erp_requests_by_status"].get("429", 0)
        if site.scenario.erp["feed"]:
            out.update(judge_feed(list(bw.feed), pans))
    if site.scenario.refdata:
        # Both uplinks cut: the gateway is offline and serves what it has.
        cut = [(w.start_ms / 1000, (w.end_ms or w.start_ms) / 1000) for w in timeline.windows
               if w.kind == "link" and w.label.startswith("all ")]
        out.update(judge_prices([f for g in site.gateways
                                 for f in sorted(g.till_truth_dir.glob("*.jsonl"))],
                                bw.published, cut, site.scenario.refdata["grace_s"]))
        out["price_versions_published"] = len(bw.published)
    return out


def _till_outcome(site: SimulatedSite, store: LedgerStore) -> dict[str, Any]:
    from midshift.simulator.till_judge import judge_tills
    db = site.db_url.removeprefix("sqlite:///")
    return judge_tills([g.till_truth_dir for g in site.gateways], store,
                       [g.directory for g in site.gateways],
                       [Path(db)] if site.db_url.startswith("sqlite:") else [],
                       site.pans_typed())


def _morning_report(site: SimulatedSite, scenario: Scenario, report_dir: Path,
                    say: Progress) -> dict[str, Any]:
    """The store manager's report from the ledger, by the real command."""
    import subprocess
    out = report_dir / "morning"
    t = scenario.tills
    proc = subprocess.run([sys.executable, "-m", "midshift.host_tools", "report", "--db", site.db_url,
                           "--day", t["business_day"], "--store", t["store"], "--html", str(out),
                           "--json", str(out / "report.json")], capture_output=True, text=True,
                          timeout=120)
    say(f"morning report: {out / 'report.html'} (exit {proc.returncode})")
    return {"exit": proc.returncode, "html": str(out / "report.html"),
            "stderr": proc.stderr[-2000:]}


def _iso_ms(ms: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _actual(result: dict[str, Any], metric: str) -> Any:
    if metric == "alarms_raised":
        return sorted({a["alarm"] for a in result["alarms"]})
    return result.get(metric)


def _count_in_log(path: Path, needle: bytes) -> int:
    return path.read_bytes().count(needle) if path.exists() else 0


def summary_table(r: dict[str, Any]) -> str:
    lines = [f"scenario {r['scenario']}: {'PASSED' if r['passed'] else 'FAILED'} "
             f"({r['gateways']} gateway(s), speed {r['speed']:g}, {r['wall_s']} s)",
             f"  produced {r['produced']}, committed {r['committed']} (ledger: {r['events']} "
             f"events), lost {r['lost']}, duplicates {r['duplicates']}, corrupt {r['corrupt']}",
             f"  unobserved while powered off {r['unobserved']}, telemetry re-read "
             f"{r['reobserved']}, duplicates discarded by the ledger {r['duplicates_discarded']}",
             f"  recovery_s_max {r['recovery_s_max']}, latency p50 {r['latency_p50_ms']} ms, "
             f"p99 {r['latency_p99_ms']} ms (steady state), failovers {r['failovers']}, "
             f"rejected lines {r['rejected_lines']}, torn tails repaired "
             f"{r['torn_tails_repaired']}",
             "  faults:"]
    if "fleet_gateways" in r:
        lines.insert(-1, f"  virtual fleet: {r['fleet_gateways']} gateways, {r['fleet_events']} "
                     f"events, lost {r['fleet_lost']}, drained in {r['fleet_drain_s']} s "
                     f"({r['fleet_resends']} resends)")
    for rec in r["recoveries"]:
        lines.append(f"    {rec['label']:<28} {rec['events_during']:>6} events held, "
                     f"recovered in {rec['recovery_s']} s")
    if r["alarms"]:
        lines.append("  alarms: " + ", ".join(sorted({f"{a['gateway']} {a['alarm']}"
                                                      for a in r["alarms"]})))
    lines.append("  assertions:")
    for a in r["assertions"]:
        lines.append(f"    [{'ok' if a['passed'] else 'FAIL'}] {a['expect']} "
                     f"(actual {a['actual']})")
    for n in r["notes"]:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def to_json(r: dict[str, Any]) -> str:
    return json.dumps(r, sort_keys=True, default=str)
