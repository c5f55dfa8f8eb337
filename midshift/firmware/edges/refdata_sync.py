"""Reference data down to this gateway: subscribe, fetch what was missed, apply in order.

No extra server: the publisher (``python -m midshift.host_tools refdata publish``) leaves on the
broker, retained, per gateway and dataset, a pointer to the latest version, the deltas of
the last N versions and the snapshot chunks of the latest version
(``docs/reference-data.md``). Fetching is subscribing:

1. On connect: subscribe to the pointers and the deltas (``.../refdata/+/latest``,
   ``.../refdata/+/delta/+``). The broker sends the retained ones at once, then the live
   ones as they are published. Anything not newer than the local version is ignored
   (``stale``, counted).
2. A delta that does not follow the local version waits (at most ``PENDING_MAX`` per
   dataset) for the ones before it; on such a gap the delta subscription is made again,
   which makes the broker send every retained delta once more (asking for what was missed).
3. When the pointer shows the gateway below the oldest retained delta (first start, or
   too far behind), the snapshot of the pointer's version is fetched chunk by chunk, by
   subscribing to each chunk not yet stored: after a restart only the missing chunks come.

Every rejection is counted by reason (``core/refdata.py``) and logged. With the broker
gone nothing changes but the age: the tills go on reading the stored version, and its
age grows from the last moment the gateway knew it was the newest.

Its own MQTT client on the first uplink by priority (``edges/mqtt.py``), apart from the
forwarder's, so a snapshot of 100,000 rows never queues behind batches or acks.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from midshift.firmware.core import topics
from midshift.firmware.core.refdata import DATASETS, RefdataGate, RefdataRejected
from midshift.firmware.core.signing import Signer
from midshift.firmware.edges.mqtt import LinkDown, LinkUp, MqttUplink, Received
from midshift.firmware.edges.refdata_store import RefdataStore

log = logging.getLogger(__name__)

PENDING_MAX = 64


class Sold:
    """Lines a till sold (``[(sku, qty_milli)]``, negative for a refund), for the provisional
    stock: written by the sync thread, so a till's 201 never waits on this write."""

    def __init__(self, lines: list[tuple[str, int]]) -> None:
        self.lines = lines


