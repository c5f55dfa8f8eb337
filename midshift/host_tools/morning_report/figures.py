"""The morning report's figures, from a ledger: one dict (the JSON file) that the HTML page
only formats, so the page and the file cannot disagree.

Every money figure is an integer in minor units, summed from the same transaction rows:
a till's figures are the sum of its rows, a store's the sum of its tills, and a row's
amount is the sum of its tenders (cash + card + voucher), so the tables add up across and
down. Which day a transaction belongs to is the till's ``business_day``; the clock times
shown are the gateway's acceptance time (``accepted_ms``) in the store's time zone (the
``tz`` the gateway sent with the transactions), so a day with a daylight-saving change
has 23 or 25 hours and each hour has its right local label.

Offline periods come from the gateways' own link incidents (source ``agent``, kind
``link``, ``since_ms``); what was sold during one is the store's transactions accepted by
that gateway inside it, and "reached the office" is the ledger's commit time of the last
of them. Copies received twice come from the ledger's receipts (the gateways' resends the
unique key absorbed).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from midshift.host_tools.ledger.store import LedgerStore

TYPES = ("sale", "refund", "void")
TENDERS = ("cash", "card", "voucher")
FLAG_WORDS = {
    "conflict_till_seq": "two transactions with the same till number",
    "conflict_key": "the same transaction id used twice",
    "unknown_original": "refund or void of a sale the office does not have",
    "card_declined": "card payment declined",
    "card_offline_pending": "card payment taken offline, not yet authorised",
    "unbalanced": "items do not add up to the payment",
    "late": "arrived after the day was closed",
    "invalid": "could not be read as a transaction",
    "erp_refused": "the ERP refused it (dead letter; not in the ERP)",
}


def _zone(name: str) -> tuple[dt.tzinfo, str | None]:
    try:
        return ZoneInfo(name), None
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC, f"time zone {name!r} is unknown here: times are shown in UTC"


class Clock:
    """Local times of one store."""

    def __init__(self, tz: dt.tzinfo) -> None:
        self.tz = tz

    def at(self, ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(ms / 1000, self.tz)

    def iso(self, ms: int | None) -> str | None:
        return None if ms is None else self.at(ms).isoformat(timespec="seconds")

    def day_window(self, day: str) -> tuple[int, int]:
        """Local midnight to the next local midnight, in ms (23 or 25 hours apart on a
        daylight-saving day)."""
        d = dt.date.fromisoformat(day)
        start = dt.datetime.combine(d, dt.time(0), self.tz)
        end = dt.datetime.combine(d + dt.timedelta(days=1), dt.time(0), self.tz)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    def hours(self, start_ms: int, end_ms: int) -> list[tuple[int, str]]:
        """(start ms, local label) of each real hour of the window; a repeated local hour
        (clocks going back) is labelled with its zone abbreviation."""
        out: list[tuple[int, str]] = []
        for ms in range(start_ms, end_ms, 3_600_000):
            t = self.at(ms)
            out.append((ms, t.strftime("%H:00")))
        seen = Counter(label for _, label in out)
        return [(ms, f"{label} {self.at(ms).tzname()}" if seen[label] > 1 else label)
                for ms, label in out]


def _zero() -> dict[str, int]:
    return {"count": 0, "amount": 0, **{k: 0 for k in TENDERS}}


def _add(into: dict[str, int], r: dict[str, Any]) -> None:
    into["count"] += 1
    for k in TENDERS:
        into[k] += r[k]
        into["amount"] += r[k]


def _net(f: dict[str, dict[str, int]]) -> dict[str, int]:
    """Sales less refunds and voids (money in the drawer and on the cards)."""
    return {k: f["sale"][k] - f["refund"][k] - f["void"][k] for k in ("amount", *TENDERS)}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    f = {t: _zero() for t in TYPES}
    for r in rows:
        _add(f[r["type"]], r)
    return {"sales": f["sale"], "refunds": f["refund"], "voids": f["void"], "net": _net(f),
            "offline_count": sum(r["offline"] for r in rows)}


def _agent_events(ledger: LedgerStore) -> list[dict[str, Any]]:
    """The gateways' own incidents (link, device, epoch_abandoned), by gateway and time."""
    out = []
    for gw, seq, ledger_ms, body in ledger.query(
            f"SELECT gateway, seq, ledger_ms, body FROM events WHERE body LIKE "
            f"{ledger.placeholder}", ('%"src":"agent"%',)):
        try:
            doc = json.loads(body)
        except ValueError:
            continue
        if doc.get("src") != "agent" or not isinstance(doc.get("d"), dict):
            continue
        out.append({"gateway": gw, "seq": seq, "ledger_ms": ledger_ms, "kind": doc.get("k"),
                    "at_ms": int(doc["d"].get("since_ms") or doc.get("t") or 0),
                    "data": doc["d"]})
    out.sort(key=lambda e: (e["gateway"], e["at_ms"], e["seq"]))
    return out


