"""The ERP delivery worker (issue 20): the outbox's ``erp`` rows out to the ERP's webhook.

Each of ``concurrency`` threads claims up to ``batch`` due transactions
(``outbox.Outbox.claim_batch``), posts them sanitized (``erp_payload``) and marks them
delivered on a 2xx. One transaction goes as one JSON object with ``Idempotency-Key`` =
its identity (``gateway/epoch/seq``); with ``batch`` > 1 several go as
``{"transactions": [...]}``, each carrying its ``idempotency_key``, the header then being
``batch-`` and a digest of the keys (an ERP deduplicates per item).

When the ERP is away or pushes back:

- ``429`` or ``503`` with ``Retry-After``: every thread of this worker waits that long
  (the ERP asked the client, not one request) and the batch goes again, same keys.
- no answer, any 5xx, ``429``/``503`` without ``Retry-After``: exponential backoff with
  full jitter (``backoff_s`` doubling up to ``backoff_cap_s``), the batch again.
- ``401``, ``403``, ``404``, ``405``: the link is misconfigured, not the transaction: a
  log line, the backoff, nothing parked.
- ``413`` for a batch: sent again one by one.
- any other 4xx: a refusal. For a batch the ERP may name the refused items (``{"errors":
  [{"idempotency_key": K, ...}]}``); those count a refusal and the others go again at
  once; if it names none, the batch is sent again one by one. A transaction refused
  ``refuse_limit`` times is parked: out of the outbox, flagged ``erp_refused`` with the
  ERP's answer (``host_tools review``, the morning report).

Requests are spaced to ``rate_per_s`` over all threads. The claimed rows' lease is
renewed before each retry, so another worker takes them only when this one has died.
Nothing here ever gives a transaction up except a refusal: a 10-minute outage is a
backlog, delivered when the ERP is back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable

from midshift.host_tools.ledger.erp_client import Answer, ErpClient, parse_url
from midshift.host_tools.ledger.erp_payload import LEVELS, identity
from midshift.host_tools.ledger.outbox import Key, Outbox

log = logging.getLogger(__name__)
MISCONFIGURED = (401, 403, 404, 405)


class ErpConfig:
    """The ERP link's settings, checked once (``check``); read-only after."""

    def __init__(self, url: str, token: str | None = None, rate_per_s: float = 10.0,
                 batch: int = 1, sanitize: str = "lines", concurrency: int = 1,
                 lease_s: float = 30.0, refuse_limit: int = 3, timeout_s: float = 10.0,
                 backoff_s: float = 0.5, backoff_cap_s: float = 60.0,
                 poll_s: float = 0.5) -> None:
        self.url, self.token, self.rate_per_s, self.batch = url, token, rate_per_s, batch
        self.sanitize, self.concurrency, self.lease_s = sanitize, concurrency, lease_s
        self.refuse_limit, self.timeout_s, self.backoff_s = refuse_limit, timeout_s, backoff_s
        self.backoff_cap_s, self.poll_s = backoff_cap_s, poll_s
        self.check()

    def check(self) -> None:
        """ValueError naming the option, its value and what is expected."""
        try:
            parse_url(self.url)
        except ValueError as exc:
            raise ValueError(f"--erp-url: {exc}") from None
        checks = (("--erp-rate", self.rate_per_s, self.rate_per_s > 0, "a number > 0"),
                  ("--erp-batch", self.batch, 1 <= self.batch <= 10_000, "1..10000"),
                  ("--erp-concurrency", self.concurrency, 1 <= self.concurrency <= 32,
                   "1..32"),
                  ("--erp-lease-s", self.lease_s, self.lease_s > 0, "a number > 0"),
                  ("--erp-refuse-limit", self.refuse_limit, self.refuse_limit >= 1, ">= 1"),
                  ("--erp-timeout-s", self.timeout_s, self.timeout_s > 0, "a number > 0"))
        for name, value, ok, want in checks:
            if not ok:
                raise ValueError(f"{name} {value}: expected {want}")
        if self.sanitize not in LEVELS:
            raise ValueError(f"--erp-sanitize {self.sanitize}: expected one of "
                             f"{', '.join(LEVELS)}")
        if self.lease_s <= self.timeout_s:
            raise ValueError(f"--erp-lease-s {self.lease_s}: must exceed --erp-timeout-s "
                             f"{self.timeout_s} (a lease must outlive a request)")


