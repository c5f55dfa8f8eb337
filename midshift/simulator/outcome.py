"""What a scenario proved: the devices' ground truth against the ledger, per gateway and
device, with the timeline's fault windows and the gateways' status over time.

Matching. Each ground-truth entry a correct agent must deliver (``expect: true``) is
matched with a ledger event of the same gateway and device by value, as the device's type
module says (``truth_value`` and ``ledger_value`` in ``midshift/simulator/devices/<type>.py``): a
barcode (masked as the pipeline masks card numbers), a weight in grams, a register's or
node's (tag, value).

- ``lost``: expected, not in the ledger, and produced while the gateway was powered.
- ``unobserved``: expected, not in the ledger, produced while no agent was watching
  (before it first reported its devices, from half a second before a power cut until its
  devices were back, the last second before the devices stopped): nobody was there to
  read it. A scanner rarely counts here: it knows when no one has the port open and logs
  such scans as not expected.
- ``duplicates``: a transaction (scan, weight) in the ledger more often than the device
  produced it. Telemetry is state, not transactions: the same register value read again
  by a restarted agent is a new observation, counted as ``reobserved``.
- ``corrupt``: a ledger event no device ever produced (garbage that got through, a
  mangled value) or whose body cannot be read.

``recovery_s`` per fault that lasts: from the end of the fault until the last event it
held was committed (0 when everything was committed before the end, as when the
secondary uplink carried the traffic). Held: produced before the fault ended and
committed after it began, so the journal's unacknowledged events at a power cut count. ``latency_*``: device to ledger commit
(the host's clock on both sides) for events produced in steady state, i.e. outside every
fault window and its recovery.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from midshift.firmware.core.percentile import percentile
from midshift.host_tools.reconcile import body_fields
from midshift.simulator.devices import device_type
from midshift.simulator.ground_truth import read_ground_truth
from midshift.simulator.status_monitor import alarms, failovers, rejected_lines
from midshift.simulator.timeline import FaultWindow

UNOBSERVED_LEAD_MS = 500
HELD_LOOKBACK_MS = 30_000  # an event older than this at the fault's start was not held by it
CLOCK_SLACK_MS = 50  # ground truth is stamped just after the write; a reader may be quicker


def pct(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else round(float(p), 2)


def ledger_rows(store: Any) -> list[tuple[str, Any, Any, int, Any]]:
    """(gateway, source, kind, ledger_ms, data) of every event in the ledger, bodies read
    as the reconciliation reads them; an unreadable body gives source None (corrupt)."""
    out = []
    for gw, _epoch, _seq, ledger_ms, body in store.event_rows():
        f = body_fields(body)
        src, kind, _t, data = f if f is not None else (None, None, None, None)
        out.append((gw, src, kind, ledger_ms, data if isinstance(data, dict) else {}))
    return out


def _unwatched(windows: list[FaultWindow], samples: list[tuple[int, str, dict[str, Any]]],
               start_ms: int, traffic_end_ms: int) -> dict[str, list[tuple[int, int]]]:
    """Per gateway, when no agent was watching its devices: before its first status with
    every device ok; from half a second before a power cut until the first such status
    after power-on (15 s at most); the last second before the devices stopped (a value
    produced then may not have been sampled yet)."""
    def first_ok(gw: str, after: int) -> int | None:
        return next((t for t, g, doc in samples if g == gw and t >= after and doc.get("devices")
                     and all(d.get("state") == "ok" for d in doc["devices"])), None)

    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for gw in {g for _, g, _ in samples}:
        out[gw].append((0, first_ok(gw, 0) or start_ms))
        out[gw].append((traffic_end_ms - 1000, traffic_end_ms + 60_000))
    for w in windows:
        if w.kind != "power_cut":
            continue
        on = w.end_ms or traffic_end_ms
        for gw in w.gateways:
            back = first_ok(gw, on) or on + 15000
            out[gw].append((w.start_ms - UNOBSERVED_LEAD_MS, min(back, on + 15000)))
    return out


def match(produced: list[int], committed: list[int]) -> tuple[list[tuple[int, int]], list[int],
                                                               int]:
    """Pair productions with commits of the same value: each commit, in time order, takes
    the latest production not yet paired that came before it. Repeated telemetry values
    (a status string, a counter that wrapped) then pair with their own occurrence, not with
    an earlier one that was never delivered. Returns (pairs, unpaired productions, extra
    commits)."""
    produced, committed = sorted(produced), sorted(committed)
    pairs: list[tuple[int, int]] = []
    waiting: list[int] = []
    i = extra = 0
    for c in committed:
        while i < len(produced) and produced[i] <= c + CLOCK_SLACK_MS:
            waiting.append(produced[i])
            i += 1
        if waiting:
            pairs.append((waiting.pop(), c))
        else:
            extra += 1
    return pairs, waiting + produced[i:], extra


def evaluate(gateways: dict[str, Path], devices: dict[str, dict[str, Any]],
             rows: list[tuple[str, Any, Any, int, Any]],
             windows: list[FaultWindow], samples: list[tuple[int, str, dict[str, Any]]],
             start_ms: int, traffic_end_ms: int, reconcile_report: dict[str, Any]
             ) -> dict[str, Any]:
    """``gateways``: gateway id -> its ground-truth directory (``DEVICE.jsonl`` files)."""
    ledger: dict[tuple[str, str], dict[Any, list[int]]] = defaultdict(lambda: defaultdict(list))
    corrupt = 0
    for gw, source, kind, ledger_ms, data in rows:
        if (source == "agent" or kind == "txn") and gw in gateways:
            continue  # the gateway's own incidents, and tills' sales (midshift/simulator/till_judge.py)
        if source is None or gw not in gateways or source not in devices:
            corrupt += 1
            continue
        try:
            ledger[(gw, source)][device_type(devices[source]["type"]).ledger_value(data)
                                 ].append(ledger_ms)
        except (ValueError, TypeError, AttributeError):
            corrupt += 1
    unwatched = _unwatched(windows, samples, start_ms, traffic_end_ms)
    delivered: list[tuple[str, int, int]] = []  # (gateway, produced ms, committed ms)
    table = []
    totals = defaultdict(int)
    for gw, gt_dir in gateways.items():
        for dev, spec in devices.items():
            kind_of = device_type(spec["type"])
            transaction = kind_of.TRANSACTION
            row = {"gateway": gw, "device": dev, "type": spec["type"], "produced": 0,
                   "committed": 0, "lost": 0, "unobserved": 0, "duplicates": 0,
                   "reobserved": 0, "corrupt": 0, "latency_ms": []}
            path = gt_dir / f"{dev}.jsonl"
            entries = list(read_ground_truth(path)) if path.exists() else []
            got = ledger.get((gw, dev), {})
            seen_keys = {kind_of.truth_value(e) for e in entries if e.get("kind") != "fault"}
            want: dict[Any, list[int]] = defaultdict(list)
            for e in entries:
                if e.get("expect") and e.get("kind") != "fault":
                    want[kind_of.truth_value(e)].append(e["t_ms"])
            for key, times in want.items():
                pairs, unpaired, extra = match(times, got.get(key, []))
                row["produced"] += len(times)
                row["committed"] += len(pairs)
                for t, c in pairs:
                    delivered.append((gw, t, c))
                    row["latency_ms"].append(c - t)
                for t in unpaired:
                    if any(a <= t <= b for a, b in unwatched.get(gw, [])):
                        row["unobserved"] += 1
                    else:
                        row["lost"] += 1
                if extra:
                    kind = "duplicates" if transaction else "reobserved"
                    row[kind] += extra
            for key, commits in got.items():
                if key not in want:
                    if key in seen_keys and not transaction:
                        row["reobserved"] += len(commits)  # served before, read again
                    elif key in seen_keys:
                        row["duplicates"] += len(commits)  # produced, not for delivery
                    else:
                        row["corrupt"] += len(commits)
            lat = row.pop("latency_ms")
            row["latency_p50_ms"], row["latency_p99_ms"] = pct(lat, 0.5), pct(lat, 0.99)
            for k in ("produced", "committed", "lost", "unobserved", "duplicates",
                      "reobserved", "corrupt"):
                totals[k] += row[k]
            table.append(row)
    recoveries = []
    for w in windows:
        if w.end_ms is None or w.end_ms == w.start_ms or w.kind == "fleet":
            continue
        # Held by the fault: produced before it ended and committed after it began (those
        # in flight or in the journal at a power cut count, as do those produced during it).
        during = [c for gw, t, c in delivered if gw in w.gateways and t <= w.end_ms
                  and c >= w.start_ms and t >= w.start_ms - HELD_LOOKBACK_MS]
        rec = max(0.0, (max(during) - w.end_ms) / 1000) if during else 0.0
        recoveries.append({"label": w.label, "kind": w.kind, "start_ms": w.start_ms,
                           "end_ms": w.end_ms, "events_during": len(during),
                           "recovery_s": round(rec, 3)})
    busy = [(w.start_ms, w.end_ms + int(r["recovery_s"] * 1000) + 1000)
            for w, r in zip([w for w in windows if w.end_ms and w.end_ms != w.start_ms
                             and w.kind != "fleet"], recoveries, strict=True)]
    busy += [(w.start_ms - 1000, w.start_ms + 5000) for w in windows if w.end_ms == w.start_ms]
    steady = [c - t for _, t, c in delivered if t > start_ms + 5000
              and not any(a <= t <= b for a, b in busy)]
    all_lat = [c - t for _, t, c in delivered]
    fo = failovers(samples)
    return {
        "events": reconcile_report.get("events", 0),
        "produced": totals["produced"],
        "committed": totals["committed"],
        "lost": totals["lost"],
        "duplicates": totals["duplicates"],
        "corrupt": totals["corrupt"] + corrupt,
        "unobserved": totals["unobserved"],
        "reobserved": totals["reobserved"],
        "recovery_s_max": max((r["recovery_s"] for r in recoveries), default=0.0),
        "recoveries": recoveries,
        "latency_p50_ms": pct(steady, 0.5),
        "latency_p99_ms": pct(steady, 0.99),
        "latency_p99_ms_all": pct(all_lat, 0.99),
        "latency_steady_events": len(steady),
        "failovers": sum(fo.values()),
        "alarms": alarms(samples),
        "rejected_lines": sum(rejected_lines(samples).values()),
        "duplicates_discarded": reconcile_report.get("duplicates_discarded", 0),
        "gaps": reconcile_report.get("gaps", 0),
        "rejected_batches": reconcile_report.get("rejected_batches", 0),
        "devices": table,
        "_delivered": delivered,
    }
