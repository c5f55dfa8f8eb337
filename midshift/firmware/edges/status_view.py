"""The status page's HTML, for store staff: made from the agent's status document only.

``render(doc, tz, refresh_s)`` turns the same document the ``status`` topic and the
metrics carry (``Agent.snapshot()``) into one self-contained page: no script, no file
to fetch, a ``<meta http-equiv="refresh">`` to stay current. Nothing here counts or
decides anything, so the page cannot disagree with the status or the metrics.

Every value that came from outside (device and uplink names, errors, alarm details) goes
through ``html.escape``. Times are shown in the store's time zone (``[store] tz``, else
the gateway's own), in words a person at the counter reads: "Online since 09:12",
"oldest waiting 3 min", not ``backlog_records``.
"""

from __future__ import annotations

import time
from datetime import datetime, tzinfo
from html import escape
from typing import Any

# What each alarm means at the counter, and who acts on it.
ALARM_WORDS = {
    "no_ack": "Head office has not confirmed what the gateway sent for a while.",
    "device_down": "A device has stopped answering.",
    "clock_offset": "The gateway's clock disagrees with head office's.",
    "ledger_rejected": "Head office refused some records; a technician must settle them.",
    "journal_lost": "The gateway's storage was lost; it refuses new sales. Call a technician.",
    "journal_no_space": "The gateway's disk is full.",
    "journal_commit_write": "The gateway cannot write to its disk.",
    "command_id_write": "The gateway cannot write to its disk.",
    "epoch_mark_write": "The gateway cannot write to its disk.",
    "sync_log_write": "The gateway cannot write its log.",
    "config_rejected": "A new configuration was refused; the previous one is still in use.",
}
DEVICE_WORDS = {"ok": "Working", "stale": "No new readings", "error": "Reports errors",
                "disconnected": "Not connected"}
KIND_WORDS = {"scanner": "barcode scanner", "scale": "scale", "modbus": "machine (Modbus)",
              "opcua": "machine (OPC UA)"}
RULE_WORDS = {
    "max_queue": ("Sales waiting for head office", "sales"),
    "tender_not_offline": ("Payments taken while offline", ""),
    "card_floor_limit": ("Largest card payment while offline", "money"),
    "card_offline_age": ("Card payments stop after offline for", "seconds"),
    "txn_cap": ("Largest sale while offline", "money"),
    "offline_exposure_cap": ("Total sales allowed while offline", "money"),
    "stale_reference_data": ("Offline sales stop when prices are older than", "seconds"),
}
DATASET_WORDS = {"prices": "Prices", "promotions": "Promotions", "stock": "Stock levels",
                 "sell_rules": "Selling rules"}

STYLE = """
body{font:16px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f4;color:#111}
main{max-width:60em;margin:0 auto;padding:0 1em 2em}
h1{font-size:1.3em;margin:.8em 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.banner{padding:.8em 1em;border-radius:.4em;font-size:1.3em;font-weight:600;margin:.6em 0}
.good{background:#d8f0d8;border-left:.5em solid #2a7a2a}
.warn{background:#fff0c8;border-left:.5em solid #b07800}
.bad{background:#f8d4d4;border-left:.5em solid #b02020}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#e8e8e8;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.s-ok{color:#1d6b1d;font-weight:600}.s-bad{color:#a01818;font-weight:600}
.s-warn{color:#8a5a00;font-weight:600}
ul.alarms{padding:0;list-style:none}ul.alarms li{background:#fff;margin:.3em 0;padding:.5em .8em;
border-left:.4em solid #b02020}
.detail{color:#444;font-size:.9em;word-break:break-word}
footer{margin-top:2em;color:#555;font-size:.85em}
"""


class Clock:
    """Times and ages in the store's zone, relative to the document's own time."""

    def __init__(self, tz: tzinfo | None, now_ms: int) -> None:
        self.tz = tz
        self.now_ms = now_ms

    def at(self, wall_ms: Any) -> str:
        if not isinstance(wall_ms, (int, float)) or wall_ms <= 0:
            return "unknown"
        t = datetime.fromtimestamp(wall_ms / 1000, self.tz)
        today = datetime.fromtimestamp(self.now_ms / 1000, self.tz).date()
        if t.date() == today:
            return t.strftime("%H:%M:%S")
        return t.strftime("%a %d %b %H:%M")

    def ago(self, wall_ms: Any) -> str:
        if not isinstance(wall_ms, (int, float)) or wall_ms <= 0:
            return ""
        return duration(max(0.0, (self.now_ms - wall_ms) / 1000)) + " ago"


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    days = s // 86400
    return f"{days} day{'' if days == 1 else 's'} {s % 86400 // 3600} h"


