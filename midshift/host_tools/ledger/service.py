"""The ledger worker: subscribe to every gateway's batches, verify, store, acknowledge.

One paho-mqtt client subscribes (QoS 1) to ``midshift/v1/+/+/events`` or, as one of
several workers, to the MQTT 5 shared subscription ``$share/<group>/midshift/v1/+/+/events``.
For each batch: the gateway in the topic must be the one the batch claims; its key comes
from the key registry; the HMAC is checked before anything else is trusted; the events
are inserted in one transaction (with every other batch waiting: group commit); then the
ack goes to ``.../ack`` with the ledger's time.
The broker's PUBACK for the batch is sent only after that (paho ``manual_ack``), so a
worker that dies mid-batch leaves the batch to be redelivered, not lost.

Sessions: with a ``client_id`` the ledger's session outlives its connection (MQTT 3.1.1
``clean_session=0``; as a shared-subscription worker, MQTT 5 ``clean_start=0`` and a
``session_expiry_s``), so the broker queues the batches published while the ledger is
away (a broker restart with persistence, a ledger restart) and hands them over at the
reconnect instead of dropping them and leaving the gateways to their ack timeout. The
subscription is made again on every connect: a broker that lost its state
(``session_present`` false) gets it back, one that kept it loses nothing. Without a
client id the session is clean, as before.

A subscription made on a session the broker had not kept (a broker back without its
persisted state, or a clean session) follows a gap in which batches reached no one:
once the broker has confirmed it, every gateway heard from since this process started
gets a signed ``resend`` nudge on its ``ack`` topic and sends what it has in flight at
once, instead of at its ack timeout (``nudges`` counts them).

Hostile input costs little and stops nothing:

- Before anything is written, every field is checked against what the store can hold
  (``decode_batch(max_int=MAX_INT)``, ``store.unstorable``: seqs, HLCs and send times in a
  signed 64-bit INTEGER, bodies UTF-8 without NUL so they are stored byte for byte) and
  the payload is inflated at most to ``MAX_PAYLOAD`` (``inflate.py``).
- A batch that fails is rejected with a reason (``bad_mac``, ``out_of_range``,
  ``too_large``, ``bad_body``, ...): counted (``rejected``, ``rejected_<reason>``), tallied
  per gateway, reason and minute (``rejections.py``; one insert a second at most, however
  many), and, when its HMAC verified, answered with a signed ``rejected`` ack. A forged
  batch gets no ack: a forger learns nothing and cannot cancel a real batch in flight.
- Every message is released at the broker whatever happens (a message never PUBACKed
  blocks the broker's in-flight window for every gateway). A group whose transaction
  fails is stored again batch by batch, so only the culprit is rejected; a store that is
  down (``store.transient``) leaves its batches unacknowledged to the gateway, which sends
  them again after its ack timeout.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from midshift.firmware.core import topics
from midshift.firmware.core.broker_url import parse_broker_url
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, WireError
from midshift.firmware.core.wire_ledger import encode_ack, encode_resend, peek_count
from midshift.firmware.edges import paho_client
from midshift.firmware.edges.clock import SystemClock
from midshift.host_tools.ledger.rejections import RejectionTally
from midshift.host_tools.ledger.store import MAX_INT, LedgerStore
from midshift.host_tools.ledger.verify import verify_batch

log = logging.getLogger(__name__)
MAX_GROUP = 64  # batches stored in one transaction at most
# Events in one transaction at most (by the batches' own counts): past a few thousand the
# commit's sync is a small share of the work, and a bigger group only holds back its first
# ack. A gateway draining a backlog keeps a window of batches in flight; one group of ten
# 1,000-event batches kept its window shut for the 40 ms they took, then it had to encode
# the next ten while the ledger idled.
MAX_GROUP_EVENTS = 4000


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


def _unsupported_protocol(reason: Any) -> bool:
    """CONNACK of a broker that does not speak the protocol version asked for: return
    code 1 of MQTT 3.1.1 (3.2.2.3), which paho reports as reason code 132 (MQTT 5, 3.2.2.2)."""
    return getattr(reason, "value", None) in (1, 132)


def needs_mqtt5(host: str, port: int, reason: Any) -> str:
    return (f"broker {host}:{port} does not speak MQTT 5 (CONNACK: {reason}): --shared and "
            "--workers N need MQTT 5 shared subscriptions; against this broker run a "
            "single worker (no --shared, --workers 1), or use an MQTT 5 broker "
            "(mosquitto 1.6 or later, EMQX, HiveMQ)")


def check_mqtt5(broker: str, tls_files: tuple[str, str, str] | None = None,
                timeout_s: float = 10.0) -> None:
    """Connect once as MQTT 5 and leave: ValueError (one line, the requirement and the
    alternative) if the broker refuses the protocol version. Other failures are left to
    the workers, which retry them."""
    host, port, _tls = parse_broker_url(broker)
    answered = threading.Event()
    result: list[Any] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   props: Any = None) -> None:
        result.append(reason)
        answered.set()

    probe = paho_client.new_client(protocol=mqtt.MQTTv5)
    if tls_files is not None:
        ctx = ssl.create_default_context(cafile=str(tls_files[0]))
        ctx.load_cert_chain(str(tls_files[1]), str(tls_files[2]))
        probe.tls_set_context(ctx)
    probe.on_connect = on_connect
    try:
        probe.connect_async(host, port, keepalive=10)
        probe.loop_start()
        answered.wait(timeout_s)
    finally:
        probe.disconnect()
        probe.loop_stop()
    if result and result[0].is_failure and _unsupported_protocol(result[0]):
        raise ValueError(needs_mqtt5(host, port, result[0]))


class LedgerService:
    def __init__(self, store: LedgerStore, keys: dict[str, bytes], broker: str,
                 shared_group: str | None = None, client_id: str = "",
                 tls_files: tuple[str | Path, str | Path, str | Path] | None = None,
                 clock: Any = None, session_expiry_s: int = 300) -> None:
        """``tls_files``: (CA, certificate, key) for an ``mqtts://`` broker: the ledger's
        own identity (``provision`` issues it), which the broker's ACL confines to reading
        batches and writing acks and commands. ``clock``: what stamps arrivals and acks
        (``now_ms()``; the host's wall clock unless a simulator steers it).
        ``client_id``: non-empty for a session that survives the connection (module
        docstring); one id per running ledger or worker, or they knock each other off.
        ``session_expiry_s``: how long a shared-subscription worker's session (and the
        batches queued in it) outlives the worker; a single worker's MQTT 3.1.1 session
        lasts until the broker's ``persistent_client_expiration``."""
        self.store = store
        self.clock = clock or SystemClock()
        self.signers = {gw: Signer(k) for gw, k in keys.items()}
        self.host, self.port, tls = parse_broker_url(broker)
        if tls != (tls_files is not None):
            raise ValueError(f"broker {broker}: " + ("mqtts:// needs the ledger's CA, "
                             "certificate and key" if tls else "certificate files given for "
                             "a plain mqtt:// broker; use mqtts://"))
        self.shared_group = shared_group
        self.broker = broker
        self.tls_files = tls_files
        self.counters = {"batches": 0, "events": 0, "duplicates": 0, "rejected": 0,
                         "store_unavailable": 0, "nudges": 0}
        self._ack_topics: dict[str, str] = {}  # gateway -> its ack topic, as heard
        self.events_by_gateway: dict[str, int] = {}  # new events stored, per gateway
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._writer, name="ledger-writer", daemon=True)
        protocol = mqtt.MQTTv5 if shared_group else mqtt.MQTTv311
        self.client = paho_client.new_client(
            client_id=client_id, protocol=protocol, manual_ack=True,
            **({} if shared_group else {"clean_session": not client_id}))
        if tls_files is not None:
            ca, cert, key = (str(f) for f in tls_files)
            ctx = ssl.create_default_context(cafile=ca)
            ctx.load_cert_chain(cert, key)
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._refused: Any = None  # the broker's CONNACK reason when it refused MQTT 5
        self._nudge_due = False  # a SUBACK on a session the broker had not kept is due
        self.persistent = bool(client_id)
        self.session_expiry_s = session_expiry_s
        self.session_present: bool | None = None  # from the last CONNACK
        # Called (no arguments, on the writer thread) after a group committed new events:
        # the outbox's workers (``erp_delivery``, ``ledger_feed``) look at once instead of
        # at their next poll. Each must return at once (they set an event).
        self.after_commit: list[Any] = []

    @property
    def topic(self) -> str:
        t = topics.every(topics.EVENTS)
        return f"$share/{self.shared_group}/{t}" if self.shared_group else t

    def start(self, timeout_s: float = 10.0) -> LedgerService:
        deadline = time.monotonic() + timeout_s
        if self.shared_group and self.persistent:
            # A 3.1.1-only broker cannot parse a CONNECT with properties and just hangs
            # up; a bare MQTT 5 CONNECT first gets its refusal in words (ValueError).
            tls = None if self.tls_files is None else tuple(str(f) for f in self.tls_files)
            check_mqtt5(self.broker, tls, timeout_s)  # type: ignore[arg-type]
        self._thread.start()
        # A handful of workers, not a fleet: back within half a second of the broker, or
        # every batch the gateways send meanwhile waits for their ack timeout.
        self.client.reconnect_delay_set(0.1, 0.5)
        if self.shared_group:
            # MQTT 5: clean_start=False on every connect, the first too, so a restarted
            # worker takes over its session; paho's default starts clean the first time.
            props = None
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry_s
            self.client.connect_async(self.host, self.port, keepalive=10,
                                      clean_start=not self.persistent, properties=props)
        else:
            self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        while not self._subscribed.wait(0.05) and self._refused is None:
            if time.monotonic() > deadline:
                self.client.loop_stop()
                raise RuntimeError(f"no subscription at {self.host}:{self.port} "
                                   f"within {timeout_s} s")
        if self._refused is not None:  # retrying would be refused the same way, forever
            self.client.disconnect()
            self.client.loop_stop()
            raise ValueError(needs_mqtt5(self.host, self.port, self._refused))
        return self

    def stop(self, timeout_s: float = 8.0) -> bool:
        """Disconnect from the broker and end the network loop and the writer, waiting
        ``timeout_s`` at most. True when both ended (the writer finished its group and
        flushed the rejection tally); False when one is still running, stuck in a store
        call that does not return or on the broker's socket: the caller must then not
        close the store under it (``stop_signals.StopSignals.give_up``)."""
        deadline = time.monotonic() + timeout_s
        self.client.disconnect()
        # paho's loop_stop() joins its thread with no bound: it waits in a thread of its own.
        network = threading.Thread(target=self.client.loop_stop, name="ledger-mqtt-stop",
                                   daemon=True)
        network.start()
        self._closing.set()
        for thread in (network, self._thread):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in (network, self._thread) if t.is_alive()]
        if stuck:
            log.error("ledger: %s still running %g s after the stop", " and ".join(stuck),
                      timeout_s)
        return not stuck

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any = None) -> None:
        if reason.is_failure:
            if self.shared_group and _unsupported_protocol(reason):
                self._refused = reason
                client.disconnect()
                return
            log.error("ledger: broker refused the connection: %s", reason)
            return
        # Always: a broker restarted without its state (session_present false) has
        # forgotten the subscription, and subscribing again to a kept one loses nothing.
        self.session_present = bool(getattr(flags, "session_present", False))
        self._nudge_due = not self.session_present
        client.subscribe(self.topic, qos=1)
        log.info("ledger: subscribed to %s on %s:%d (%s)", self.topic, self.host, self.port,
                 "session resumed" if self.session_present else
                 "new session" if self.persistent else "clean session")

    def _on_subscribe(self, client: mqtt.Client, *args: Any) -> None:
        if self._nudge_due:  # the subscription is in place: what comes now reaches us
            self._nudge_due = False
            with self._lock:
                known = sorted(self._ack_topics.items())
            for gateway, topic in known:
                client.publish(topic, encode_resend(self.signers[gateway],
                                                    self.clock.now_ms()), qos=1)
            with self._lock:
                self.counters["nudges"] += len(known)
            if known:
                log.warning("ledger: subscribed on a new session; %d gateway(s) asked to "
                            "resend what they have in flight", len(known))
        self._subscribed.set()

    def snapshot(self) -> dict[str, Any]:
        """Counters, per-gateway events and the broker link, read together (metrics)."""
        with self._lock:
            return {"counters": dict(self.counters), "events_by_gateway":
                    dict(self.events_by_gateway), "connected": self.client.is_connected(),
                    "queued": self._inbox.qsize()}

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(msg)  # the writer thread stores, acks and PUBACKs

    def _writer(self) -> None:
        """Group commit: every batch waiting is verified and stored in one transaction,
        then each is acknowledged, so the ledger's fsync rate does not cap its rate."""
        while not self._closing.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue.Empty:
                self._flush_rejections()
                continue
            msgs = [first]
            events = peek_count(first.payload)
            while len(msgs) < MAX_GROUP and events < MAX_GROUP_EVENTS:
                try:
                    msgs.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
                events += peek_count(msgs[-1].payload)
            try:
                self._process([(m.topic, m.payload) for m in msgs])
            except Exception:  # noqa: BLE001 - a bad group must not stop the worker
                log.exception("ledger: a group of %d batches failed; released unacknowledged "
                              "(their gateways send them again)", len(msgs))
            finally:
                for m in msgs:  # every message leaves the broker's in-flight window
                    self._release(m)
            self._flush_rejections()
        self._flush_rejections(force=True)

    def _release(self, msg: mqtt.MQTTMessage) -> None:
        try:
            self.client.ack(msg.mid, msg.qos)
        except Exception:  # noqa: BLE001 - one lost PUBACK must not skip the others
            log.exception("ledger: PUBACK for message %d failed", msg.mid)

    def handle(self, topic: str, payload: bytes) -> bytes | None:
        """Verify, store and acknowledge one batch; returns the ack sent (None if none)."""
        ack = self._process([(topic, payload)])[0]
        self._flush_rejections(force=True)
        return ack

    def _process(self, items: list[tuple[str, bytes]]) -> list[bytes | None]:
        now = self.clock.now_ms()
        verified = []
        acks: list[bytes | None] = [None] * len(items)
        for i, (topic, payload) in enumerate(items):
            try:
                batch, acks[i] = self._verify(topic, payload, now)
            except Exception as exc:  # noqa: BLE001 - a bug on one batch spares the rest
                log.exception("ledger: verifying a batch on %s failed", topic)
                batch = None
                self._reject(None, "internal", f"{type(exc).__name__}: {exc}", now)
            if batch is not None:
                verified.append((i, topic, batch))
        stored = self._store(verified, now)
        if self.after_commit and any(isinstance(r, tuple) and r[0] for _, r in stored):
            for wake in self.after_commit:
                wake()
        for (i, topic, batch), result in stored:
            if result is None:
                continue  # the store is down: no ack, the gateway sends it again
            if isinstance(result, str):
                acks[i] = self._reject(batch.gateway, "unstorable", result, now,
                                       (topic, batch.epoch, batch.first_seq, batch.last_seq))
                continue
            new, dup = result
            reply = topics.reply_to(topic)
            with self._lock:
                self._ack_topics[batch.gateway] = reply  # type: ignore[assignment]
                self.counters["batches"] += 1
                self.counters["events"] += new
                self.counters["duplicates"] += dup
                self.events_by_gateway[batch.gateway] = \
                    self.events_by_gateway.get(batch.gateway, 0) + new
            ack = encode_ack(self.signers[batch.gateway], batch.epoch, batch.first_seq,
                             batch.last_seq, now, duplicates=dup)
            self.client.publish(reply, ack, qos=1)  # type: ignore[arg-type]
            acks[i] = ack
        return acks

    def _store(self, verified: list[tuple[int, str, Batch]],
               now: int) -> list[tuple[tuple[int, str, Batch], Any]]:
        """Each verified item with (new, duplicates), or a str saying why the store refused
        that batch, or None when the store is unavailable. The group goes in one
        transaction; if that fails, batch by batch, so only the culprit is refused."""
        if not verified:
            return []
        try:
            results = self.store.store_many([b for _, _, b in verified], now)
            return list(zip(verified, results, strict=True))
        except Exception as exc:  # noqa: BLE001 - sorted out batch by batch below
            if len(verified) > 1:
                log.warning("ledger: a group of %d batches failed (%s: %s); storing them one "
                            "by one", len(verified), type(exc).__name__, exc)
            else:
                return [(verified[0], self._store_failed(verified[0][2], exc))]
        out: list[tuple[tuple[int, str, Batch], Any]] = []
        down = False
        for item in verified:
            if down:
                out.append((item, None))
                continue
            try:
                out.append((item, self.store.store_many([item[2]], now)[0]))
            except Exception as exc:  # noqa: BLE001 - this batch, or the store, is bad
                result = self._store_failed(item[2], exc)
                down = result is None
                out.append((item, result))
        return out

    def _store_failed(self, batch: Batch, exc: Exception) -> str | None:
        if self.store.transient(exc):
            with self._lock:
                self.counters["store_unavailable"] += 1
            log.error("ledger: the store is unavailable (%s: %s); batch %s %d..%d left "
                      "unacknowledged", type(exc).__name__, exc, batch.gateway,
                      batch.first_seq, batch.last_seq)
            return None
        log.exception("ledger: the store refused batch %s %d..%d", batch.gateway,
                      batch.first_seq, batch.last_seq)
        return f"{type(exc).__name__}: {exc}"

    def _verify(self, topic: str, payload: bytes, now: int) -> tuple[Batch | None, bytes | None]:
        """The verified, storable batch, or (None, the rejected ack sent if any)."""
        try:
            return verify_batch(topic, payload, self.signers, MAX_INT), None
        except WireError as exc:
            if exc.reason == "bad_topic":
                self._reject(None, "bad_topic", str(exc), now)
                return None, None
            # Answered only when the HMAC verified: a forger learns nothing, and a forged
            # batch cannot cancel a real one in flight with the same range.
            gw_topic = topics.split(topic)[1]  # type: ignore[index]  # not bad_topic
            answer = (topic, *exc.signed) if exc.signed else None
            return None, self._reject(gw_topic, exc.reason, str(exc), now, answer)

    _tally: RejectionTally | None = None

    def _rejections(self) -> RejectionTally:
        """The tally (made on first use, under ``_lock``)."""
        if self._tally is None:
            self._tally = RejectionTally()
        return self._tally

    def _reject(self, gateway: str | None, reason: str, detail: str, now: int,
                answer: tuple[str, int, int, int] | None = None) -> bytes | None:
        """Count and tally a rejection; with ``answer`` (topic, epoch, first, last) of a
        batch whose HMAC verified, send its gateway the signed ``rejected`` ack."""
        known = gateway if gateway in self.signers else ""
        with self._lock:
            self.counters["rejected"] += 1
            self.counters[f"rejected_{reason}"] = self.counters.get(f"rejected_{reason}", 0) + 1
            first = self._rejections().add(known, reason, detail, now)
        # One line per gateway, reason and minute; the rest are counted (a flood of forged
        # batches must not become a flood of log lines).
        log.log(logging.WARNING if first else logging.DEBUG,
                "ledger: rejected a batch (%s): %s", reason, detail)
        if answer is None or gateway not in self.signers:
            return None
        topic, epoch, first_seq, last_seq = answer
        ack = encode_ack(self.signers[gateway], epoch, first_seq, last_seq, now,
                         status="rejected", reason=reason)
        self.client.publish(topics.reply_to(topic), ack, qos=1)
        return ack

    def _flush_rejections(self, force: bool = False) -> None:
        """The tally into the store: one transaction, at most once a second."""
        with self._lock:
            tally = self._rejections()
            if not (tally.rows and (force or tally.due())):
                return
            rows = tally.take()
        try:
            self.store.record_rejections(rows, self.clock.now_ms())
        except Exception:  # noqa: BLE001 - counts wait for the next flush, ingest goes on
            log.exception("ledger: recording %d rejection rows failed; kept for later",
                          len(rows))
            with self._lock:
                self._rejections().put_back(rows)
