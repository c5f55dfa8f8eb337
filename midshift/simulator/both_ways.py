"""A site's two directions beyond the gateway (issue 20), for a scenario's ``[erp]`` and
``[refdata]`` tables.

- Out: the ERP emulator (``midshift/simulator/erp.py``) on loopback, with the ledger configured to
  deliver to it (``ledger serve --erp-url``) and to publish the plain-JSON feed, which a
  subscriber here records for the judge; a web shop (``midshift/simulator/webshop.py``) sells the
  same SKUs from the ERP's stock on a seeded schedule, so ghost inventory shows.
- Down: the store's prices and stock, published by the real publisher
  (``midshift/host_tools/refdata_publisher.py``) and left on the broker for each gateway, signed
  with that gateway's command key, exactly as ``host_tools refdata publish`` does. The
  first versions go out before the agents start; a ``refdata`` fault publishes a price
  change (``change_prices``), and the host time of each version is kept for the judge.

Not modelled: the ERP sending stock back down (the scenario publishes stock once), an ERP
over HTTPS.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware.core import topics
from midshift.firmware.edges import paho_client
from midshift.simulator.devices.till import SKUS

log = logging.getLogger(__name__)


class BothWays:
    def __init__(self, erp: dict[str, Any], refdata: dict[str, Any], directory: Path,
                 store: str, site: str, seed: int = 1) -> None:
        self.erp_spec, self.ref_spec = erp, refdata
        self.directory, self.store, self.site = directory, store, site
        self.rng = random.Random(seed)
        self.erp: Any = None
        self.shop: Any = None
        self.feed: list[bytes] = []
        self.published: list[tuple[float, int]] = []  # prices: (host time, version)
        self.prices = dict(SKUS)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._feed_client: Any = None
        self._lock = threading.Lock()

    # ---- out: the ERP, the web shop and the feed -----------------------------------------

    def start_erp(self) -> None:
        """Before the ledger: it is given the emulator's URL."""
        if not self.erp_spec:
            return
        from midshift.simulator.erp import ErpEmulator
        from midshift.simulator.webshop import WebShop
        e = self.erp_spec
        self.erp = ErpEmulator(rate_per_s=e["rate_per_s"], retry_after_s=1,
                               stock={sku: 1000 * e["stock_units"] for sku, _ in SKUS}).start()
        self.shop = WebShop(self.erp.base_url)

    def ledger_args(self) -> list[str]:
        if self.erp is None:
            return []
        e = self.erp_spec
        return ["--erp-url", self.erp.url, "--erp-rate", str(e["ledger_rate_per_s"]),
                "--erp-batch", str(e["batch"]), *(["--feed"] if e["feed"] else [])]

    def start_traffic(self, broker_port: int) -> None:
        """The feed's subscriber and the web shop (once the ledger is up)."""
        if self.erp is None:
            return
        if self.erp_spec["feed"]:
            c = paho_client.new_client(client_id="sim-feed-reader")
            c.on_connect = lambda cl, *_: cl.subscribe(topics.ledger_feed(), qos=1)
            c.on_message = lambda _c, _u, m: self.feed.append(bytes(m.payload))
            c.connect("127.0.0.1", broker_port)
            c.loop_start()
            self._feed_client = c
        if self.erp_spec["webshop_orders_per_s"] > 0:
            t = threading.Thread(target=self._shop, daemon=True, name="webshop")
            t.start()
            self._threads.append(t)

    def _shop(self) -> None:
        rate = self.erp_spec["webshop_orders_per_s"]
        n = 0
        while not self._stop.wait(self.rng.expovariate(rate)):
            sku = SKUS[self.rng.randrange(len(SKUS))][0]
            try:
                self.shop.sell(sku, 1000, order_id=f"web-{n}")
            except (OSError, RuntimeError, ValueError) as exc:  # the ERP is down: no sale
                log.debug("web shop: %s", exc)
            n += 1

    def erp_down(self, mode: str) -> None:
        if mode == "slow":
            self.erp.delay_s = 2.0
        else:
            self.erp.go_down(mode)

    def erp_back(self) -> None:
        self.erp.delay_s = 0.0
        if self.erp.down is not None:
            self.erp.come_back()

    def erp_caught_up(self, ledger_txns: Callable[[], int]) -> bool:
        """The ERP holds as many transactions as the ledger (asked only with an ERP)."""
        return self.erp is None or len(self.erp.accepted) >= ledger_txns()

    # ---- down: reference data --------------------------------------------------------------

    def publish_first(self, broker_port: int, gateways: list[tuple[str, bytes]]) -> None:
        """Version 1 of the prices (and of the stock, with ``stock_units`` each), left on
        the broker before the agents start."""
        if not self.ref_spec:
            return
        self._gateways, self._port = gateways, broker_port
        self._publish("prices", {sku: {"price": p} for sku, p in self.prices.items()})
        if self.ref_spec["stock_units"]:
            units = self.ref_spec["stock_units"]
            self._publish("stock", {sku: {"qty_milli": 1000 * units} for sku, _ in SKUS})

    def change_prices(self, share: float) -> int:
        """``share`` of the SKUs get a new price; the version published."""
        skus = sorted(self.prices)
        for sku in self.rng.sample(skus, max(1, round(share * len(skus)))):
            self.prices[sku] = max(1, self.prices[sku] + self.rng.choice((-1, 1))
                                   * self.rng.randint(5, 50))
        return self._publish("prices", {sku: {"price": p} for sku, p in self.prices.items()})

    def _publish(self, dataset: str, rows: dict[str, Any]) -> int:
        from midshift.host_tools.commands.refdata import send
        from midshift.host_tools.refdata_publisher import Publisher
        with self._lock:
            pub = Publisher(self.directory, self.store)
            try:
                made = pub.publish(dataset, rows, source="scenario")
                last = made or pub.latest(dataset) or {}
                msgs = [m for gw, key in self._gateways
                        for m in pub.messages(dataset, self.site, gw, key)]
            finally:
                pub.close()
            why = send("127.0.0.1", self._port, None, msgs)
            if why is not None:
                raise RuntimeError(f"publishing {dataset} version {last.get('version')}: {why}")
            if dataset == "prices":
                self.published.append((time.time(), last["version"]))
            return int(last["version"])

    # ---- the end ------------------------------------------------------------------------------

    def stop_traffic(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def close(self) -> None:
        self.stop_traffic()
        if self._feed_client is not None:
            self._feed_client.loop_stop()
            self._feed_client.disconnect()
            self._feed_client = None
        if self.erp is not None:
            self.erp.stop()