def size(nbytes: Any) -> str:
    n = float(nbytes or 0)
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def money(minor: Any) -> str:
    """Minor units of the store's currency (cents) as 12.34."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        return "no limit" if minor is None else escape(str(minor))
    return f"{minor // 100:,}.{minor % 100:02d}"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><thead><tr>",
           *(f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>"
             for i, h in enumerate(head)), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                     for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def link_state(doc: dict[str, Any]) -> tuple[bool | None, int | None]:
    """(online, since wall ms): online while an uplink carries the data; None: no uplink
    configured. Since the last change, or the agent's start when there was none."""
    fwd = doc.get("forwarding")
    at, up = doc.get("at_ms") or 0, doc.get("uptime_s") or 0
    started = at - int(up) * 1000 if at else None
    if not isinstance(fwd, dict):
        return None, started
    since = fwd.get("link_since_ms")
    return fwd.get("active_uplink") is not None, since if since else started


def _banner(doc: dict[str, Any], clock: Clock) -> str:
    online, since = link_state(doc)
    when = f" since {clock.at(since)}" if since else ""
    alarms = doc.get("alarms") or []
    if doc.get("journal_refusing_txn"):
        return ('<div class="banner bad" id="state">Full: the gateway refuses new sales '
                'until head office confirms what it holds</div>')
    if online is None:
        return ('<div class="banner warn" id="state">No connection configured: everything '
                f'stays on this gateway (running{when})</div>')
    if not online:
        return (f'<div class="banner bad" id="state">Offline{when}: sales are kept on this '
                'gateway and sent when the connection is back</div>')
    n = len(alarms)
    cls, tail = ("warn", f", {n} problem{'' if n == 1 else 's'} below") if n else ("good", "")
    return f'<div class="banner {cls}" id="state">Online{when}{tail}</div>'


def _uplinks(doc: dict[str, Any]) -> str:
    fwd = doc.get("forwarding")
    if not isinstance(fwd, dict) or not fwd.get("uplinks"):
        return "<p>No connection to head office is configured.</p>"
    counters = doc.get("uplink_counters") or {}
    rows = []
    for name, up in (fwd.get("uplinks") or {}).items():
        if name == fwd.get("active_uplink"):
            state = '<span class="s-ok">Connected, in use</span>'
        elif up:
            state = '<span class="s-ok">Connected, standby</span>'
        else:
            state = '<span class="s-bad">Not connected</span>'
        c = counters.get(name) or {}
        rows.append([_e(name), state, _e(c.get("connects", 0)), _e(c.get("disconnects", 0))])
    return _table(["Connection", "State", "Times connected", "Times lost"], rows, {2, 3})


def _journal(doc: dict[str, Any]) -> str:
    records = int(doc.get("backlog_records") or 0)
    age = doc.get("oldest_unacked_age_s")
    free = (doc.get("journal") or {}).get("free_bytes")
    rows = [["Records waiting for head office", f'<span id="backlog">{records}</span> '
             f'({size(doc.get("backlog_bytes"))})'],
            ["Oldest waiting for", "nothing is waiting" if not records or age is None
             else duration(float(age))],
            ["Room left on the gateway", size(free) if free is not None else "unknown"]]
    return _table(["", ""], rows).replace("<thead><tr><th></th><th></th></tr></thead>", "")


def _devices(doc: dict[str, Any], clock: Clock) -> str:
    devices = [d for d in doc.get("devices") or () if isinstance(d, dict)]
    if not devices:
        return "<p>No devices are running on this gateway.</p>"
    down = set(doc.get("devices_down") or ())
    rows = []
    for d in devices:
        state = str(d.get("state"))
        cls = "s-ok" if state == "ok" else ("s-warn" if state == "stale" else "s-bad")
        words = DEVICE_WORDS.get(state, state)
        if d.get("name") in down:
            words += ", needs attention"
        since = f' <span class="detail">since {clock.at(d.get("since_ms"))}</span>'
        last = d.get("last_value_ms")
        value = f"{clock.at(last)} <span class=\"detail\">({clock.ago(last)})</span>" \
            if last else "none yet"
        err = d.get("last_error")
        err_text = (f'<span class="detail">{_e(err)} ({clock.at(d.get("last_error_ms"))})'
                    "</span>") if err else ""
        rows.append([_e(d.get("name")), _e(KIND_WORDS.get(str(d.get("kind")), d.get("kind"))),
                     f'<span class="{cls}">{_e(words)}</span>{since}', value, err_text])
    return _table(["Device", "Type", "State", "Last reading", "Last problem"], rows)


def _alarms(doc: dict[str, Any]) -> str:
    alarms = doc.get("alarms") or []
    if not alarms:
        return '<p class="s-ok" id="no-alarms">No problems.</p>'
    detail = doc.get("alarm_detail") or {}
    items = []
    for name in alarms:
        if str(name).startswith("thread_"):  # a supervised loop crashed (supervisor.py)
            words = "Part of the gateway software crashed and was restarted."
        else:
            words = ALARM_WORDS.get(str(name), str(name).replace("_", " ").capitalize() + ".")
        more = detail.get(name)
        extra = f'<div class="detail">{_e(more)}</div>' if more else ""
        items.append(f'<li data-alarm="{_e(name)}"><strong>{_e(words)}</strong>{extra}</li>')
    return '<ul class="alarms">' + "".join(items) + "</ul>"