class RateLimit:
    """Spaces acquisitions ``1/rate_per_s`` apart over all threads (no burst: an ERP's
    limit is usually counted per second, and a burst is what it answers 429 to)."""

    def __init__(self, rate_per_s: float) -> None:
        self.gap_s = 1.0 / rate_per_s
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a slot; False when ``stop`` was set meanwhile."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.gap_s
        return not stop.wait(max(0.0, slot - now))


class ErpDelivery:
    """The worker; ``start`` its threads, ``wake`` it after a commit, ``stop`` it."""

    def __init__(self, db_url: str, config: ErpConfig,
                 client_factory: Callable[[], ErpClient] | None = None) -> None:
        self.db_url, self.config = db_url, config
        self._client_factory = client_factory or (lambda: ErpClient(
            config.url, config.token, config.timeout_s))
        self.rate = RateLimit(config.rate_per_s)
        self.counters = {"erp_delivered": 0, "erp_requests": 0, "erp_retries": 0,
                         "erp_refusals": 0, "erp_parked": 0, "erp_throttled": 0,
                         "erp_unreachable": 0, "erp_misconfigured": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pause_until = 0.0  # monotonic; the ERP's Retry-After, for every thread
        self._threads: list[threading.Thread] = []
        # Opened here so a bad --db or an unmigrated schema stops ``serve`` at start.
        self._outboxes = [Outbox(db_url, "erp", config.lease_s)
                          for _ in range(config.concurrency)]

    def start(self) -> ErpDelivery:
        for i, box in enumerate(self._outboxes):
            t = threading.Thread(target=self._run, args=(box,), name=f"erp-delivery-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wake(self) -> None:
        """New transactions were committed: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """End the threads (their claimed rows released); True when all ended."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = any(t.is_alive() for t in self._threads)
        if not alive:
            for box in self._outboxes:
                box.close()
        return not alive

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _run(self, box: Outbox) -> None:
        client = self._client_factory()
        try:
            while not self._stop.is_set():
                try:
                    rows, docs, joined = box.claim_batch(self.config.batch, self._now_ms(),
                                                         self.config.sanitize)
                except Exception:  # noqa: BLE001 - the database is away: try again later
                    log.exception("erp: claiming from the outbox failed")
                    self._stop.wait(self.config.poll_s)
                    continue
                if not rows:
                    self._wake.wait(self.config.poll_s)
                    self._wake.clear()
                    continue
                # More may be due: the other threads look too.
                if len(rows) == self.config.batch:
                    self._wake.set()
                try:
                    self._deliver(box, client, rows, docs, joined)
                except Exception:  # noqa: BLE001 - released below, delivered later
                    log.exception("erp: delivering %d transactions failed", len(rows))
                    self._stop.wait(self.config.poll_s)
                finally:
                    left = [k for k, _ in rows]
                    if self._stop.is_set():
                        try:
                            box.release(left)
                        except Exception:  # noqa: BLE001 - the lease expires anyway
                            log.exception("erp: releasing %d leases failed", len(left))
        finally:
            client.close()

    def _deliver(self, box: Outbox, client: ErpClient, rows: list[tuple[Key, int]],
                 docs: dict[Key, str], joined: str | None) -> None:
        """Until every row (key, tries) is delivered or parked, or the worker stops.
        ``joined``: all their documents as one JSON array (``Outbox.claim_batch``), sent
        as long as the request holds them all; ``docs``: those known by key, the others
        fetched (``Outbox.docs``) when a request holds fewer."""
        tries = dict(rows)
        pending = [k for k, _ in rows]
        whole = (list(pending), joined)
        singly = False  # after a batch refused without names: one by one
        attempt = 0
        while pending and not self._stop.is_set():
            group = pending[:1] if singly else pending
            outcome = self._send(client, group, self._body(box, group, docs, whole))
            status = outcome.status
            if 200 <= status < 300:
                box.done(group, self._now_ms())
                self._count("erp_delivered", len(group))
                pending = pending[len(group):]
                attempt = 0
                continue
            attempt += 1
            if status == 0 or status == 429 or status >= 500 or status in MISCONFIGURED:
                if not self._pause(outcome, attempt):
                    return
                box.renew(pending, self._now_ms())
                self._count("erp_retries")
                continue
            named = _named(outcome.text) & set(group)
            if len(group) > 1 and (status == 413 or not named):
                singly = True
                continue
            refused = sorted(named or group)
            parked = self._refuse(box, refused, tries, outcome)
            pending = [k for k in pending if k not in parked]
            if len(parked) < len(refused):  # refused, not yet parked: again after a while
                if self._stop.wait(self._backoff(max(tries[k] for k in refused))):
                    return
                box.renew(pending, self._now_ms())

    def _refuse(self, box: Outbox, keys: list[Key], tries: dict[Key, int],
                outcome: Answer) -> set[Key]:
        """A refusal for each of ``keys``; those at ``refuse_limit`` parked (returned)."""
        self._count("erp_refusals", len(keys))
        box.refused(keys)
        for k in keys:
            tries[k] += 1
        park = [k for k in keys if tries[k] >= self.config.refuse_limit]
        if park:
            detail = f"the ERP answered {outcome.status}: {outcome.text.strip()[:300]}"
            box.park([(k, detail) for k in park], self._now_ms())
            self._count("erp_parked", len(park))
            log.warning("erp: %d transaction(s) refused %d times, parked for review (%s)",
                        len(park), self.config.refuse_limit, detail)
        return set(park)

    def _body(self, box: Outbox, keys: list[Key], docs: dict[Key, str],
              whole: tuple[list[Key], str | None]) -> bytes:
        """The request's body for ``keys``: one document, or ``{"transactions": [...]}``."""
        if whole[1] is not None and keys == whole[0]:
            array = whole[1]
        else:
            docs.update(box.docs([k for k in keys if k not in docs], self.config.sanitize))
            array = "[" + ",".join([docs[k] for k in keys]) + "]"
        return (array[1:-1] if len(keys) == 1 else '{"transactions":' + array + "}").encode()

    def _send(self, client: ErpClient, keys: list[Key], body: bytes) -> Answer:
        if not self.rate.acquire(self._stop):
            return Answer(0, None, "stopping")
        if len(keys) == 1:
            header = identity(*keys[0])
        else:
            ids = [identity(*k) for k in keys]
            header = "batch-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
        self._count("erp_requests")
        answer = client.post(body, header)
        if answer.status == 0:
            self._count("erp_unreachable")
        elif answer.status in (429, 503):
            self._count("erp_throttled")
        elif answer.status in MISCONFIGURED:
            self._count("erp_misconfigured")
            log.error("erp: %s answered %d: the URL or token is wrong (%s)", self.config.url,
                      answer.status, answer.text.strip()[:200])
        return answer

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
        cap = min(self.config.backoff_cap_s, self.config.backoff_s * 2 ** max(0, attempt - 1))
        return random.uniform(0, cap)

    def _pause(self, outcome: Answer, attempt: int) -> bool:
        """Wait before the next request: the ERP's Retry-After (on 429 or 503) for every
        thread of the worker, else this thread's backoff. False when stopping."""
        if outcome.status in (429, 503) and outcome.retry_after_s is not None:
            with self._lock:
                self._pause_until = max(self._pause_until,
                                        time.monotonic() + outcome.retry_after_s)
        elif self._stop.wait(self._backoff(attempt)):
            return False
        with self._lock:
            until = self._pause_until
        return not self._stop.wait(max(0.0, until - time.monotonic()))


def _named(text: str) -> set[Key]:
    """The keys an ERP's 4xx body names as refused (``{"errors": [{"idempotency_key":
    "gw/epoch/seq"}, ...]}``); empty when it names none."""
    try:
        errors = json.loads(text).get("errors", [])
    except (ValueError, AttributeError):
        return set()
    out = set()
    for e in errors if isinstance(errors, list) else []:
        parts = str(e.get("idempotency_key", "") if isinstance(e, dict) else "").split("/")
        if len(parts) == 3 and parts[2].isdigit():
            out.add((parts[0], parts[1], int(parts[2])))
    return out
