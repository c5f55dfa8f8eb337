"""A till (POS client) posting to the gateway's till API like a real one does.

Not a device type of the agent (a till is a client of ``midshift/firmware/edges/till_api.py``, not
something the agent reads), so this module has no ``TYPE``: ``midshift.simulator.devices.known()``
leaves it out.

What it does, on a seeded schedule (``rate_per_s``, bounded by ``count`` or ``stop()``):

- builds a sale (sometimes a refund or a void of one of its own earlier sales) with
  correct arithmetic (``midshift.firmware.core.till_txn``), tendered in cash, card or voucher;
- posts it with a fresh ``Idempotency-Key`` and waits ``timeout_s`` for the answer; on a
  timeout or a dropped connection it posts the *same* request with the *same* key again
  (at most ``retries`` times), as the IETF idempotency-key draft expects of a client;
- sometimes double-submits (the cashier pressed twice: the same key at once, again);
- respects refusals: a 403 naming an offline rule for a card or voucher payment is taken
  again in cash (a new key, the same till number, since nothing was accepted), any other
  refusal is given up;
- records what the cashier was told, one JSON line per transaction in ``truth_path``:
  ``key``, ``till``, ``till_seq``, ``told`` (``accepted``, ``refused`` or ``unknown``),
  ``status``, ``rule``, ``sha`` (the request's canonical SHA-256, as the API journals it),
  ``seq``/``receipt`` when accepted, and the transaction itself.

Faults, for the scenario's judge: ``clock_offset_s`` (the till's clock is wrong: its
``till_time`` is off, the business day it was told is not), ``full_pan_every`` (every Nth
transaction carries a full card number in the cashier field: the API must refuse it with
400 and write it nowhere; the PANs are listed in ``pans_typed``), ``unknown_refund_every``
(a refund of a sale the ledger never saw), ``seq_from`` (start the till's running number
there: two tills with one id and overlapping numbers are a split-brain conflict).

``price_lookup``: each line's price is asked of the gateway (``GET /v1/prices/{sku}``, the
cached reference data, link up or down) as a real till does, instead of the built-in list;
the truth line's ``prices`` says which version each answer came from and when (host time),
for the both-ways judge (``midshift/simulator/both_ways_judge.py``).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import random
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from midshift.firmware.core.till_txn import canonical_sha, lines_total

log = logging.getLogger(__name__)
SKUS = (("4006381333931", 249), ("BREAD", 180), ("MILK-1L", 119), ("COFFEE-500", 699),
        ("APPLES-KG", 299), ("CHOC-100", 149), ("WINE-075", 899), ("BATTERY-AA4", 499))
OFFLINE_RULES = ("tender_not_offline", "card_floor_limit", "card_offline_age",
                 "offline_exposure_cap", "txn_cap")
TEST_PAN = "4111111111111111"  # a Luhn-valid test number


class Till:
    def __init__(self, till: str, port: int, token: str, truth_path: Path, *,
                 business_day: str, tz: str = "Europe/Berlin", seed: int = 1,
                 rate_per_s: float = 1.0, count: int | None = None, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None, timeout_s: float = 2.0, retries: int = 5,
                 card_share: float = 0.4, voucher_share: float = 0.1,
                 refund_share: float = 0.05, void_share: float = 0.03,
                 double_submit: float = 0.02, full_pan_every: int = 0,
                 unknown_refund_every: int = 0, clock_offset_s: float = 0.0,
                 seq_from: int = 1, day_start: dt.datetime | None = None,
                 clock_speed: float = 1.0, clock: Any = None,
                 busy: tuple[float, float, float] | None = None, twin: bool = False,
                 price_lookup: bool = False) -> None:
        """``busy``: (from_s, to_s, factor) in wall seconds from ``start()``: the rate is
        ``factor`` times higher then (the busiest hour). ``clock``: the site's wall clock
        (``now_ms()``, midshift/simulator/clock.py) the till's clock follows; without it the till's
        clock starts at ``day_start`` (07:00 of the business day) and runs ``clock_speed``
        times as fast as the wall."""
        self.till, self.port, self.token, self.host, self.tls = till, port, token, host, tls
        self.truth_path = Path(truth_path)
        self.business_day, self.tz = business_day, ZoneInfo(tz)
        self.rng = random.Random(seed)
        self.rate_per_s, self.count = rate_per_s, count
        self.timeout_s, self.retries = timeout_s, retries
        self.card_share, self.voucher_share = card_share, voucher_share
        self.refund_share, self.void_share = refund_share, void_share
        self.double_submit = double_submit
        self.full_pan_every, self.unknown_refund_every = full_pan_every, unknown_refund_every
        self.clock_offset_s = clock_offset_s
        self.next_seq = seq_from
        # The till's own clock: local time of the business day, running clock_speed times
        # as fast as the wall (a scenario at speed 8 makes a day pass in 3 hours).
        self.day_start = day_start or dt.datetime.fromisoformat(
            business_day + "T07:00").replace(tzinfo=self.tz)
        self.clock_speed = clock_speed
        self.clock = clock
        self.busy = busy
        self.twin = twin  # a second till posting this till's id and numbers (split brain)
        self.price_lookup = price_lookup
        self._looked_up: list[dict[str, Any]] = []  # this transaction's price answers
        self._wall0 = time.monotonic()
        self.sales: list[dict[str, Any]] = []   # accepted sales, for refunds and voids
        self.pans_typed: list[str] = []
        self.counters = {"posted": 0, "accepted": 0, "refused": 0, "unknown": 0,
                         "retries": 0, "double_submits": 0, "recashed": 0}
        self.errors: list[str] = []
        self.posting = threading.Event()  # a POST sent, its answer not yet read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- life ---------------------------------------------------------------------------

    def start(self) -> Till:
        self._wall0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"till-{self.till}")
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def _run(self) -> None:
        n = 0
        next_t = time.monotonic()
        while not self._stop.is_set() and (self.count is None or n < self.count):
            rate = self.rate_per_s
            if self.busy is not None and self.busy[0] <= next_t - self._wall0 < self.busy[1]:
                rate *= self.busy[2]
            next_t += self.rng.expovariate(rate) if rate > 0 else 1.0
            if self._stop.wait(max(0.0, next_t - time.monotonic())):
                break
            try:
                self.one()
            except Exception as exc:  # noqa: BLE001 - a bug here must show, not end the till
                self.errors.append(repr(exc))
                log.exception("till %s: transaction failed", self.till)
            n += 1

    # ---- one transaction ----------------------------------------------------------------

    def now_local(self) -> dt.datetime:
        """The till's clock (wrong by ``clock_offset_s`` if told so), in the store's zone."""
        if self.clock is not None:
            utc = dt.datetime.fromtimestamp(self.clock.now_ms() / 1000 + self.clock_offset_s,
                                            dt.UTC)
            return utc.astimezone(self.tz)
        elapsed = (time.monotonic() - self._wall0) * self.clock_speed + self.clock_offset_s
        utc = self.day_start.astimezone(dt.UTC) + dt.timedelta(seconds=elapsed)
        return utc.astimezone(self.tz)

    def one(self) -> dict[str, Any]:
        """Make, post and record one transaction; returns its truth line."""
        doc = self._make()
        line = self._post_recorded(doc)
        if line["told"] == "refused" and line["rule"] in OFFLINE_RULES and \
                doc["type"] == "sale" and doc["tenders"][0]["kind"] != "cash":
            self.counters["recashed"] += 1  # "card does not work right now: cash?"
            cash = dict(doc, tenders=[{"kind": "cash", "amount": lines_total(doc)}])
            line = self._post_recorded(cash)
        if line["told"] == "accepted" and doc["type"] == "sale":
            self.sales.append(doc)
        return line

    def _make(self) -> dict[str, Any]:
        seq = self.next_seq
        self.next_seq += 1
        base = {"till": self.till, "till_seq": seq, "business_day": self.business_day,
                "cashier": f"{self.till}-c{1 + seq % 3}", "currency": "EUR",
                "till_time": self.now_local().isoformat(timespec="seconds")}
        if self.full_pan_every and seq % self.full_pan_every == 0:
            self.pans_typed.append(TEST_PAN)
            base["cashier"] = TEST_PAN  # typed into the wrong field: must be refused
        if self.unknown_refund_every and seq % self.unknown_refund_every == 0:
            return self._refund_of(dict(self._basket(), till=self.till, till_seq=10_000_000 + seq),
                                   base)
        r = self.rng.random()
        if self.sales and r < self.refund_share:
            return self._refund_of(self.rng.choice(self.sales), base)
        if self.sales and r < self.refund_share + self.void_share:
            orig = self.sales.pop(self.rng.randrange(len(self.sales)))
            return dict(base, type="void", lines=orig["lines"], tenders=orig["tenders"],
                        original={"till": orig["till"], "till_seq": orig["till_seq"]})
        return dict(base, type="sale", **self._basket())

    def _basket(self) -> dict[str, Any]:
        lines = []
        for _ in range(self.rng.randint(1, 5)):
            sku, price = SKUS[self.rng.randrange(len(SKUS))]
            if self.price_lookup:
                price = self._price(sku, price)
            line = {"sku": sku, "qty_milli": 1000 * self.rng.randint(1, 3), "unit_price": price}
            if self.rng.random() < 0.1:
                line["discount"] = 20
            lines.append(line)
        total = lines_total({"lines": lines})
        r = self.rng.random()
        if r < self.card_share:
            tender = {"kind": "card", "amount": total, "pan": "411111******1111",
                      "scheme": "visa", "auth": "approved"}
        elif r < self.card_share + self.voucher_share:
            tender = {"kind": "voucher", "amount": total}
        else:
            tender = {"kind": "cash", "amount": total}
        return {"lines": lines, "tenders": [tender]}

    def _price(self, sku: str, fallback: int) -> int:
        """The gateway's price for ``sku`` (its version and the host time noted), or the
        built-in one when the gateway has none (404) or does not answer."""
        t = time.time()
        conn = self._connection()
        try:
            conn.request("GET", f"/v1/prices/{sku}",
                         headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            doc = json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError):
            resp, doc = None, {}
        finally:
            conn.close()
        ok = resp is not None and resp.status == 200 and isinstance(doc.get("price"), int)
        self._looked_up.append({"sku": sku, "t": t, "status": None if resp is None else
                                resp.status, "version": doc.get("version") if ok else None})
        return doc["price"] if ok else fallback

    def _connection(self) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                           context=self.tls)

    def _refund_of(self, orig: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        line = orig["lines"][0]
        refund_line = {"sku": line["sku"], "qty_milli": 1000, "unit_price": line["unit_price"]}
        amount = lines_total({"lines": [refund_line]})
        return dict(base, type="refund", lines=[refund_line],
                    tenders=[{"kind": "cash", "amount": amount}],
                    original={"till": orig["till"], "till_seq": orig["till_seq"]})

    def _post_recorded(self, doc: dict[str, Any]) -> dict[str, Any]:
        key = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if self.double_submit and self.rng.random() < self.double_submit:
            self.counters["double_submits"] += 1
            threading.Thread(target=self._post, args=(doc, key), daemon=True).start()
        status, body = self._post(doc, key)
        told = ("accepted" if status in (200, 201) else
                "unknown" if status is None else "refused")
        line = {"key": key, "till": self.till, "till_seq": doc["till_seq"], "told": told,
                "status": status, "rule": body.get("rule"), "error": body.get("error"),
                "sha": canonical_sha(doc), "seq": body.get("seq"),
                "receipt": body.get("receipt"), "twin": self.twin, "txn": doc}
        if self._looked_up:
            line["prices"], self._looked_up = self._looked_up, []
        with self._lock:
            self.counters["posted"] += 1
            self.counters[told] += 1
            with open(self.truth_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
        return line

    def _post(self, doc: dict[str, Any], key: str) -> tuple[int | None, dict[str, Any]]:
        """POST until an answer (timeouts and dropped connections retried with the same
        key, at most ``retries`` times; 409 means the first try is still being made
        durable: ask again). (None, {}) if no answer came."""
        data = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   "Authorization": f"Bearer {self.token}"}
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters["retries"] += 1
                if self._stop.wait(min(0.1 * 2 ** attempt, 2.0)):
                    break
            conn = self._connection()
            self.posting.set()
            try:
                conn.request("POST", "/v1/transactions", body=data, headers=headers)
                resp = conn.getresponse()
                out = resp.read()
            except (OSError, http.client.HTTPException):
                continue
            finally:
                self.posting.clear()
                conn.close()
            if resp.status == 409:
                continue
            try:
                return resp.status, json.loads(out) if out else {}
            except ValueError:
                return resp.status, {}
        return None, {}


def read_truth(path: Path) -> list[dict[str, Any]]:
    """A till's truth lines (a torn last line, from a kill mid-write, is skipped)."""
    out = []
    if not Path(path).exists():
        return out
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out