def _tills(t: dict[str, Any], clock: Clock) -> str:
    online = t.get("state") == "online"
    state = ('<span class="s-ok">Selling online</span>' if online
             else f'<span class="s-bad">Selling offline</span> since {clock.at(t.get("since_ms"))}')
    if t.get("forced_offline"):
        state += " (a manager switched to offline)"
    q = t.get("queued") or {}
    out = [f'<p id="till-state">Tills: {state}. Sales not yet at head office: '
           f'{_e(q.get("count", 0))}, amount {money(q.get("amount", 0))} '
           f'(taken offline: {money(q.get("offline_amount", 0))}).</p>']
    rows = []
    for rule, r in (t.get("rules") or {}).items():
        label, unit = RULE_WORDS.get(rule, (rule, ""))
        limit, left = r.get("limit"), r.get("headroom")
        if rule == "tender_not_offline":
            shown_limit, shown_left = _e(", ".join(str(x) for x in limit or ())), ""
        elif limit is None:
            shown_limit, shown_left = "no limit", ""
        elif unit == "money":
            shown_limit, shown_left = money(limit), money(left)
        elif unit == "seconds":
            shown_limit, shown_left = duration(limit), duration(left or 0)
        else:
            shown_limit, shown_left = _e(limit), _e(left)
        if rule in ("card_floor_limit", "txn_cap"):
            shown_left = "per sale"
        rows.append([_e(label), shown_limit, shown_left, _e(r.get("refused", 0))])
    out.append(_table(["Offline selling rule", "Limit", "Left now", "Sales refused"], rows,
                      {3}))
    return "".join(out)


def _refdata(r: dict[str, Any], clock: Clock) -> str:
    rows = []
    for ds, d in (r.get("datasets") or {}).items():
        age, latest, version = d.get("age_s"), d.get("latest"), d.get("version")
        if not version:
            state = '<span class="s-warn">None received yet</span>'
        elif latest is not None and latest > version:
            state = f'<span class="s-warn">Catching up to version {_e(latest)}</span>'
        elif age == 0:
            state = '<span class="s-ok">Up to date</span>'
        else:
            state = f'<span class="s-warn">Not checked for {duration(float(age or 0))}</span>'
        rows.append([_e(DATASET_WORDS.get(ds, ds)), _e(version), state,
                     clock.at(d.get("published_ms")) if d.get("published_ms") else ""])
    # Not newer (stale) and out of order (gap) happen on every reconnect; the rest is wrong.
    refused = sum(v for k, v in (r.get("rejected") or {}).items() if k not in ("stale", "gap"))
    out = _table(["Data", "Version", "State", "Published"], rows)
    if refused:
        out += (f'<p class="s-bad">{_e(refused)} updates from head office were refused '
                "(see the gateway's log).</p>")
    return out


def render(doc: dict[str, Any], tz: tzinfo | None, refresh_s: int, tz_name: str = "") -> str:
    now_ms = doc.get("at_ms") or int(time.time() * 1000)
    clock = Clock(tz, now_ms)
    gw, store = _e(doc.get("gateway", "")), doc.get("tills", {}).get("store") \
        if isinstance(doc.get("tills"), dict) else None
    title = f"Gateway {gw}" + (f" &middot; store {_e(store)}" if store else "")
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             f'<meta http-equiv="refresh" content="{int(refresh_s)}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{title}</title><style>{STYLE}</style></head><body><main>",
             f"<h1>{title}</h1>", _banner(doc, clock),
             '<h2>Problems</h2><section id="alarms">', _alarms(doc), "</section>",
             '<h2>Connection to head office</h2><section id="uplinks">', _uplinks(doc),
             "</section>",
             '<h2>Waiting to be sent</h2><section id="journal">', _journal(doc), "</section>",
             '<h2>Devices</h2><section id="devices">', _devices(doc, clock), "</section>"]
    if isinstance(doc.get("tills"), dict):
        parts += ['<h2>Tills</h2><section id="tills">', _tills(doc["tills"], clock),
                  "</section>"]
    if isinstance(doc.get("refdata"), dict):
        parts += ['<h2>Prices and stock from head office</h2><section id="refdata">',
                  _refdata(doc["refdata"], clock), "</section>"]
    zone = f" ({_e(tz_name)})" if tz_name else ""
    parts.append(f'<footer>Shown at {clock.at(now_ms)}{zone}; this page refreshes every '
                 f'{int(refresh_s)} s. Gateway software {_e(doc.get("version", ""))}, '
                 f'running for {duration(float(doc.get("uptime_s") or 0))}.</footer>')
    parts.append("</main></body></html>")
    return "".join(parts)
