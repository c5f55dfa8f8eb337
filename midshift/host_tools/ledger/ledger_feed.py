"""The ledger's plain-JSON feed on MQTT (issue 20): each committed transaction, once.

For Node-RED, Telegraf or any MQTT consumer that wants to follow the ledger without
decoding signed batches: every booked transaction is published, sanitized as for the ERP
(``erp_payload``; masked PANs only, or totals per tender), QoS 1, not retained, on
``topics.ledger_feed(store)`` (``midshift/v1/ledger/feed/<store>/txn``). The rows come
from the outbox's ``feed`` sink and are marked published only once the broker has
acknowledged them (PUBACK), so a ledger that dies or a broker that is away delays the
feed and loses nothing; a consumer may see a message twice after such a crash (same
``idempotency_key``), never miss one. Order follows the ledger's commit time, per worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from midshift.firmware.core import topics
from midshift.host_tools.ledger.outbox import Outbox

log = logging.getLogger(__name__)


class LedgerFeed:
    """Publishes the ``feed`` sink through ``client`` (a connected paho client)."""

    def __init__(self, db_url: str, client: Any, level: str = "lines", batch: int = 200,
                 poll_s: float = 0.5, puback_timeout_s: float = 5.0) -> None:
        self.client, self.level, self.batch = client, level, batch
        self.poll_s, self.puback_timeout_s = poll_s, puback_timeout_s
        self.box = Outbox(db_url, "feed", lease_s=max(30.0, 2 * puback_timeout_s))
        self.published = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-feed", daemon=True)

    def start(self) -> LedgerFeed:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> bool:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return False
        self.box.close()
        return True

    def snapshot(self) -> dict[str, int]:
        return {"feed_published": self.published}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.box.claim_docs(self.batch, int(time.time() * 1000), self.level)
            except Exception:  # noqa: BLE001 - the database is away: again later
                log.exception("feed: claiming from the outbox failed")
                rows = []
            if not rows:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            keys = [k for k, _, _ in rows]
            try:
                infos = [self.client.publish(topics.ledger_feed(json.loads(doc)["store"]), doc,
                                             qos=1) for _, _, doc in rows]
                deadline = time.monotonic() + self.puback_timeout_s
                for info in infos:
                    info.wait_for_publish(max(0.01, deadline - time.monotonic()))
                ok = all(info.is_published() for info in infos)
            except (RuntimeError, ValueError, OSError) as exc:  # paho: not connected
                log.warning("feed: publishing %d transactions failed (%s); again later",
                            len(rows), exc)
                ok = False
            if ok:
                self.box.done(keys, int(time.time() * 1000))
                self.published += len(rows)
            else:
                self.box.release(keys)
                self._stop.wait(self.poll_s)
