"""The scenario report: one self-contained HTML page (inline SVG charts drawn by matplotlib
through ``midshift/host_tools/charts.py``, no scripts, no files beside it) and the same figures as ``result.json``, for a store manager or an
auditor to read the next morning.

Charts share one time axis (seconds since the shift started) with the fault windows
shaded: events produced and committed per second, backlog depth per gateway, active
uplink per gateway; then the latency distribution, the reconciliation and per-device
tables, faults with their recovery, alarms and the assertions.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from midshift.host_tools import charts
from midshift.simulator.devices import is_transaction
from midshift.simulator.scenario import Scenario

UPLINK_LANES = ["none", "secondary", "primary"]
LAT_BINS = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 120000]
MAX_LINES = len(charts.COLORS)  # gateways drawn per chart


def _e(x: Any) -> str:
    return html.escape(str(x))


def _windows(r: dict[str, Any], t0: int) -> list[charts.Window]:
    return [((w["start_ms"] - t0) / 1000, ((w["end_ms"] or w["start_ms"]) - t0) / 1000,
             w["label"]) for w in r["faults"]]


X_LABEL = "seconds since the shift started"


def _rate_chart(r: dict[str, Any], delivered: list[tuple[str, int, int]], t0: int,
                t_max: float) -> str:
    produced = Counter(int((t - t0) / 1000) for _, t, _ in delivered)
    committed = Counter(int((c - t0) / 1000) for _, _, c in delivered)
    secs = list(range(int(t_max) + 1))
    # Committed underneath, produced dashed on top: where they part, the backlog grows.
    return charts.lines("rate", [
        ("committed in the ledger", secs, [committed.get(s, 0) for s in secs], "step"),
        ("produced by the devices", secs, [produced.get(s, 0) for s in secs], "dashed-step")],
        X_LABEL, "events per second", _windows(r, t0), x_max=t_max)


def _series(samples: list[tuple[int, str, dict[str, Any]]], t0: int
            ) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    by_gw: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for t, gw, doc in samples:
        by_gw[gw].append(((t - t0) / 1000, doc))
    return by_gw


def _backlog_chart(r: dict[str, Any], series: dict[str, list[tuple[float, dict[str, Any]]]],
                   t0: int, t_max: float) -> str:
    lines = []
    for gw in sorted(series)[:MAX_LINES]:
        pts = [(t, float(d.get("backlog_records") or 0)) for t, d in series[gw] if t >= 0]
        lines.append((gw, [t for t, _ in pts], [v for _, v in pts], "step"))
    return charts.lines("backlog", lines, X_LABEL, "records waiting in the journal",
                        _windows(r, t0), x_max=t_max)


def _uplink_chart(r: dict[str, Any], series: dict[str, list[tuple[float, dict[str, Any]]]],
                  t0: int, t_max: float) -> str:
    lines = []
    for i, gw in enumerate(sorted(series)[:MAX_LINES]):
        pts = [(t, UPLINK_LANES.index(d.get("uplink", "none")) + 0.06 * i
                if d.get("uplink") in UPLINK_LANES else 0.06 * i) for t, d in series[gw] if t >= 0]
        lines.append((gw, [t for t, _ in pts], [v for _, v in pts], "step"))
    return charts.lines("uplink", lines, X_LABEL, "active uplink", _windows(r, t0),
                        y_ticks=list(enumerate(UPLINK_LANES)), height_in=2.0,
                        x_max=t_max) + (
        "<p class='note'>No status arrives while every uplink is down: the line holds its "
        "last value through such a gap.</p>")


def _latency_chart(delivered: list[tuple[str, int, int]]) -> str:
    counts = [0] * (len(LAT_BINS) + 1)
    for _, t, c in delivered:
        lat = c - t
        counts[next((i for i, b in enumerate(LAT_BINS) if lat < b), len(LAT_BINS))] += 1
    labels = [f"<{b} ms" if b < 1000 else f"<{b / 1000:g} s" for b in LAT_BINS]
    labels.append(f"\u2265{LAT_BINS[-1] / 1000:g} s")
    return charts.bars("latency", labels, [("events", counts)], "events",
                       "events by time from the device to the ledger (backlogged events make "
                       "the long tail)", value_labels=True, height_in=2.4)


def _table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    out = [f"<table class='{cls}'><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{'' if v is None else _e(v)}</td>" for v in row)
                   + "</tr>")
    return "".join(out) + "</table>"


def _verdict(r: dict[str, Any]) -> str:
    tx = sum(d["produced"] for d in r["devices"] if is_transaction(d["type"]))
    if r["lost"] == 0 and r["duplicates"] == 0 and r["corrupt"] == 0:
        return (f"Every one of the {r['produced']:,} readings the devices produced for the "
                f"ledger ({tx:,} of them scans and weights) is in the ledger exactly once. "
                f"Nothing was lost, duplicated or altered.")
    return (f"Attention: {r['lost']} lost, {r['duplicates']} duplicated and {r['corrupt']} "
            f"altered or unknown records out of {r['produced']:,} produced. See the tables "
            "below.")


CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1060px}
h1{margin-bottom:4px}.pass{color:#176317}.fail{color:#b00}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
svg.chart{max-width:1000px;display:block}.legend,.note{font-size:12px;color:#555;margin:2px 0 16px}.figures td{min-width:80px}"""


