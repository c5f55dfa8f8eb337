"""A web shop selling the store's SKUs from the ERP's stock (issue 20), to count ghost
inventory.

``WebShop(erp.base_url).sell(sku, qty_milli)`` asks the ERP emulator
(``midshift/simulator/erp.py``) for the stock it shows and orders when it shows enough
(``POST /v1/orders``; the ERP answers 409 when it has run out meanwhile). The ERP only
knows the store's sales once the ledger has delivered them, so every unit the store sold
and the ERP did not know of yet can be sold a second time here: the ERP counts it as
``oversold`` when the store's sale arrives (``ErpEmulator.oversold``), and
``ghost_units`` sums that, in whole units.

Not modelled: carts, payment, returns, a shop that caches stock between requests.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


class WebShop:
    def __init__(self, erp_base_url: str, timeout_s: float = 5.0) -> None:
        parts = urlsplit(erp_base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self.sold = 0  # orders the ERP took
        self.sold_out = 0  # orders refused: the ERP showed no stock

    def _request(self, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            body = None if doc is None else json.dumps(doc).encode()
            conn.request(method, path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stock_milli(self, sku: str) -> int:
        status, doc = self._request("GET", f"/v1/stock/{sku}")
        if status != 200:
            raise RuntimeError(f"ERP stock of {sku}: HTTP {status}")
        return int(doc["units_milli"])

    def sell(self, sku: str, qty_milli: int = 1000, order_id: str = "") -> bool:
        """One order if the ERP shows the stock; True when the ERP took it."""
        if self.stock_milli(sku) < qty_milli:
            self.sold_out += 1
            return False
        status, _ = self._request("POST", "/v1/orders", {"sku": sku, "qty_milli": qty_milli,
                                                         "order_id": order_id})
        if status == 201:
            self.sold += 1
            return True
        self.sold_out += 1
        return False

    @staticmethod
    def ghost_units(oversold_milli: dict[str, int]) -> float:
        """Units sold twice (store and web), from ``ErpEmulator.snapshot()``'s
        ``oversold_milli``."""
        return sum(oversold_milli.values()) / 1000
