"""The reconciliation report: what the ledger holds, per gateway and device, against
what the devices produced.

Per gateway (and journal epoch): events, gaps (seqs missing between the lowest and the
highest stored, with the ranges), duplicates received and discarded (from the receipts
of resent batches), late arrivals (events committed after an event with a higher seq of
the same epoch: the backlog drained beside live traffic, or a resend), and edge-to-ledger
latency percentiles (ledger commit time minus the time the device value was read).

Per device: events and latency; and, given the simulator's ground-truth logs (read by
``midshift.host_tools.ground_truth``), ``lost`` (a value the device produced and a correct agent
must deliver, not in the ledger) and ``unexpected`` (a ledger event no device produced).
Values are compared as the ledger stores them: card numbers in the ground truth are
masked the same way first.

Abandoned epochs: a gateway that lost its journal and was started with ``--new-epoch``
sends an ``epoch_abandoned`` event (source ``agent``) as the new journal's first record,
naming the lost epoch and the seq the ledger had acknowledged. The report lists each with
what the ledger holds of that epoch: events journaled after that were never delivered,
and how many is unknowable.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from midshift.firmware.core.percentile import percentile
from midshift.firmware.core.redact import redact_text
from midshift.host_tools.ground_truth import latest_run, read_ground_truth
from midshift.host_tools.ledger.store import LedgerStore

VALUE_FIELDS = {"scan": "code", "weight": "weight"}  # other kinds carry "value"


def _latency(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(percentile(values, 0.5)), "p99": float(percentile(values, 0.99)),
            "max": float(max(values))}


def _ranges(seqs: list[int]) -> list[list[int]]:
    """Missing seqs between the first and the last of a sorted list, as [first, last]."""
    gaps = []
    for a, b in zip(seqs, seqs[1:], strict=False):
        if b > a + 1:
            gaps.append([a + 1, b - 1])
    return gaps


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)[0]
    if isinstance(value, float):
        return round(value, 6)
    return value


def body_fields(body: str) -> tuple[Any, Any, Any, Any] | None:
    """(src, k, t, d) of an event body; None when the body is not JSON (such an event is
    left out of the report, as SQLite's ``event_fields`` view leaves it out)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return (None, None, None, None)
    return doc.get("src"), doc.get("k"), doc.get("t"), doc.get("d")


def event_value(kind: str, data: dict[str, Any]) -> Any:
    return _norm(data.get(VALUE_FIELDS.get(kind, "value")))


def reconcile(store: LedgerStore, ground_truth: Iterable[str | Path] = (),
              run: str | None = None) -> dict[str, Any]:
    """The report; against ``ground_truth`` files, only entries of ``run`` count (default:
    the latest run in them, ``midshift.host_tools.ground_truth.latest_run``)."""
    report: dict[str, Any] = {"gateways": {}}
    # Bodies are parsed here, not in SQL (json_extract, jsonb), so the same report comes
    # out of SQLite and PostgreSQL.
    rows = [(g, e, s, ms, *f) for g, e, s, ms, body in store.event_rows()
            if (f := body_fields(body)) is not None]
    dups = store.duplicates_by_epoch()
    by_epoch: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        by_epoch[(r[0], r[1])].append(r)
    device_values: dict[str, list[Any]] = defaultdict(list)
    for (gw, epoch), evs in by_epoch.items():
        g = report["gateways"].setdefault(gw, {"events": 0, "incidents": 0, "epochs": {},
                                               "devices": {}, "abandoned_epochs": []})
        seqs = [e[2] for e in evs]
        late, min_later = 0, None
        for e in reversed(evs):  # committed after some higher seq: a late arrival
            if min_later is not None and e[3] > min_later:
                late += 1
            min_later = e[3] if min_later is None else min(min_later, e[3])
        gaps = _ranges(seqs)
        g["epochs"][epoch] = {"events": len(evs), "first_seq": seqs[0], "last_seq": seqs[-1],
                              "gaps": sum(b - a + 1 for a, b in gaps), "gap_ranges": gaps[:50],
                              "duplicates_discarded": dups.get((gw, epoch), 0) or 0,
                              "late_arrivals": late}
        g["events"] += len(evs)
        lat_by_dev: dict[str, list[int]] = defaultdict(list)
        for _, _, _, ledger_ms, source, kind, read_ms, data in evs:
            if source == "agent" and kind == "epoch_abandoned" and isinstance(data, dict):
                g["abandoned_epochs"].append({"epoch": str(data.get("epoch")),
                                              "acked_seq": data.get("acked_seq"),
                                              "new_epoch": epoch})
            if source == "agent":
                g["incidents"] += 1
                continue  # the gateway's own events (incidents), not a device's values
            dev = source if isinstance(source, str) and source else "(unreadable body)"
            if isinstance(read_ms, int | float) and not isinstance(read_ms, bool):
                lat_by_dev[dev].append(ledger_ms - read_ms)
            device_values[dev].append(event_value(kind, data) if isinstance(data, dict)
                                      else None)
        for dev, lat in lat_by_dev.items():
            d = g["devices"].setdefault(dev, {"events": 0, "latency_ms": {}})
            d["events"] += len(lat)
            d["latency_ms"] = _latency(lat)
        all_lat = [x for v in lat_by_dev.values() for x in v]
        g["latency_ms"] = _latency(all_lat)
    for g in report["gateways"].values():  # what the ledger holds of each lost epoch
        for a in g["abandoned_epochs"]:
            old = g["epochs"].get(a["epoch"])
            a["ledger_last_seq"] = old["last_seq"] if old else None
    truth_files = list(ground_truth)
    if truth_files:
        expected: dict[str, list[Any]] = defaultdict(list)
        run = latest_run(truth_files) if run is None else run
        report["ground_truth_run"] = run
        for path in truth_files:
            for entry in read_ground_truth(path, run):
                if entry.get("expect"):
                    expected[entry["device"]].append(_norm(entry.get("value")))
        truth: dict[str, Any] = {}
        for dev in sorted(set(expected) | set(device_values)):
            want, got = Counter(expected.get(dev, [])), Counter(device_values.get(dev, []))
            truth[dev] = {"expected": sum(want.values()), "in_ledger": sum(got.values()),
                          "lost": sum((want - got).values()),
                          "unexpected": sum((got - want).values()),
                          "lost_examples": list((want - got).elements())[:5],
                          "unexpected_examples": list((got - want).elements())[:5]}
        report["ground_truth"] = truth
        report["lost"] = sum(t["lost"] for t in truth.values())
        report["unexpected"] = sum(t["unexpected"] for t in truth.values())
    report["events"] = sum(g["events"] for g in report["gateways"].values())
    report["incidents"] = sum(g["incidents"] for g in report["gateways"].values())
    report["gaps"] = sum(e["gaps"] for g in report["gateways"].values()
                         for e in g["epochs"].values())
    report["duplicates_discarded"] = sum(e["duplicates_discarded"]
                                         for g in report["gateways"].values()
                                         for e in g["epochs"].values())
    report["rejected_batches"] = store.rejection_count()
    report["abandoned_epochs"] = sum(len(g["abandoned_epochs"])
                                     for g in report["gateways"].values())
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"ledger: {r['events']} events, {r['gaps']} missing seqs, "
             f"{r['duplicates_discarded']} duplicates discarded, "
             f"{r['rejected_batches']} batches rejected"]
    for gw, g in sorted(r["gateways"].items()):
        lat = g["latency_ms"]
        lines.append(f"gateway {gw}: {g['events']} events; latency p50 {lat['p50']} ms, "
                     f"p99 {lat['p99']} ms")
        for epoch, e in sorted(g["epochs"].items()):
            lines.append(f"  epoch {epoch}: seq {e['first_seq']}..{e['last_seq']}, "
                         f"{e['gaps']} missing, {e['duplicates_discarded']} duplicates, "
                         f"{e['late_arrivals']} late")
        for a in g["abandoned_epochs"]:
            held = a["ledger_last_seq"]
            lines.append(f"  epoch {a['epoch']} ABANDONED (journal lost; new epoch "
                         f"{a['new_epoch']}): acknowledged up to seq {a['acked_seq']}, ledger "
                         f"holds up to seq {held if held is not None else '(none)'}; events "
                         "journaled after that were lost")
        for dev, d in sorted(g["devices"].items()):
            lines.append(f"  device {dev}: {d['events']} events, latency p99 "
                         f"{d['latency_ms']['p99']} ms")
    if "ground_truth" in r:
        run = f" (run {r['ground_truth_run']})" if r.get("ground_truth_run") else ""
        lines.append(f"against ground truth{run}: {r['lost']} lost, "
                     f"{r['unexpected']} unexpected")
        for dev, t in sorted(r["ground_truth"].items()):
            lines.append(f"  {dev}: expected {t['expected']}, in ledger {t['in_ledger']}, "
                         f"lost {t['lost']}, unexpected {t['unexpected']}")
    return "\n".join(lines)