def _offline_periods(events: list[dict[str, Any]], gateways: set[str]
                     ) -> list[dict[str, Any]]:
    periods: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["kind"] != "link" or e["gateway"] not in gateways:
            continue
        gw, state = e["gateway"], e["data"].get("state")
        if state == "offline" and gw not in open_:
            open_[gw] = {"gateway": gw, "start_ms": e["at_ms"], "end_ms": None}
            periods.append(open_[gw])
        elif state == "online" and gw in open_:
            period = open_.pop(gw)
            period["end_ms"], period["uplink_back"] = e["at_ms"], e["data"].get("uplink")
    return periods


def _incident_text(e: dict[str, Any]) -> str:
    d = e["data"]
    if e["kind"] == "link":
        return ("lost its connection to the office" if d.get("state") == "offline" else
                f"connected to the office again (over {d.get('uplink') or 'an uplink'})")
    if e["kind"] == "device":
        err = f": {d['error']}" if d.get("error") else ""
        return f"device {d.get('device')} is {d.get('state')}{err}"
    if e["kind"] == "epoch_abandoned":
        return "started a new journal after losing its old one (check for missing data)"
    return f"{e['kind']}: {json.dumps(d, sort_keys=True)}"


def _store(ledger_rows: list[dict[str, Any]], name: str, day: str, events: list[dict[str, Any]],
           gateways: set[str], flags: list[dict[str, Any]], closed: dict[str, Any] | None,
           receipts: list[tuple[str, int, int]]) -> dict[str, Any]:
    rows = [r for r in ledger_rows if r["store"] == name]
    tz_name = Counter(r["tz"] for r in rows).most_common(1)[0][0]
    currencies = Counter(r["currency"] for r in rows)
    currency = currencies.most_common(1)[0][0]
    zone, tz_note = _zone(tz_name)
    clock = Clock(zone)
    start, end = clock.day_window(day)
    notes = [tz_note] if tz_note else []
    if len(currencies) > 1:
        notes.append("transactions in more than one currency: " + ", ".join(
            f"{c} ({n})" for c, n in sorted(currencies.items())) + "; amounts are summed as "
            f"if all were {currency}")
    tills = sorted({r["till"] for r in rows})
    per_till = []
    for till in tills:
        mine = [r for r in rows if r["till"] == till]
        per_till.append({"till": till, **_summary(mine),
                         "first_local": clock.iso(min(r["accepted_ms"] for r in mine)),
                         "last_local": clock.iso(max(r["accepted_ms"] for r in mine)),
                         "cashiers": sorted({r["cashier"] for r in mine})})
    hours = clock.hours(start, end)
    hourly = {t: [0] * len(hours) for t in tills}
    outside = 0
    for r in rows:
        if r["type"] != "sale":
            continue
        i = (r["accepted_ms"] - start) // 3_600_000
        if 0 <= i < len(hours):
            hourly[r["till"]][i] += r["cash"] + r["card"] + r["voucher"]
        else:
            outside += 1
    periods = []
    for p in _offline_periods(events, gateways):
        p_end = p["end_ms"] if p["end_ms"] is not None else 1 << 62
        sold = [r for r in rows if r["gateway"] == p["gateway"]
                and p["start_ms"] <= r["accepted_ms"] < p_end]
        if (p_end < start or p["start_ms"] >= end) and not sold:
            continue  # another day's outage with nothing of this day in it
        reached = max((r["ledger_ms"] for r in sold), default=None)
        periods.append({
            "gateway": p["gateway"], "start_local": clock.iso(p["start_ms"]),
            "end_local": clock.iso(p["end_ms"]), "start_ms": p["start_ms"],
            "end_ms": p["end_ms"],
            "minutes": None if p["end_ms"] is None else round((p["end_ms"] - p["start_ms"])
                                                             / 60000, 1),
            "transactions": len(sold), **{k: v for k, v in _summary(sold).items()
                                         if k in ("sales", "refunds", "voids", "net")},
            "reached_ledger_local": clock.iso(reached),
            "reached_after_min": None if reached is None or p["end_ms"] is None else
            round(max(0, reached - p["end_ms"]) / 60000, 1)})
    keys = {(r["gateway"], r["epoch"], r["seq"]) for r in rows}
    review = [{**{k: f[k] for k in ("id", "kind", "detail", "till", "till_seq", "gateway",
                                     "seq", "resolved_by", "resolution")},
               "what": FLAG_WORDS.get(f["kind"], f["kind"]),
               "raised_local": clock.iso(f["raised_ms"]),
               "resolved_local": clock.iso(f["resolved_ms"]),
               "open": f["resolved_ms"] is None}
              for f in flags if (f["gateway"], f["epoch"], f["seq"]) in keys]
    incidents = [{"gateway": e["gateway"], "kind": e["kind"], "at_local": clock.iso(e["at_ms"]),
                  "what": _incident_text(e), "data": e["data"]}
                 for e in events if e["gateway"] in gateways and start <= e["at_ms"] < end]
    dups = sum(n for gw, ms, n in receipts
               if gw in gateways and start <= ms < end + 86_400_000)
    summary = _summary(rows)
    return {"store": name, "tz": tz_name, "currency": currency, "notes": notes,
            "day_start_local": clock.iso(start), "day_end_local": clock.iso(end),
            "day_hours": round((end - start) / 3_600_000, 2), "gateways": sorted(gateways),
            "closed": None if closed is None else {"by": closed["closed_by"],
                                                   "at_local": clock.iso(closed["closed_ms"])},
            "totals": summary, "tills": per_till,
            "hourly": {"labels": [label for _, label in hours], "sales_by_till": hourly,
                       "sales_outside_day": outside},
            "offline_periods": periods,
            "duplicates_suppressed": dups,
            "review": review, "review_open": sum(f["open"] for f in review),
            "incidents": incidents}


