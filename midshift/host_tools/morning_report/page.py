"""The morning report as one HTML page: the figures of ``figures.build`` in words, tables
and two charts per store (matplotlib SVG inline through ``midshift/host_tools/charts.py``); no
scripts, no files beside it, printable. Money is formatted in the store's currency; every
time is the store's local time. ``docs/morning-report.md`` explains the sections.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from midshift.host_tools import charts
from midshift.host_tools.money import amount_text

TENDERS = ("cash", "card", "voucher")

CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;color:#222;max-width:1040px;
padding:0 16px}h1{margin-bottom:2px}h2{margin-top:34px;border-bottom:2px solid #ddd}
h3{margin-top:22px}.sub{color:#555;margin-top:0}
#verdict{font-size:17px;padding:12px 16px;border-radius:6px;line-height:1.45}
.ok{background:#e5f4e5;border-left:6px solid #2a7d2a}
.attention{background:#fdecea;border-left:6px solid #b3261e}
table{border-collapse:collapse;margin:6px 0 14px;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr.total td{font-weight:bold;background:#fafafa}
.note{font-size:13px;color:#555}.open{color:#b3261e;font-weight:bold}.done{color:#2a7d2a}
svg.chart{max-width:1000px;display:block;margin:4px 0 10px}
@media print{h2{page-break-before:auto}svg.chart{max-width:100%}}"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _table(head: list[str], rows: list[list[Any]], left: int = 1, cls: str = "",
           total_last: bool = False) -> str:
    out = [f"<table class='{cls}'><tr>" + "".join(
        f"<th class='{'l' if i < left else ''}'>{_e(h)}</th>" for i, h in enumerate(head))
        + "</tr>"]
    for n, row in enumerate(rows):
        tr = "<tr class='total'>" if total_last and n == len(rows) - 1 else "<tr>"
        out.append(tr + "".join(f"<td class='{'l' if i < left else ''}'>{_e(v)}</td>"
                                for i, v in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def _time(iso: str | None, day: str, tz: str | None = None) -> str:
    """Local clock time; with the date when it is not the business day, and with the
    zone's abbreviation when ``tz`` shows that clock time twice (the hour repeated when
    the clocks go back: 02:30 CEST, then 02:30 CET)."""
    if iso is None:
        return ""
    t = dt.datetime.fromisoformat(iso)
    text = t.strftime("%H:%M") if t.date().isoformat() == day else t.strftime("%d %b %H:%M")
    zone = _zone(tz)
    if zone is not None:
        local = t.astimezone(zone)
        if local.replace(fold=0).utcoffset() != local.replace(fold=1).utcoffset():
            text += f" {local.tzname()}"
    return text


def _zone(name: str | None) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None  # figures.py has said so in the store's notes


def _money_rows(label_rows: list[tuple[str, dict[str, int]]], cur: str) -> list[list[Any]]:
    return [[label, f["count"] if "count" in f else "", *[amount_text(f[k], cur) for k in TENDERS],
             amount_text(f["amount"], cur)] for label, f in label_rows]


def _store(s: dict[str, Any], day: str) -> str:
    cur, t, tz = s["currency"], s["totals"], s["tz"]
    money_head = ["", "count", "cash", "card", "voucher", f"total ({cur})"]
    out = [f"<h2 id='store-{_e(s['store'])}'>Store {_e(s['store'])}</h2>",
           f"<p class='sub'>Times are local ({_e(s['tz'])}). This business day ran from "
           f"{_e(_time(s['day_start_local'], day, tz))} to midnight: {s['day_hours']:g} hours"
           + (" (the clocks changed)" if s["day_hours"] != 24 else "") + ". "
           + (f"Closed by {_e(s['closed']['by'])} at "
              f"{_e(_time(s['closed']['at_local'], day, tz))}." if s["closed"] else
              "The day is not closed yet.") + "</p>"]
    out += [f"<p class='note'>{_e(n)}</p>" for n in s["notes"]]
    out += ["<h3>Takings</h3>",
            _table(money_head, _money_rows([("sales", t["sales"]), ("refunds", t["refunds"]),
                                            ("voids", t["voids"])], cur)
                   + [["net (sales - refunds - voids)", "", *[amount_text(t["net"][k], cur)
                                                               for k in TENDERS],
                       amount_text(t["net"]["amount"], cur)]], cls="store-totals",
                   total_last=True),
            "<h3>By till</h3>"]
    till_rows = []
    for till in s["tills"]:
        till_rows += [[till["till"], kind, till[key]["count"],
                       *[amount_text(till[key][k], cur) for k in TENDERS],
                       amount_text(till[key]["amount"], cur)]
                      for kind, key in (("sales", "sales"), ("refunds", "refunds"),
                                        ("voids", "voids"))]
        till_rows.append([till["till"], "net", "", *[amount_text(till["net"][k], cur)
                                                     for k in TENDERS],
                          amount_text(till["net"]["amount"], cur)])
    out.append(_table(["till", "", "count", "cash", "card", "voucher", f"total ({cur})"],
                      till_rows, left=2, cls="tills"))
    out.append(_table(["till", "first", "last", "cashiers", "taken offline"],
                      [[x["till"], _time(x["first_local"], day, tz),
                        _time(x["last_local"], day, tz),
                        ", ".join(x["cashiers"]), x["offline_count"]] for x in s["tills"]],
                      left=1, cls="till-times"))
    out += ["<h3>Sales by hour</h3>", _hourly_chart(s, day)]
    if s["hourly"]["sales_outside_day"]:
        out.append(f"<p class='note'>{s['hourly']['sales_outside_day']} sale(s) of this "
                   "business day were taken outside its calendar hours (not in the chart).</p>")
    out += ["<h3>How customers paid, by till</h3>", _tender_chart(s)]
    out.append("<h3>Offline periods</h3>")
    if s["offline_periods"]:
        out.append("<p>While the store had no connection to the office, the tills kept "
                   "selling; the gateway kept each sale and sent it when the connection "
                   "came back.</p>")
        out.append(_table(
            ["gateway", "offline from", "until", "minutes", "sold meanwhile", "amount",
             "all in the office by", "minutes after reconnecting"],
            [[p["gateway"], _time(p["start_local"], day, tz),
              _time(p["end_local"], day, tz) or "still offline", p["minutes"] or "",
              p["transactions"], amount_text(p["net"]["amount"], cur),
              _time(p["reached_ledger_local"], day, tz) or "-",
              "" if p["reached_after_min"] is None else p["reached_after_min"]]
             for p in s["offline_periods"]], cls="offline"))
    else:
        out.append("<p>The store stayed connected to the office all day.</p>")
    out.append("<h3>Sent twice, counted once</h3>"
               f"<p id='duplicates-{_e(s['store'])}'>The office received "
               f"{s['duplicates_suppressed']} cop{'y' if s['duplicates_suppressed'] == 1 else 'ies'}"
               " of records it already had (a gateway sending again after a lost "
               "confirmation) and kept each only once. They are not in the figures above "
               "twice.</p>")
    out.append("<h3>For review</h3>")
    if s["review"]:
        out.append(_table(
            ["#", "till", "what", "details", "status"],
            [[f["id"], f"{f['till']} #{f['till_seq']}" if f["till"] else f["gateway"],
              f["what"], f["detail"],
              "open" if f["open"] else f"resolved by {f['resolved_by']}: {f['resolution']}"]
             for f in s["review"]], left=5, cls="review"))
        out.append("<p class='note'>Flagged transactions are included in the figures above; "
                   "resolve each with <code>python -m midshift.host_tools review --resolve ID --by "
                   "NAME --why TEXT</code>.</p>")
    else:
        out.append("<p class='done'>Nothing to review.</p>")
    out.append("<h3>Devices and connection</h3>")
    if s["incidents"]:
        out.append(_table(["time", "gateway", "what happened"],
                          [[_time(i["at_local"], day, tz), i["gateway"], i["what"]]
                           for i in s["incidents"]], left=3, cls="incidents"))
    else:
        out.append("<p>No device or connection problems were reported.</p>")
    return "\n".join(out)


def _hours_to_index(iso: str | None, day_start: str) -> float | None:
    if iso is None:
        return None
    a, b = dt.datetime.fromisoformat(iso), dt.datetime.fromisoformat(day_start)
    return (a - b).total_seconds() / 3600 - 0.5  # bar i is centred on i


def _hourly_chart(s: dict[str, Any], day: str) -> str:
    h = s["hourly"]
    scale = 10 ** _exp(s["currency"])
    windows = []
    for p in s["offline_periods"]:
        a = _hours_to_index(p["start_local"], s["day_start_local"])
        b = _hours_to_index(p["end_local"], s["day_start_local"])
        if a is not None:
            windows.append((a, b if b is not None else len(h["labels"]) - 0.5, "offline"))
    return charts.bars(f"hourly-{s['store']}", h["labels"],
                       [(till, [v / scale for v in vals])
                        for till, vals in sorted(h["sales_by_till"].items())],
                       f"sales ({s['currency']})", windows=windows, height_in=2.8)


def _tender_chart(s: dict[str, Any]) -> str:
    scale = 10 ** _exp(s["currency"])
    tills = [x["till"] for x in s["tills"]]
    return charts.bars(f"tenders-{s['store']}", tills,
                       [(k, [x["net"][k] / scale for x in s["tills"]]) for k in TENDERS],
                       f"net takings ({s['currency']})", horizontal=True,
                       height_in=max(1.4, 0.45 * len(tills) + 0.9))


def _exp(currency: str) -> int:
    from midshift.host_tools.money import exponent
    return exponent(currency)


def render(f: dict[str, Any]) -> str:
    day = f["day"]
    title = dt.date.fromisoformat(day).strftime("%A %d %B %Y")
    v = f["verdict"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width'>"
             f"<title>Morning report {_e(day)}</title><style>{CSS}</style></head><body>",
             f"<h1>Morning report: {_e(title)}</h1>",
             "<p class='sub'>Till takings of the business day as the office ledger holds "
             "them" + (f", store {_e(f['store_filter'])}" if f["store_filter"] else "")
             + ".</p>",
             f"<p id='verdict' class='{'ok' if v['ok'] else 'attention'}'>{_e(v['text'])}</p>"]
    if len(f["stores"]) > 1:
        parts.append("<p>Stores: " + ", ".join(
            f"<a href='#store-{_e(s['store'])}'>{_e(s['store'])}</a>" for s in f["stores"])
            + "</p>")
    parts += [_store(s, day) for s in f["stores"]]
    if f["unreadable"]:
        parts.append("<h2>Records the office could not read</h2>" + _table(
            ["#", "gateway", "record", "why", "status"],
            [[u["id"], u["gateway"], u["seq"], u["detail"], "open" if u["open"] else "resolved"]
             for u in f["unreadable"]], left=5))
    generated = dt.datetime.fromtimestamp(f["generated_ms"] / 1000, dt.UTC)
    parts.append(f"<p class='note'>Made from the office ledger at "
                 f"{generated.strftime('%Y-%m-%d %H:%M')} UTC. Amounts are what customers "
                 "paid (cash, card, voucher); a till's figures add up to the store's. The "
                 "same figures are in the JSON file written beside this page.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
