"""Judging gateways from their retained status documents, as a monitoring plugin does.

``judge(doc, wall_ms, stale_s)`` returns ``(code, reason)`` for one gateway with the
monitoring-plugin codes (Nagios, Icinga, Sensu: 0 ok, 1 warning, 2 critical, 3 unknown);
``summary`` folds many into the worst code and one line. The age of a status is its own
``ts_ms`` against this host's clock, never the time the broker handed over a retained
copy: a retained ``online`` from a gateway that died an hour ago is an hour old.

Rules, worst first:

- critical: ``offline`` (a clean stop says so with ``reason: stopped``; the broker's last
  will with ``connection_lost``); silent longer than ``stale_s``; the journal refusing
  transactions; an alarm in ``CRITICAL_ALARMS`` (records not reaching the ledger, the
  journal gone or out of space);
- warning: any other alarm (``device_down`` with its devices, ``clock_offset``,
  ``ledger_rejected``, a crashed thread...); a provisioned gateway never seen;
- unknown: an unreadable status; one without ``ts_ms`` (older firmware) that came
  retained, so its age cannot be told; a gateway asked for that has never reported.

Folding many gateways: critical > warning > unknown > ok (a gateway that cannot be judged
does not hide another's known trouble).
"""

from __future__ import annotations

from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
CRITICAL_ALARMS = ("no_ack", "journal_lost", "journal_no_space", "journal_commit_write")
SEVERITY = (OK, UNKNOWN, WARNING, CRITICAL)  # which of two codes is worse: later wins


def worse(a: int, b: int) -> int:
    return a if SEVERITY.index(a) >= SEVERITY.index(b) else b


def status_age_s(doc: dict[str, Any], wall_ms: int, received_age_s: float,
                 retained: bool) -> float | None:
    """Seconds since the gateway wrote ``doc``: from its ``ts_ms``; without one (older
    firmware), from when it arrived unless it came retained (then unknown: None)."""
    ts = doc.get("ts_ms")
    if isinstance(ts, int) and not isinstance(ts, bool):
        return max(0.0, (wall_ms - ts) / 1000)
    return None if retained else received_age_s


def judge(doc: dict[str, Any], age_s: float | None, stale_s: float) -> tuple[int, str]:
    """(code, reason) for one gateway's latest status, ``age_s`` old (None: unknown)."""
    state = doc.get("state")
    if state == "unreadable" or not isinstance(state, str):
        return UNKNOWN, "unreadable status"
    if state == "offline":
        if doc.get("reason") == "stopped":
            when = "" if age_s is None else f" {age_s:.0f} s ago"
            return CRITICAL, f"offline (stopped cleanly{when})"
        return CRITICAL, "offline (connection lost: the broker sent its last will)"
    if age_s is None:
        return UNKNOWN, "retained status without ts_ms: its age cannot be told"
    if age_s > stale_s:
        return CRITICAL, f"silent for {age_s:.0f} s (stale after {stale_s:.0f} s)"
    alarms = list(doc.get("alarms") or (doc.get("forwarding") or {}).get("alarms") or ())
    detail = doc.get("alarm_detail") or {}

    def say(name: str) -> str:
        return f"{name} ({detail[name]})" if detail.get(name) else name

    code, why = OK, []
    if doc.get("journal_refusing_txn"):
        code, why = CRITICAL, ["journal refuses transactions"]
    for name in sorted(alarms, key=lambda a: (a not in CRITICAL_ALARMS, a)):
        code = worse(code, CRITICAL if name in CRITICAL_ALARMS else WARNING)
        why.append("alarm " + say(name))
    if code != OK:
        return code, "; ".join(why)
    return OK, (f"online, uplink {doc.get('uplink', '?')}, backlog "
                f"{doc.get('backlog_records', '?')}")


def summary(results: dict[str, tuple[int, str]], never_seen: list[str],
            wanted: str | None = None) -> tuple[int, str]:
    """The worst code over every gateway and the plugin's first line: the gateways that
    are not OK with their reasons (or how many are), then the provisioned never seen."""
    if wanted is not None and wanted not in results:
        return UNKNOWN, f"UNKNOWN: {wanted}: no status on this broker (never seen)"
    if not results and not never_seen:
        return UNKNOWN, "UNKNOWN: no gateway has published a status"
    code = OK
    bad = []
    for gw in sorted(results):
        c, why = results[gw]
        code = worse(code, c)
        if c != OK:
            bad.append(f"{gw} {why}")
    if never_seen:
        code = worse(code, WARNING)
        bad.append("never seen: " + ", ".join(never_seen))
    if not bad:
        only = results[next(iter(results))][1] if len(results) == 1 else \
            f"{len(results)} gateways online"
        return OK, f"OK: {only}"
    return code, f"{NAMES[code]}: " + "; ".join(bad)
