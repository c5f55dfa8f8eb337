"""The tills' judge: what each cashier was told against what the ledger holds.

- every transaction a till was told is accepted (201 or 200) is in the ledger exactly once
  (one transaction row for its Idempotency-Key) with the same contents (the canonical
  SHA-256 of the request, as the API journaled it);
- every refusal is known to its till and is not in the ledger;
- a transaction the till got no answer for (``unknown``) may be in the ledger once, or not;
- every split-brain conflict the scenario injected (a twin till posting another till's
  numbers) is flagged, and every refund of an unknown original is flagged;
- no full card number a till typed is anywhere on the gateway's flash (every file under
  its directory: journal segments, the key index, logs) or in the ledger's database file.

``judge_local_times`` reads the ledger's transactions as the morning report does (the
gateway's acceptance time in the store's zone): which UTC offsets they were taken under
and how many business days they claim, so a run across a daylight-saving change can show
it straddled the change inside one business day.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from midshift.host_tools.ledger.store import LedgerStore
from midshift.simulator.devices.till import read_truth


def judge_tills(truth_dirs: Iterable[Path], store: LedgerStore, flash_dirs: Iterable[Path],
                db_files: Iterable[Path], pans: Iterable[str]) -> dict[str, Any]:
    """The judge's figures (``till_*``, ``full_pans_*``); see the module's text."""
    told = [line for d in truth_dirs for f in sorted(Path(d).glob("*.jsonl"))
            for line in read_truth(f)]
    rows = store.transactions()
    by_key = Counter(r["idem_key"] for r in rows)
    sha = {r["idem_key"]: r["sha"] for r in rows}
    accepted = [t for t in told if t["told"] == "accepted"]
    refused = [t for t in told if t["told"] == "refused"]
    unknown = [t for t in told if t["told"] == "unknown"]
    flags = store.flags()
    flagged: dict[str, set[tuple[str, int]]] = {}
    for f in flags:
        flagged.setdefault(f["kind"], set()).add((f["till"], f["till_seq"]))
    twins = [t for t in accepted if t.get("twin")]
    # A twin's accepted transaction collides with the original till's number, if that
    # number was accepted too: both must carry a conflict flag.
    numbers = Counter((t["till"], t["till_seq"]) for t in accepted)
    conflicts = [(t["till"], t["till_seq"]) for t in twins if numbers[(t["till"], t["till_seq"])] > 1]
    conflict_flags = flagged.get("conflict_till_seq", set()) | flagged.get("conflict_key", set())
    unknown_refunds = [(t["till"], t["till_seq"]) for t in accepted
                       if t["txn"].get("original", {}).get("till_seq", 0) >= 10_000_000]
    pan_bytes = {p.encode() for p in pans}
    found = []
    for path in _files([*flash_dirs], [*db_files]):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [str(path) for p in pan_bytes if p in data]
    return {
        "till_told": len(told),
        "till_accepted": len(accepted),
        "till_accepted_missing": sum(1 for t in accepted if by_key[t["key"]] == 0),
        "till_accepted_twice": sum(1 for t in accepted if by_key[t["key"]] > 1),
        "till_altered": sum(1 for t in accepted if by_key[t["key"]] and sha[t["key"]] != t["sha"]),
        "till_refused": len(refused),
        "till_refused_in_ledger": sum(1 for t in refused if by_key[t["key"]]),
        "till_refusals_by_rule": dict(Counter(t["rule"] or t["error"] for t in refused)),
        "till_unknown": len(unknown),
        "till_unknown_in_ledger": sum(1 for t in unknown if by_key[t["key"]]),
        "till_conflicts_injected": len(conflicts),
        "till_conflicts_unflagged": sum(1 for c in conflicts if c not in conflict_flags),
        "till_unknown_originals_injected": len(unknown_refunds),
        "till_unknown_originals_unflagged": sum(
            1 for c in unknown_refunds if c not in flagged.get("unknown_original", set())),
        "till_flags": dict(Counter(f["kind"] for f in flags)),
        "till_ledger_rows": len(rows),
        # Each key accepted twice, as the ledger holds it and as its till heard it: what a
        # failed run needs to be understood without its files.
        "till_twice_detail": [
            {"key": k, "rows": [[r["gateway"], r["epoch"], r["seq"], r["accepted_ms"]]
                                for r in rows if r["idem_key"] == k],
             "told": [[t["till"], t["till_seq"], t["status"], t["seq"]]
                      for t in told if t["key"] == k]}
            for k in sorted({t["key"] for t in accepted if by_key[t["key"]] > 1})][:5],
        "full_pans_typed": len(pan_bytes),
        "full_pans_found": len(found),
        "full_pan_files": found[:10],
    }


def judge_local_times(store: LedgerStore, tz: str) -> dict[str, Any]:
    """``till_utc_offsets`` (how many UTC offsets the store's clock showed when the gateway
    accepted the transactions), ``till_business_days`` and the counts behind them."""
    zone = ZoneInfo(tz)
    by_offset: Counter[str] = Counter()
    days: Counter[str] = Counter()
    for r in store.transactions():
        local = dt.datetime.fromtimestamp(r["accepted_ms"] / 1000, zone)
        by_offset[local.isoformat()[-6:]] += 1  # "+02:00"
        days[r["business_day"]] += 1
    return {"till_utc_offsets": len(by_offset),
            "till_accepted_by_utc_offset": dict(sorted(by_offset.items(), reverse=True)),
            "till_business_days": len(days), "till_rows_by_business_day": dict(days)}


def _files(dirs: list[Path], files: list[Path]) -> Iterable[Path]:
    for d in dirs:
        yield from (p for p in Path(d).rglob("*") if p.is_file())
    for f in files:
        for p in (f, f.with_name(f.name + "-wal"), f.with_name(f.name + "-journal")):
            if p.exists():
                yield p
