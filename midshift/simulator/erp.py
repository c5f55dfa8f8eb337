"""An ERP's transaction webhook on loopback (issue 20), for tests, the bench and scenarios.

``ErpEmulator().start()`` serves ``POST /v1/transactions`` (one transaction, or
``{"transactions": [...]}``) with ``http.server.ThreadingHTTPServer`` on 127.0.0.1 and
behaves as the ERPs the delivery worker must survive:

- rate limit: a token bucket of ``rate_per_s`` requests/s (``burst`` deep); beyond it
  ``429`` with ``Retry-After`` (whole seconds, as RFC 9110 allows);
- down: ``go_down("503")`` answers ``503`` with ``Retry-After``; ``go_down("refuse")``
  closes the listening socket (connection refused); ``come_back()`` ends either;
- slow: ``delay_s`` before every answer;
- refusals: ``reject`` (a function of one item returning a reason or None) makes a
  request holding such an item ``422`` with ``{"errors": [{"idempotency_key", "error"}]}``
  naming them; nothing of that request is recorded (all or nothing);
- ``fail_next(status, n, retry_after_s)``: the next ``n`` requests get ``status``;
- ``token``: requests without ``Authorization: Bearer <token>`` get ``401``.

It records every item it accepted by idempotency key (``accepted``), counts the ones it
had already (``duplicates``, per key) and logs each request (time, status, items, header
key). It holds stock per SKU in milli-units: an accepted sale takes its lines' quantities
off, a refund or void puts them back; a store sale that takes a SKU below zero counts the
units below zero as ``oversold`` (ghost inventory: the web shop sold them first).
``GET /v1/stock/SKU`` and ``POST /v1/orders`` (``midshift/simulator/webshop.py``) read and sell
that stock.

Not modelled: HTTPS, partial acceptance of a batch, an ERP losing what it accepted, HTTP
dates in ``Retry-After``, stock reservations.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the delivery worker's client expects
    # Headers and body in one segment: written apart, Nagle on this side and delayed ACK
    # on the client's cost 40 ms a request (http.server writes headers unbuffered).
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass  # the emulator's log is ``requests``

    def _answer(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        erp = self.server.erp
        if self.path.startswith("/v1/stock/"):
            sku = self.path[len("/v1/stock/"):]
            with erp.lock:
                self._answer(200, {"sku": sku, "units_milli": erp.stock.get(sku, 0)})
            return
        self._answer(404, {"error": "no such path"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        erp = self.server.erp
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with erp.lock:
            erp.arrived += 1
        if erp.delay_s:
            time.sleep(erp.delay_s)
        if self.path == "/v1/orders":
            status, doc = erp.order(raw)
            self._answer(status, doc)
            return
        if self.path != "/v1/transactions":
            self._answer(404, {"error": "no such path"})
            return
        status, doc, headers = erp.receive(raw, self.headers.get("Idempotency-Key"),
                                           self.headers.get("Authorization"))
        self._answer(status, doc, headers)

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client died waiting (a test killed it): what it sent is recorded


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    erp: ErpEmulator


class ErpEmulator:
    def __init__(self, rate_per_s: float | None = None, burst: float | None = None,
                 retry_after_s: int = 1, delay_s: float = 0.0, token: str | None = None,
                 reject: Callable[[dict[str, Any]], str | None] | None = None,
                 stock: dict[str, int] | None = None, port: int = 0) -> None:
        self.rate_per_s, self.retry_after_s, self.delay_s = rate_per_s, retry_after_s, delay_s
        self.burst = burst if burst is not None else max(1.0, (rate_per_s or 0) / 10)
        self.token, self.reject = token, reject
        self.stock: dict[str, int] = dict(stock or {})
        self.oversold: Counter[str] = Counter()
        self.accepted: dict[str, dict[str, Any]] = {}
        self.accepted_at: dict[str, float] = {}  # key -> time.time() when first accepted
        self.duplicates: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []  # judged (after ``delay_s``)
        self.arrived = 0  # requests read, before ``delay_s``: in flight when > requests
        self.orders: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.down: str | None = None
        self._fail: list[tuple[int, int | None]] = []
        self._tokens = self.burst
        self._refill = time.monotonic()
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/transactions"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ErpEmulator:
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.erp = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"erp-emulator-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    close = stop

    def __enter__(self) -> ErpEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------
    def go_down(self, how: str = "503") -> None:
        """``503`` (answers 503 + Retry-After) or ``refuse`` (nothing listens)."""
        if how not in ("503", "refuse"):
            raise ValueError(f"go_down({how!r}): expected '503' or 'refuse'")
        self.down = how
        if how == "refuse":
            self.stop()

    def come_back(self) -> None:
        if self.down == "refuse":
            self.start()  # same port: http.server sets SO_REUSEADDR
        self.down = None

    def fail_next(self, status: int, n: int = 1, retry_after_s: int | None = None) -> None:
        with self.lock:
            self._fail += [(status, retry_after_s)] * n

    # -- the webhook -----------------------------------------------------------------------
    def _limited(self) -> bool:
        if self.rate_per_s is None:
            return False
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refill) * self.rate_per_s)
        self._refill = now
        if self._tokens < 1:
            return True
        self._tokens -= 1
        return False

    def receive(self, raw: bytes, header_key: str | None, auth: str | None
                ) -> tuple[int, Any, dict[str, str]]:
        now = time.time()
        with self.lock:
            entry: dict[str, Any] = {"t": now, "key": header_key, "items": 0}
            self.requests.append(entry)
            status, doc, headers = self._judge(raw, header_key, auth, now)
            entry["status"] = status
            return status, doc, headers

    def _judge(self, raw: bytes, header_key: str | None, auth: str | None, now: float
               ) -> tuple[int, Any, dict[str, str]]:
        retry = {"Retry-After": str(self.retry_after_s)}
        if self.down == "503":
            return 503, {"error": "down for maintenance"}, retry
        if self._fail:
            status, after = self._fail.pop(0)
            return status, {"error": "injected"}, ({} if after is None
                                                   else {"Retry-After": str(after)})
        if self.token is not None and auth != f"Bearer {self.token}":
            return 401, {"error": "bad token"}, {}
        if self._limited():
            return 429, {"error": "rate limited"}, retry
        try:
            doc = json.loads(raw)
        except ValueError:
            return 400, {"error": "not JSON"}, {}
        items = doc["transactions"] if isinstance(doc, dict) and "transactions" in doc \
            else [doc]
        if len(items) == 1 and isinstance(items[0], dict) and "transactions" not in doc \
                and items[0].get("idempotency_key") != header_key:
            return 400, {"error": "Idempotency-Key differs from the body's key"}, {}
        self.requests[-1]["items"] = len(items)
        errors = []
        for item in items:
            why = self.reject(item) if self.reject else None
            if why:
                errors.append({"idempotency_key": item.get("idempotency_key"), "error": why})
        if errors:
            return 422, {"errors": errors}, {}
        new = 0
        for item in items:
            key = item["idempotency_key"]
            if key in self.accepted:
                self.duplicates[key] += 1
                continue
            self.accepted[key] = item
            self.accepted_at[key] = now
            new += 1
            self._move_stock(item)
        return 201 if new else 200, {"accepted": new, "duplicates": len(items) - new}, {}

    def _move_stock(self, item: dict[str, Any]) -> None:
        sign = -1 if item.get("type") == "sale" else 1
        for line in item.get("lines", []):
            sku, qty = line.get("sku"), int(line.get("qty_milli", 0))
            before = self.stock.get(sku, 0)
            after = before + sign * qty
            self.stock[sku] = after
            if sign < 0 and after < 0:
                self.oversold[sku] += min(qty, -after)

    def order(self, raw: bytes) -> tuple[int, Any]:
        """A web-shop order: sold only if the ERP shows the stock (else 409)."""
        doc = json.loads(raw)
        sku, qty = doc["sku"], int(doc["qty_milli"])
        with self.lock:
            have = self.stock.get(sku, 0)
            if have < qty:
                return 409, {"error": "sold out", "units_milli": have}
            self.stock[sku] = have - qty
            self.orders.append(doc)
            return 201, {"units_milli": self.stock[sku]}

    # -- what it saw -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            times = self.accepted_at.values()
            return {"accepted": len(self.accepted),
                    "first_accept_t": min(times, default=None),
                    "last_accept_t": max(times, default=None),
                    "duplicates": sum(self.duplicates.values()),
                    "requests": len(self.requests),
                    "by_status": dict(Counter(r.get("status") for r in self.requests)),
                    "oversold_milli": dict(self.oversold), "orders": len(self.orders)}


def main() -> None:
    """``python -m midshift.simulator.erp --port P --rate R``: the emulator alone (for the bench)."""
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rate", type=float, default=None, help="requests/s before 429")
    p.add_argument("--delay-s", type=float, default=0.0)
    args = p.parse_args()
    erp = ErpEmulator(rate_per_s=args.rate, delay_s=args.delay_s, port=args.port).start()
    print(json.dumps({"port": erp.port}), flush=True)
    try:  # on stdin: "stats" (the snapshot on stdout), "down", "back", "quit"
        for line in iter(input, "quit"):
            if line == "stats":
                print(json.dumps(erp.snapshot()), flush=True)
            elif line == "down":
                erp.go_down("503")
            elif line == "back":
                erp.come_back()
    except EOFError:
        pass
    erp.stop()


if __name__ == "__main__":
    main()