def build(ledger: LedgerStore, day: str, only: str | None = None) -> dict[str, Any]:
    """The report's figures for business ``day`` (every store, or ``only``)."""
    rows = ledger.transactions(day=day)
    known = sorted({s for (s,) in ledger.query("SELECT DISTINCT store FROM transactions")})
    names = sorted({r["store"] for r in rows if only is None or r["store"] == only})
    gateways: dict[str, set[str]] = {}
    for gw, s in ledger.query("SELECT DISTINCT gateway, store FROM transactions"):
        gateways.setdefault(s, set()).add(gw)
    events = _agent_events(ledger)
    flags = ledger.flags()
    closed = {(c["store"], c["business_day"]): c for c in ledger.closed_days()}
    receipts = [(g, int(ms), int(n)) for g, ms, n in ledger.query(
        "SELECT gateway, ledger_ms, duplicates FROM receipts WHERE duplicates > 0")]
    stores = [_store(rows, s, day, events, gateways.get(s, set()), flags,
                     closed.get((s, day)), receipts) for s in names]
    unreadable = [{k: f[k] for k in ("id", "gateway", "seq", "detail")} | {
        "open": f["resolved_ms"] is None} for f in flags if f["kind"] == "invalid"]
    return {"day": day, "store_filter": only, "known_stores": known, "stores": stores,
            "unreadable": unreadable, "generated_ms": int(time.time() * 1000),
            "verdict": verdict(day, stores, unreadable)}


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def verdict(day: str, stores: list[dict[str, Any]], unreadable: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """One paragraph in plain words, and whether anything needs a person."""
    from midshift.host_tools.money import money

    if not stores:
        return {"ok": False, "text": f"No till transactions for {day} are in the office "
                "ledger. If the store was open, check that its gateway is connected."}
    parts, attention = [], 0
    for s in stores:
        t, cur = s["totals"], s["currency"]
        text = (f"Store {s['store']}: {_n(t['sales']['count'], 'sale')} "
                f"({money(t['sales']['amount'], cur)}), {_n(t['refunds']['count'], 'refund')} "
                f"({money(t['refunds']['amount'], cur)}), {_n(t['voids']['count'], 'void')} "
                f"({money(t['voids']['amount'], cur)}); net takings "
                f"{money(t['net']['amount'], cur)}.")
        done = [p for p in s["offline_periods"] if p["end_ms"] is not None]
        if s["offline_periods"]:
            n = sum(p["transactions"] for p in s["offline_periods"])
            times = len(s["offline_periods"])
            text += (" The store was offline " + ("once" if times == 1 else f"{times} times")
                     + (f" (longest {max(p['minutes'] for p in done):g} minutes)" if done else "")
                     + f"; {_n(n, 'transaction')} taken meanwhile "
                     + ("all reached the office." if len(done) == times
                        else "and it was still offline at the last report."))
        if s["review_open"]:
            attention += s["review_open"]
            kinds = Counter(f["what"] for f in s["review"] if f["open"])
            text += (f" {_n(s['review_open'], 'item')} to review: "
                     + "; ".join(f"{n} x {w}" for w, n in kinds.most_common()) + ".")
        parts.append(text)
    attention += sum(u["open"] for u in unreadable)
    head = ("Everything adds up; nothing needs review." if attention == 0 else
            f"Needs attention: {_n(attention, 'item')} to review before the day is closed.")
    return {"ok": attention == 0, "text": " ".join([head, *parts]), "attention": attention}