def render(r: dict[str, Any], scenario: Scenario,
           samples: list[tuple[int, str, dict[str, Any]]],
           delivered: list[tuple[str, int, int]]) -> str:
    t0 = r["start_ms"]
    t_max = (r["end_ms"] - t0) / 1000
    series = _series(samples, t0)
    ok = r["passed"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>midshift: "
             f"{_e(r['scenario'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Shift report: {_e(r['scenario'])}</h1>",
             f"<p>{_e(scenario.description)}</p>",
             f"<h2 class='{'pass' if ok else 'fail'}'>{'PASSED' if ok else 'FAILED'}</h2>",
             f"<p id='verdict'>{_e(_verdict(r))}</p>",
             _table(["produced", "committed", "lost", "duplicates", "corrupt",
                     "recovery_s_max", "latency p99 ms", "failovers", "alarms"],
                    [[r["produced"], r["committed"], r["lost"], r["duplicates"], r["corrupt"],
                      r["recovery_s_max"], r["latency_p99_ms"], r["failovers"],
                      len(r["alarms"])]], "figures"),
             f"<p class='note'>{r['gateways']} gateway(s); speed {r['speed']:g}; "
             f"{r['wall_s']} s of wall time.</p>",
             "<h2>Events per second</h2>", _rate_chart(r, delivered, t0, t_max),
             "<h2>Backlog</h2>", _backlog_chart(r, series, t0, t_max),
             "<h2>Active uplink</h2>", _uplink_chart(r, series, t0, t_max),
             "<h2>Latency</h2>",
             f"<p>Steady state (outside faults and their recovery): p50 "
             f"{r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms over "
             f"{r['latency_steady_events']} events. All events: p99 "
             f"{r['latency_p99_ms_all']} ms.</p>", _latency_chart(delivered)]
    per_gw: dict[str, Counter] = defaultdict(Counter)
    for d in r["devices"]:
        per_gw[d["gateway"]].update({k: d[k] for k in ("produced", "committed", "lost",
                                                       "duplicates", "unobserved")})
    parts += ["<h2>Reconciliation</h2>",
              _table(["gateway", "produced", "committed", "lost", "duplicates in ledger",
                      "resent copies discarded", "missing seqs", "unobserved (powered off)"],
                     [[gw, c["produced"], c["committed"], c["lost"], c["duplicates"],
                       r["ledger_by_gateway"].get(gw, {}).get("duplicates_discarded", 0),
                       r["ledger_by_gateway"].get(gw, {}).get("gaps", 0),
                       c["unobserved"]] for gw, c in sorted(per_gw.items())]),
              f"<p>The ledger discarded {r['duplicates_discarded']} resent copies (the "
              f"unique key on gateway, epoch and sequence absorbed them); missing sequence "
              f"numbers: {r['gaps']}; batches rejected: {r['rejected_batches']}.</p>",
              (f"<p>Virtual fleet: {r['fleet_gateways']} gateways sent {r['fleet_events']:,} "
               f"events after the outage, all at once with their backlogs; lost "
               f"{r['fleet_lost']}; drained in {r['fleet_drain_s']} s with "
               f"{r['fleet_resends']} resends.</p>" if "fleet_gateways" in r else ""),
              "<h2>Devices</h2>",
              _table(["gateway", "device", "type", "produced", "committed", "lost",
                      "duplicates", "unobserved", "re-read", "corrupt", "p50 ms", "p99 ms"],
                     [[d["gateway"], d["device"], d["type"], d["produced"], d["committed"],
                       d["lost"], d["duplicates"], d["unobserved"], d["reobserved"],
                       d["corrupt"], d["latency_p50_ms"], d["latency_p99_ms"]]
                      for d in r["devices"][:200]]),
              "<h2>Faults and recovery</h2>",
              _table(["fault", "gateways", "from s", "to s", "events held", "recovery s"],
                     [[f["label"], ", ".join(f["gateways"])[:60],
                       round((f["start_ms"] - t0) / 1000, 1),
                       round(((f["end_ms"] or f["start_ms"]) - t0) / 1000, 1),
                       next((x["events_during"] for x in r["recoveries"]
                             if x["start_ms"] == f["start_ms"] and x["label"] == f["label"]), ""),
                       next((x["recovery_s"] for x in r["recoveries"]
                             if x["start_ms"] == f["start_ms"] and x["label"] == f["label"]), "")]
                      for f in r["faults"]]),
              "<h2>Alarms</h2>",
              _table(["gateway", "alarm", "first s", "last s", "detail"],
                     [[a["gateway"], a["alarm"], round((a["first_ms"] - t0) / 1000, 1),
                       round((a["last_ms"] - t0) / 1000, 1), a["detail"][:80]]
                      for a in r["alarms"]]) if r["alarms"] else "<p>No alarms.</p>",
              f"<p>Scanner lines refused by the agents (garbage, overlong, partial): "
              f"{r['rejected_lines']}; torn journal tails found and cut at power-on: "
              f"{r['torn_tails_repaired']}.</p>",
              "<h2>Assertions</h2>",
              _table(["assertion", "actual", "result"],
                     [[a["expect"], a["actual"], "ok" if a["passed"] else "FAILED"]
                      for a in r["assertions"]])]
    if r["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in r["notes"])
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: Path, r: dict[str, Any], scenario: Scenario,
                 samples: list[tuple[int, str, dict[str, Any]]],
                 delivered: list[tuple[str, int, int]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_text(json.dumps(r, indent=1, sort_keys=True, default=str))
    path = directory / "report.html"
    path.write_text(render(r, scenario, samples, delivered), encoding="utf-8")
    return path
