"""The ledger worker: subscribe to every gateway's batches, verify, store, acknowledge.

One paho-mqtt client subscribes (QoS 1) to ``midshift/v1/+/+/events`` or, as one of
several workers, to the MQTT 5 shared subscription ``$share/<group>/midshift/v1/+/+/events``.
For each batch: the gateway in the topic must be the one the batch claims; its key comes
from the key registry; the HMAC is checked before anything else is trusted; the events
are inserted in one transaction (with every other batch waiting: group commit); then the
ack goes to ``.../ack`` with the ledger's time.
The broker's PUBACK for the batch is sent only after that (paho ``manual_ack``), so a
worker that dies mid-batch leaves the batch to be redelivered, not lost.

A forged, truncated or unknown-gateway batch is rejected: counted, logged, stored in the
``rejections`` table, and answered with a ``rejected`` ack when the gateway is known.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from firmware.core import topics
from firmware.core.broker_url import parse_broker_url
from firmware.core.signing import Signer
from firmware.core.wire import Batch, WireError, decode_batch, encode_ack, peek_gateway
from host_tools.ledger.store import LedgerStore

log = logging.getLogger(__name__)
MAX_GROUP = 64  # batches stored in one transaction at most


def load_keys(path: str | Path) -> dict[str, bytes]:
    """The key registry: a TOML file ``[gateways] gw-01 = "<hex key>"``."""
    doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    table = doc.get("gateways")
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [gateways] table of gateway = \"hex key\"")
    keys = {}
    for gw, hexkey in table.items():
        try:
            keys[gw] = bytes.fromhex(hexkey)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: gateways.{gw}: not a hex key") from None
    return keys


class LedgerService:
    def __init__(self, store: LedgerStore, keys: dict[str, bytes], broker: str,
                 shared_group: str | None = None, client_id: str = "",
                 tls_files: tuple[str | Path, str | Path, str | Path] | None = None) -> None:
        """``tls_files``: (CA, certificate, key) for an ``mqtts://`` broker: the ledger's
        own identity (``provision`` issues it), which the broker's ACL confines to reading
        batches and writing acks and commands."""
        self.store = store
        self.signers = {gw: Signer(k) for gw, k in keys.items()}
        self.host, self.port, tls = parse_broker_url(broker)
        if tls != (tls_files is not None):
            raise ValueError(f"broker {broker}: " + ("mqtts:// needs the ledger's CA, "
                             "certificate and key" if tls else "certificate files given for "
                             "a plain mqtt:// broker; use mqtts://"))
        self.shared_group = shared_group
        self.counters = {"batches": 0, "events": 0, "duplicates": 0, "rejected": 0}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._writer, name="ledger-writer", daemon=True)
        protocol = mqtt.MQTTv5 if shared_group else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, manual_ack=True,
                                  **({} if shared_group else {"clean_session": not client_id}))
        if tls_files is not None:
            ca, cert, key = (str(f) for f in tls_files)
            ctx = ssl.create_default_context(cafile=ca)
            ctx.load_cert_chain(cert, key)
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    @property
    def topic(self) -> str:
        t = topics.every(topics.EVENTS)
        return f"$share/{self.shared_group}/{t}" if self.shared_group else t

    def start(self, timeout_s: float = 10.0) -> LedgerService:
        self._thread.start()
        # A handful of workers, not a fleet: back within half a second of the broker, or
        # every batch the gateways send meanwhile waits for their ack timeout.
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.client.loop_stop()
            raise RuntimeError(f"ledger: no subscription at {self.host}:{self.port} "
                               f"within {timeout_s} s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any = None) -> None:
        if reason.is_failure:
            log.error("ledger: broker refused the connection: %s", reason)
            return
        client.subscribe(self.topic, qos=1)
        log.info("ledger: subscribed to %s on %s:%d", self.topic, self.host, self.port)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(msg)  # the writer thread stores, acks and PUBACKs

    def _writer(self) -> None:
        """Group commit: every batch waiting is verified and stored in one transaction,
        then each is acknowledged, so the ledger's fsync rate does not cap its rate."""
        while not self._closing.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            msgs = [first]
            while len(msgs) < MAX_GROUP:
                try:
                    msgs.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._process([(m.topic, m.payload) for m in msgs])
            except Exception:  # noqa: BLE001 - a bad group must not stop the worker
                log.exception("ledger: failed to store %d batches; not acknowledged", len(msgs))
                continue  # no PUBACK: the broker redelivers them after a reconnect
            for m in msgs:
                self.client.ack(m.mid, m.qos)

    def handle(self, topic: str, payload: bytes) -> bytes | None:
        """Verify, store and acknowledge one batch; returns the ack sent (None if none)."""
        return self._process([(topic, payload)])[0]

    def _process(self, items: list[tuple[str, bytes]]) -> list[bytes | None]:
        now = int(time.time() * 1000)
        verified = []
        acks: list[bytes | None] = [None] * len(items)
        for i, (topic, payload) in enumerate(items):
            batch = self._verify(topic, payload, now)
            if batch is not None:
                verified.append((i, topic, batch))
        if not verified:
            return acks
        results = self.store.store_many([b for _, _, b in verified], now)
        for (i, topic, batch), (new, dup) in zip(verified, results, strict=True):
            with self._lock:
                self.counters["batches"] += 1
                self.counters["events"] += new
                self.counters["duplicates"] += dup
            ack = encode_ack(self.signers[batch.gateway], batch.epoch, batch.first_seq,
                             batch.last_seq, now, duplicates=dup)
            self.client.publish(topics.reply_to(topic), ack, qos=1)
            acks[i] = ack
        return acks

    def _verify(self, topic: str, payload: bytes, now: int) -> Batch | None:
        where = topics.split(topic)
        if where is None or where[2] != topics.EVENTS:
            self._reject(None, "bad_topic", f"topic {topic}", now)
            return None
        gw_topic = where[1]
        try:
            gw = peek_gateway(payload)
            if gw != gw_topic:
                raise WireError("wrong_topic", f"batch from {gw} published under {gw_topic}")
            signer = self.signers.get(gw)
            if signer is None:
                raise WireError("unknown_gateway", f"gateway {gw} is not registered")
            return decode_batch(payload, signer, zlib.decompress)
        except WireError as exc:
            self._reject(gw_topic, exc.reason, str(exc), now)
            return None  # no ack: a forger learns nothing, the real gateway resends

    def _reject(self, gateway: str | None, reason: str, detail: str, now: int) -> None:
        with self._lock:
            self.counters["rejected"] += 1
        log.warning("ledger: rejected a batch (%s): %s", reason, detail)
        self.store.reject(gateway, reason, detail, now)
