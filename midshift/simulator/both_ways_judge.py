"""The both-ways judge (issue 20): the ledger against the ERP, the prices the tills were
served against the versions published.

- ``erp_*``: every transaction the ledger booked reached the ERP emulator
  (``midshift/simulator/erp.py``) exactly once by idempotency key (``gateway/epoch/seq``) with the
  same total, type, till and till number; nothing reached the ERP that the ledger does not
  hold. Deliveries the ERP had already (a retry after a lost answer) are counted, not
  judged: the idempotency key is what makes them harmless.
- ``stale_prices_served_online``: a till's price lookup (``GET /v1/prices/{sku}``) made
  while its gateway was online, ``grace_s`` after a version was published (time for the
  broker to carry it), answered from an older version. Lookups during an outage may be
  older: that is the offline cache doing its job (``prices_served_offline_old``).
- ``ghost_units``: units the store sold that the web shop had sold first, because the ERP
  did not know of the store's sale yet (``ErpEmulator.oversold``). Reported, not judged:
  it measures how fast sales reach the ERP.
- ``card_numbers_left_ledger``: a card number a till typed (the scenario puts full
  numbers into the wrong field; the till API must refuse them) in anything the ERP
  accepted or the plain-JSON feed carried, or a tender's ``pan`` that is not masked.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from midshift.firmware.core.till_txn import masked_pan_ok
from midshift.simulator.devices.till import read_truth


def judge_erp(ledger_rows: list[dict[str, Any]], erp: Any, pans: list[str]) -> dict[str, Any]:
    """``ledger_rows``: ``LedgerStore.transactions()``; ``erp``: the emulator; ``pans``:
    the card numbers the tills typed."""
    snap = erp.snapshot()
    with erp.lock:
        accepted = dict(erp.accepted)
    want = {f"{r['gateway']}/{r['epoch']}/{r['seq']}": r for r in ledger_rows}
    missing = sorted(set(want) - set(accepted))
    extra = sorted(set(accepted) - set(want))
    altered = sorted(k for k in set(want) & set(accepted)
                     if (accepted[k].get("total"), accepted[k].get("type"),
                         accepted[k].get("till"), accepted[k].get("till_seq"))
                     != (want[k]["total"], want[k]["type"], want[k]["till"],
                         want[k]["till_seq"]))
    return {"erp_transactions": len(want), "erp_accepted": len(accepted),
            "erp_missing": len(missing), "erp_extra": len(extra), "erp_altered": len(altered),
            "erp_missing_keys": missing[:10], "erp_altered_keys": altered[:10],
            "erp_redeliveries": snap["duplicates"],
            "erp_requests_by_status": {str(k): v for k, v in snap["by_status"].items()},
            "ghost_units": sum(snap["oversold_milli"].values()) / 1000,
            "webshop_orders": snap["orders"],
            "card_numbers_left_ledger": sum(_card_data(v, pans) for v in accepted.values())}


def judge_feed(messages: Iterable[bytes], pans: list[str]) -> dict[str, Any]:
    """The plain-JSON feed as a subscriber saw it."""
    n = found = 0
    for m in messages:
        n += 1
        try:
            doc = json.loads(m)
        except ValueError:
            doc = m.decode("utf-8", "replace")
        found += _card_data(doc, pans)
    return {"feed_messages": n, "card_numbers_in_feed": found}


def judge_prices(truth_files: Iterable[Any], published: list[tuple[float, int]],
                 offline: list[tuple[float, float]], grace_s: float) -> dict[str, Any]:
    """``published``: (host time, version) of each prices version the publisher left on the
    broker; ``offline``: (from, to) host times the gateway's uplinks were cut."""
    lookups = [p for f in truth_files for line in read_truth(f) for p in line.get("prices", ())]
    stale = old_offline = unanswered = 0
    by_version: Counter[int] = Counter()
    for p in lookups:
        if p.get("version") is None:
            unanswered += 1
            continue
        by_version[p["version"]] += 1
        t = p["t"]
        down = any(a <= t <= b + grace_s for a, b in offline)
        newest = max((v for at, v in published if at <= t - grace_s), default=None)
        if newest is not None and p["version"] < newest:
            if down:
                old_offline += 1
            else:
                stale += 1
    return {"price_lookups": len(lookups), "price_lookups_unanswered": unanswered,
            "price_versions_served": {str(v): n for v, n in sorted(by_version.items())},
            "prices_served_offline_old": old_offline, "stale_prices_served_online": stale}


def _card_data(doc: Any, pans: list[str]) -> int:
    """Typed card numbers anywhere in ``doc``, and unmasked PANs in its tenders."""
    text = json.dumps(doc)
    found = sum(text.count(p) for p in pans)
    tenders = doc.get("tenders") if isinstance(doc, dict) else None
    for t in tenders if isinstance(tenders, list) else ():
        pan = t.get("pan") if isinstance(t, dict) else None
        found += isinstance(pan, str) and not masked_pan_ok(pan)
    return found