class RefdataSync:
    def __init__(self, store: RefdataStore, command_key: bytes, site: str, gateway: str,
                 uplink_cfg: Any, now_ms: Any) -> None:
        """``uplink_cfg`` None: no link (``offline``): the store is read, never changed."""
        self.store = store
        self.gate = RefdataGate(Signer(command_key), gateway)
        self.site = site
        self.gateway = gateway
        self.now_ms = now_ms
        self.events: queue.Queue[Any] = queue.Queue()
        self.pointer: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[int, dict[str, Any]]] = {ds: {} for ds in DATASETS}
        self.asked_at: dict[str, int] = {}   # dataset -> local version when last re-asked
        self.fetching: dict[str, tuple[int, int]] = {}  # dataset -> (version, chunks)
        self.live = False
        self.counters = {"deltas_applied": 0, "snapshots_installed": 0, "re_asked": 0,
                         "connects": 0}
        self._delta_filter = topics.refdata_topic(site, gateway, "+", "delta", "+")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.uplink = None if uplink_cfg is None else MqttUplink(uplink_cfg, f"{gateway}-refdata-{os.urandom(4).hex()}",
                                 self.events,
                                 [topics.refdata_topic(site, gateway, "+", "latest"),
                                  self._delta_filter], keepalive_s=5)

    @classmethod
    def offline(cls, store: RefdataStore) -> RefdataSync:
        """A sync with no link and no key: what the store holds is all there is."""
        return cls(store, bytes(16), "-", "-", None, lambda: 0)

    def start(self) -> RefdataSync:
        self._thread = threading.Thread(target=self._run, name="refdata", daemon=True)
        self._thread.start()
        if self.uplink is not None:
            self.uplink.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.events.put(None)
        if self.uplink is not None:
            self.uplink.stop()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:  # what was queued before stop() is still handled (a till's sale)
            ev = self.events.get()
            if ev is None:
                if self._stopping.is_set():
                    return
                continue
            try:
                self.handle(ev)
            except Exception:  # a bug must not stop reference data for good
                log.exception("refdata: handling %s failed", type(ev).__name__)

    # ---- what arrives (the sync thread) -------------------------------------------------

    def sold(self, lines: list[tuple[str, int]]) -> None:
        """From the till API: queue a sale's lines for the provisional stock."""
        self.events.put(Sold(lines))

    def handle(self, ev: Any) -> None:
        if isinstance(ev, Sold):
            self.store.sold(ev.lines)
        elif isinstance(ev, LinkUp):
            self.live = True
            self.counters["connects"] += 1
            self.asked_at.clear()
            for ds, (version, count) in list(self.fetching.items()):
                self._fetch_chunks(ds, version, count)  # resume after a reconnect
        elif isinstance(ev, LinkDown):
            self.live = False
        elif isinstance(ev, Received):
            if not ev.payload:
                return  # a retained message cleared by the publisher
            try:
                doc = self.gate.read(ev.payload)
            except RefdataRejected as exc:
                log.warning("refdata: %s refused (%s): %s", ev.topic, exc.reason, exc)
                return
            getattr(self, "_on_" + doc["kind"])(doc, ev.payload)

    def _on_pointer(self, doc: dict[str, Any], raw: bytes) -> None:
        ds = doc["dataset"]
        self.pointer[ds] = doc
        version = self.store.state(ds)[0]
        if version == doc["version"]:
            self.store.mark_synced(ds, self.now_ms())
        elif version < doc["version"] and (version < doc["oldest_from"] or
                                           doc["version"] - version > PENDING_MAX):
            log.warning("refdata: %s at %d, the oldest delta is from %d: fetching the "
                        "snapshot of %d", ds, version, doc["oldest_from"], doc["version"])
            self._fetch_chunks(ds, doc["version"], doc["chunks"])
        else:
            self._drain(ds)

    def _on_delta(self, doc: dict[str, Any], raw: bytes) -> None:
        ds = doc["dataset"]
        version = self.store.state(ds)[0]
        if doc["from"] > version:
            if len(self.pending[ds]) < PENDING_MAX:
                self.pending[ds][doc["from"]] = doc
        self._try(doc)
        self._drain(ds)

    def _on_chunk(self, doc: dict[str, Any], raw: bytes) -> None:
        ds = doc["dataset"]
        want = self.fetching.get(ds)
        if want is None or want[0] != doc["version"]:
            return
        self.store.put_chunk(doc, raw)
        if self.store.missing_chunks(ds, doc["version"], doc["count"]):
            return
        self._client().unsubscribe(topics.refdata_topic(self.site, self.gateway, ds,
                                                            "snapshot", doc["version"], "+"))
        del self.fetching[ds]
        try:
            self.store.install_snapshot(self.gate, ds, doc["version"], self.now_ms(),
                                        (self.pointer.get(ds) or {}).get("published_ms"))
        except RefdataRejected as exc:
            log.error("refdata: snapshot %s %d refused (%s): %s", ds, doc["version"],
                      exc.reason, exc)
            return
        self.counters["snapshots_installed"] += 1
        log.warning("refdata: %s snapshot %d installed", ds, doc["version"])
        self._drain(ds)

    def _try(self, doc: dict[str, Any]) -> bool:
        ds = doc["dataset"]
        try:
            self.store.apply_delta(self.gate, doc, self.now_ms())
        except RefdataRejected as exc:
            if exc.reason == "stale":
                log.info("refdata: %s", exc)
            else:
                log.warning("refdata: delta refused (%s): %s", exc.reason, exc)
            if exc.reason == "gap":
                self._ask_again(ds)
            return False
        self.counters["deltas_applied"] += 1
        log.info("refdata: %s %d -> %d applied (%d ops)", ds, doc["from"], doc["to"],
                 len(doc["ops"]))
        return True

    def _drain(self, ds: str) -> None:
        """Apply the waiting deltas that now follow, in order; drop the stale ones."""
        pending = self.pending[ds]
        while True:
            version = self.store.state(ds)[0]
            for k in [k for k in pending if pending[k]["to"] <= version]:
                del pending[k]
            doc = pending.pop(version, None)
            if doc is None or not self._try(doc):
                break
        ptr = self.pointer.get(ds)
        if ptr is not None and self.store.state(ds)[0] == ptr["version"]:
            self.store.mark_synced(ds, self.now_ms())

    def _ask_again(self, ds: str) -> None:
        """A gap: subscribe to the deltas again, once per local version, so the broker
        sends the retained ones (the missed delta among them) once more."""
        version = self.store.state(ds)[0]
        if self.asked_at.get(ds) == version or not self.live:
            return
        self.asked_at[ds] = version
        self.counters["re_asked"] += 1
        self._client().unsubscribe(self._delta_filter)
        self._client().subscribe(self._delta_filter, qos=1)

    def _fetch_chunks(self, ds: str, version: int, count: int) -> None:
        self.fetching[ds] = (version, count)
        missing = self.store.missing_chunks(ds, version, count)
        if not missing:
            missing = [0]  # all stored: one chunk again completes it
        self._client().subscribe([(topics.refdata_topic(self.site, self.gateway, ds,
                                                            "snapshot", version, i), 1)
                                      for i in missing])

    def _client(self) -> Any:
        if self.uplink is None:
            raise RuntimeError("refdata: no uplink")
        return self.uplink.client

    # ---- what the tills and the status see ----------------------------------------------

    def age_s(self, dataset: str, now_ms: int) -> float | None:
        """Seconds since this gateway last knew its version of ``dataset`` was the newest
        (0 while connected and current); None before it ever held one."""
        version, _, _, synced = self.store.state(dataset)
        return self.age_of(dataset, version, synced, now_ms)

    def age_of(self, dataset: str, version: int, synced: int | None,
               now_ms: int) -> float | None:
        """``age_s`` from a state already read."""
        if synced is None:
            return None
        ptr = self.pointer.get(dataset)
        if self.live and ptr is not None and ptr["version"] == version:
            return 0.0
        return round(max(0, now_ms - synced) / 1000, 1)

    def status(self, now_ms: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ds, st in self.store.versions().items():
            ptr = self.pointer.get(ds)
            out[ds] = {"version": st["version"], "age_s": self.age_s(ds, now_ms),
                       "published_ms": st["published_ms"],
                       "latest": None if ptr is None else ptr["version"]}
        return {"datasets": out, "live": self.live, "rejected": dict(self.gate.rejected),
                "stock_corrections": dict(self.store.corrections), **self.counters}
