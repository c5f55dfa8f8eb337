"""Out to the ERP (issue 20): how soon a committed sale reaches the ERP, and how fast a
backlog drains against the ERP's rate limit.

All on loopback: the SQLite reference ledger (``SqliteStore``, its real booking path),
the delivery worker (``midshift/host_tools/ledger/erp_delivery.py``) in this process, woken by each
commit as ``ledger serve`` wakes it, and the ERP emulator (``midshift/simulator/erp.py``) as a
process of its own (so its JSON parsing does not share this interpreter's lock).

- ``erp_delivery_p99_ms`` (and ``_p50_ms``): sales committed on an open-loop schedule
  (``steady_rate_offered`` per second, one per commit, sale i due at i / rate), the
  ERP at 50 requests/s of up to 500; latency from the commit's return to the ERP
  recording the sale (both clocks are this host's ``time.time()``).
  ``steady_rate_achieved`` beside it. Target p99 <= 50 ms.
- ``erp_backlog_drain_s``: ``backlog_txns`` (100,000; ``--quick`` 10,000) booked while
  the ERP answers 503, then the ERP is back with a limit of 50 requests/s (429 beyond);
  the worker sends up to 500 per request at 50 requests/s. Measured from the ERP's first
  accepted request to the last sale marked delivered in the ledger;
  ``erp_backlog_ideal_s`` = backlog / 500 / 50 beside it and ``erp_backlog_ratio``.
  Target ratio <= 1.1. ``erp_backlog_resume_s``: from the ERP being back to its first
  accepted request (the worker waits out the 503's Retry-After, 1 s).
- ``erp_backlog_baseline_s``: the same number of documents, built in memory beforehand,
  posted by the same client, rate limit and threads to a fresh emulator: what this host
  allows at this moment with no ledger in the way (the emulator's JSON parsing shares the
  two cores). ``erp_backlog_vs_baseline`` = drain / baseline, the worker's own share of
  the gap to the ideal; both rise together when other work takes the cores.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware.core.event import encode_body
from midshift.firmware.core.wire import Batch
from midshift.host_tools.ledger.erp_client import ErpClient
from midshift.host_tools.ledger.erp_delivery import ErpConfig, ErpDelivery, RateLimit
from midshift.host_tools.ledger.outbox import Outbox
from midshift.host_tools.ledger.sqlite_store import SqliteStore

RATE_LIMIT = 50.0  # the ERP's requests/s
BATCH = 500  # transactions per request the ERP takes
CONCURRENCY = 3  # the worker's threads in the backlog drain (and the baseline's)
ROOT = Path(__file__).resolve().parents[1]


def _body(till_seq: int, t_ms: int) -> bytes:
    txn = {"type": "sale", "till": "till-1", "till_seq": till_seq, "business_day": "2026-11-27",
           "cashier": "ann", "currency": "EUR",
           "lines": [{"sku": f"SKU-{till_seq % 100}", "qty_milli": 1000, "unit_price": 1299,
                      "discount": 0}],
           "tenders": [{"kind": "card", "amount": 1299, "pan": "411111******1111",
                        "scheme": "visa", "auth": "approved"}]}
    canonical = json.dumps(txn, sort_keys=True, separators=(",", ":")).encode()
    data = {"key": f"k-{till_seq}", "sha": hashlib.sha256(canonical).hexdigest(),
            "store": "store-bf", "tz": "Europe/Berlin", "receipt": f"R-{till_seq}",
            "offline": False, "txn": txn}
    return encode_body("till-1", "txn", t_ms, data)


class _Erp:
    """The emulator as a child process, driven over its stdin."""

    def __init__(self, rate: float | None) -> None:
        argv = [sys.executable, "-m", "midshift.simulator.erp"] + ([] if rate is None
                                                          else ["--rate", str(rate)])
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.url = f"http://127.0.0.1:{self.port}/v1/transactions"

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, Any]:
        self.say("stats")
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.say("quit")
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)


def _config(url: str, concurrency: int) -> ErpConfig:
    return ErpConfig(url, rate_per_s=RATE_LIMIT, batch=BATCH, concurrency=concurrency,
                     backoff_s=0.2, backoff_cap_s=1.0, poll_s=0.5)


def _steady(tmp: Path, rate: float, duration_s: float) -> dict[str, Any]:
    from midshift.simulator.erp import ErpEmulator

    db = f"sqlite:///{tmp / 'steady.db'}"
    store = SqliteStore(db)
    # In this process: its acceptance times are read directly, per key.
    erp = ErpEmulator(rate_per_s=RATE_LIMIT).start()
    worker = ErpDelivery(db, _config(erp.url, 2)).start()
    committed: dict[str, float] = {}
    n = int(rate * duration_s)
    start = time.monotonic() + 0.2
    try:
        for i in range(1, n + 1):
            due = start + (i - 1) / rate
            time.sleep(max(0.0, due - time.monotonic()))
            now_ms = int(time.time() * 1000)
            store.store_many([Batch("gw-bench", 1, [(i, 0, i, _body(i, now_ms))], now_ms)],
                             now_ms)
            committed[f"gw-bench/{1:016x}/{i}"] = time.time()
            worker.wake()
        took = time.monotonic() - start
        deadline = time.monotonic() + 30
        while len(erp.accepted) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        erp.stop()
        store.close()
    lat = sorted((erp.accepted_at[k] - t) * 1000 for k, t in committed.items()
                 if k in erp.accepted_at)
    if len(lat) < n:
        return {"erp_delivery_p99_ms": None, "steady_missing": n - len(lat)}
    return {"erp_delivery_p99_ms": round(lat[int(0.99 * (n - 1))], 1),
            "erp_delivery_p50_ms": round(lat[n // 2], 1),
            "erp_delivery_max_ms": round(lat[-1], 1),
            "steady_rate_offered": rate, "steady_rate_achieved": round(n / took, 1),
            "steady_txns": n}


def _backlog(tmp: Path, count: int, say: Callable[[str], None]) -> dict[str, Any]:
    db = f"sqlite:///{tmp / 'backlog.db'}"
    erp = _Erp(RATE_LIMIT)
    store = SqliteStore(db)
    try:
        erp.say("down")
        worker = ErpDelivery(db, _config(erp.url, CONCURRENCY)).start()
        t0 = time.monotonic()
        per = 1000
        for first in range(1, count + 1, per):
            now_ms = int(time.time() * 1000)
            store.store_many([Batch("gw-bench", 2, [(s, 0, s, _body(s, now_ms)) for s in
                                                     range(first, min(count, first + per - 1)
                                                           + 1)], now_ms)], now_ms)
            worker.wake()
        say(f"erp bench: {count} transactions booked in {time.monotonic() - t0:.1f} s "
            "with the ERP down")
        back = time.time()
        erp.say("back")
        deadline = time.monotonic() + 300
        # The worker's own count, not the outbox's: a COUNT over the due index every few
        # milliseconds would take this interpreter's lock from the worker being measured.
        while (worker.snapshot()["erp_delivered"] < count
               and time.monotonic() < deadline):
            time.sleep(0.005)
        done = time.time()
        worker.stop()
        box = Outbox(db, "erp")
        left = box.due()
        box.close()
        stats = erp.stats()
    finally:
        erp.close()
        store.close()
    ideal = count / BATCH / RATE_LIMIT
    drain = done - stats["first_accept_t"] if stats["first_accept_t"] else None
    ok = left == 0 and stats["accepted"] == count
    return {"erp_backlog_drain_s": round(drain, 2) if ok and drain else None,
            "erp_backlog_ideal_s": ideal,
            "erp_backlog_ratio": round(drain / ideal, 3) if ok and drain else None,
            "erp_backlog_resume_s": round(stats["first_accept_t"] - back, 2)
            if stats["first_accept_t"] else None,
            "erp_backlog_from_back_s": round(done - back, 2), "backlog_txns": count,
            "backlog_erp_requests": stats["requests"],
            "backlog_erp_by_status": stats["by_status"],
            "backlog_erp_duplicates": stats["duplicates"], "backlog_left": left}


def _baseline(count: int) -> dict[str, Any]:
    """``count`` documents shaped as the worker's, built beforehand, posted ``BATCH`` a
    request at ``RATE_LIMIT`` over ``CONCURRENCY`` threads: the drain without a ledger."""
    erp = _Erp(RATE_LIMIT)
    doc = json.dumps({"store": "store-bf", "till": "till-1", "till_seq": 0,
                      "business_day": "2026-11-27", "type": "sale", "currency": "EUR",
                      "total": 1299, "receipt": "R-0", "offline": False,
                      "accepted_ms": 1795000000000, "ledger_ms": 1795000000000,
                      "tz": "Europe/Berlin", "original": None,
                      "lines": [{"sku": "SKU-0", "qty_milli": 1000, "unit_price": 1299,
                                 "discount": 0}],
                      "tenders": [{"kind": "card", "amount": 1299, "scheme": "visa",
                                   "auth": "approved", "pan": "411111******1111"}]},
                     separators=(",", ":"))
    bodies = [('{"transactions":[' + ",".join(
        f'{{"idempotency_key":"base/{i}",' + doc[1:]
        for i in range(first, min(count, first + BATCH))) + "]}").encode()
        for first in range(0, count, BATCH)]
    rate, stop, lock, bad = RateLimit(RATE_LIMIT), threading.Event(), threading.Lock(), []

    def send() -> None:
        client = ErpClient(erp.url, timeout_s=10)
        try:
            while True:
                with lock:
                    if not bodies:
                        return
                    body = bodies.pop()
                while rate.acquire(stop) and (status := client.post(body, "b").status) >= 300:
                    bad.append(status)
        finally:
            client.close()

    try:
        threads = [threading.Thread(target=send) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        done = time.time()
        stats = erp.stats()
    finally:
        stop.set()
        erp.close()
    ok = stats["accepted"] == count and stats["first_accept_t"]
    return {"erp_backlog_baseline_s": round(done - stats["first_accept_t"], 2) if ok else None,
            "backlog_baseline_erp_by_status": stats["by_status"]}


def measure(quick: bool = False, progress: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
    """{"erp_delivery_p99_ms", "erp_backlog_drain_s", ...} (module docstring)."""
    say = progress or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="erp-bench-") as d:
        tmp = Path(d)
        out = _steady(tmp, rate=20.0, duration_s=5.0 if quick else 15.0)
        say(f"erp bench: steady p99 {out.get('erp_delivery_p99_ms')} ms, achieved "
            f"{out.get('steady_rate_achieved')} of {out.get('steady_rate_offered')} /s")
        count = 10_000 if quick else 100_000
        out |= _backlog(tmp, count, say)
        out |= _baseline(count)
        drain, base = out["erp_backlog_drain_s"], out["erp_backlog_baseline_s"]
        out["erp_backlog_vs_baseline"] = round(drain / base, 3) if drain and base else None
        say(f"erp bench: backlog {drain} s (ideal {out['erp_backlog_ideal_s']} s, ratio "
            f"{out['erp_backlog_ratio']}; baseline {base} s)")
    return out


run = measure  # the shape bench/__main__.py calls


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(json.dumps(measure(quick, lambda m: print(m, file=sys.stderr, flush=True)),
                     sort_keys=True))
