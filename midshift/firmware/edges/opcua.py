"""Device type ``opcua``: an OPC UA server whose data-change notifications become events.

Events of kind ``opcua``. Exports ``TYPE``, ``DEFAULT_CLASS`` and ``DRIVER``, as every
``midshift/firmware/edges/<type>.py``.

The driver's thread runs its own asyncio loop with one asyncua ``Client``. After the
session is up it creates one subscription (``publishing_ms``) with one monitored item per
configured node (``queue_size`` values queued per node between publishes, ``sampling_ms``
asked of the server, 0 = as fast as it can) and consumes the notifications in order.
Nothing is polled: a value that does not change produces no notification and no event.

Event: kind ``opcua``, data ``{"tag", "node", "value", "status"}``; ``read_ms`` is the
DataValue's SourceTimestamp (the time the device produced the value), else its
ServerTimestamp, else (``no_timestamp``) the wall time the notification arrived.
``status`` is ``Good`` or the name of an Uncertain code (``uncertain_status``): the value is
usable but doubtful, and the ledger should see that.

States and counters:

- ``ok`` once subscribed and while no node is Bad.
- ``error`` while a node's last notification has a Bad status (``bad_status``; the last
  error names the tag, node and status, e.g. ``BadSensorFailure``): no event, the value
  is not a reading. The next Good value of that node is emitted and, when no node is Bad,
  the state is ``ok`` again. A node the server refuses to monitor (``BadNodeIdUnknown``
  for a typo) is ``error`` too (``bad_nodes``) until the next session.
- ``stale`` when the subscription has sent nothing, not even a keepalive, for
  ``stale_s``: the keepalive is asked for every ``stale_s / 3``, so a quiet subscription
  (values that do not change) is not stale, a dead one is.
- ``disconnected`` when the endpoint cannot be reached (``connect_failures``) or the
  connection is lost (``connection_lost``): found by asyncua's supervisor, which reads
  the server state every ``timeout_s`` and sees a closed socket at once. The client is
  discarded and a new one connects and subscribes again after a backoff (0.2 s doubling
  to 5 s, woken by stop); ``reconnects`` counts the sessions after the first.

No value is emitted twice: a resubscription (after a reconnect, or asyncua recreating a
stale subscription) delivers each node's current value again, which is dropped
(``repeated_values``) if its SourceTimestamp and value are those of the last event of
that node. Values the server produced while the driver was disconnected are lost
except the latest (a subscription has no history); the ground truth shows the gap.
A value that is not JSON (NaN, infinity, a structure) is rejected (``rejected_values``).
An event the pipeline refuses is counted by ``Driver.emit`` and lost.

Security: ``security_policy`` (``None``, ``Basic256Sha256``, ``Aes128Sha256RsaOaep``,
``Aes256Sha256RsaPss``), ``security_mode`` (``Sign``, ``SignAndEncrypt``), ``certificate``
and ``private_key`` (the client's, PEM or DER), ``server_certificate`` (optional; without
it the server's certificate is taken from its endpoint list) are passed to asyncua's
``Client.set_security``. The client certificate's application URI must match asyncua's
client application URI (``urn:example.org:FreeOpcUa:opcua-asyncio``).

Sharp edges: ``emit`` runs in the driver's loop, so a pipeline that blocks longer than
``timeout_s`` delays the keepalive probe and may be read as a lost connection. Not
modelled: user name or certificate identities (anonymous only), events and alarms,
history reads to fill a gap, ``nsu=`` node ids (use ``ns=INDEX``), writes and method calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent
from asyncua.crypto import security_policies

from midshift.firmware.core.config_fields import field, no_unknown_keys, positive
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.event import Event
from midshift.firmware.edges.driver import Clock, Driver, Emit

log = logging.getLogger(__name__)

T = TypeVar("T")

OPCUA_KEYS = ("endpoint", "nodes", "publishing_ms", "sampling_ms", "queue_size", "timeout_s",
              "stale_s", "security_policy", "security_mode", "certificate", "private_key",
              "server_certificate")
NODE_KEYS = ("tag", "node_id")
POLICIES = {
    "None": None,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {"Sign": ua.MessageSecurityMode.Sign,
         "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
SECURITY_FILES = ("certificate", "private_key", "server_certificate")
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
SLICE_S = 0.1  # longest the loop waits for a notification: bounds how late stop or loss is seen
BATCH_MAX = 1000        # data changes journaled together at the most
BATCH_WAIT_S = 0.0005   # a publish's changes are queued at once: wait no longer for more
EVENT_QUEUE_MAX = 100_000  # notifications waiting for emit; past it asyncua forces a reconnect
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JSON_SCALARS = (bool, int, str)


class SessionLost(Exception):
    """The session or its subscription is gone; connect again."""


def timestamp_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch, exact (no float rounding)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # OPC UA DateTime is UTC
    return (ts - EPOCH) // timedelta(milliseconds=1)


def json_value(value: Any) -> tuple[bool, Any]:
    """(True, a JSON-ready value) or (False, None) for what an event body cannot carry."""
    if value is None or isinstance(value, JSON_SCALARS):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, datetime):
        return True, value.isoformat()
    if isinstance(value, bytes | bytearray):
        return True, bytes(value).hex()
    if isinstance(value, list):
        out = []
        for item in value:
            ok, item = json_value(item)
            if not ok:
                return False, None
            out.append(item)
        return True, out
    return False, None


def _file_field(table: dict[str, Any], key: str, path: str) -> str | None:
    value = field(table, key, path, str, default=None, allowed="a path to a PEM or DER file")
    if value is not None and not os.path.isfile(value):
        raise ConfigError(f"{path}.{key}", f"{value!r} is not a readable file",
                          "a path to a PEM or DER file")
    return value


def _nodes_field(table: dict[str, Any], path: str) -> list[dict[str, str]]:
    nodes = field(table, "nodes", path, list, allowed="a list of {tag, node_id} tables")
    if not nodes:
        raise ConfigError(path + ".nodes", "is empty", "one or more {tag, node_id} tables")
    out: list[dict[str, str]] = []
    tags: set[str] = set()
    ids: set[str] = set()
    for i, item in enumerate(nodes):
        where = f"{path}.nodes[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, f"{item!r} is not a table", "{tag, node_id}")
        no_unknown_keys(item, where, NODE_KEYS)
        tag = field(item, "tag", where, str, check=lambda v: bool(v.strip()),
                    allowed="a non-empty name")
        text = field(item, "node_id", where, str,
                     allowed="an OPC UA node id: ns=2;s=line1.counter, ns=3;i=1001")
        try:
            node_id = ua.NodeId.from_string(text)
        except Exception:  # noqa: BLE001 - asyncua raises several types for a bad string
            raise ConfigError(where + ".node_id", f"{text!r} is not a node id",
                              "ns=INDEX;s=NAME, ns=INDEX;i=NUMBER, ns=INDEX;g=GUID, "
                              "ns=INDEX;b=BASE64") from None
        if isinstance(node_id, ua.ExpandedNodeId) and (node_id.NamespaceUri or node_id.ServerIndex):
            raise ConfigError(where + ".node_id", f"{text!r} names a namespace URI or server",
                              "ns=INDEX;... (nsu= and srv= are not supported)")
        normal = node_id.to_string()
        if tag in tags:
            raise ConfigError(where + ".tag", f"{tag!r} is used twice", "a unique tag per node")
        if normal in ids:
            raise ConfigError(where + ".node_id", f"{text!r} is listed twice", "each node once")
        tags.add(tag)
        ids.add(normal)
        out.append({"tag": tag, "node_id": normal})
    return out


class OpcUaDriver(Driver):
    kind = "opcua"

    def __init__(self, name: str, cfg: dict[str, Any], emit: Emit, clock: Clock) -> None:
        super().__init__(name, cfg, emit, clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tags = {n["node_id"]: n["tag"] for n in cfg["nodes"]}
        self._last: dict[str, tuple[int, Any]] = {}  # node -> (read_ms, value) of its last event
        self._bad: dict[str, str] = {}  # node -> why it is in error
        self._sessions = 0

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        """The ``[devices.NAME]`` table of an OPC UA device, normalized; ``ConfigError`` if wrong."""
        no_unknown_keys(table, path, OPCUA_KEYS)
        endpoint = field(table, "endpoint", path, str, allowed="opc.tcp://HOST:PORT[/PATH]")
        host, _, port = endpoint.removeprefix("opc.tcp://").partition("/")[0].rpartition(":")
        if not endpoint.startswith("opc.tcp://") or not host or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise ConfigError(path + ".endpoint", f"{endpoint!r} is not an OPC UA endpoint",
                              "opc.tcp://HOST:PORT[/PATH]")
        cfg: dict[str, Any] = {
            "endpoint": endpoint,
            "nodes": _nodes_field(table, path),
            "publishing_ms": field(table, "publishing_ms", path, int, default=100,
                                   check=lambda v: 10 <= v <= 600_000, allowed="10 to 600000 ms"),
            "sampling_ms": field(table, "sampling_ms", path, int, default=0,
                                 check=lambda v: 0 <= v <= 600_000,
                                 allowed="0 (as fast as the server can) to 600000 ms"),
            "queue_size": field(table, "queue_size", path, int, default=100,
                                check=lambda v: 1 <= v <= 10_000, allowed="1 to 10000"),
            "timeout_s": field(table, "timeout_s", path, float, default=2.0,
                               check=lambda v: 0 < v <= 300, allowed="above 0, up to 300 s"),
            "stale_s": field(table, "stale_s", path, float, default=10.0, check=positive,
                             allowed="a number of seconds above 0"),
            "security_policy": field(table, "security_policy", path, str, default="None",
                                     choices=POLICIES),
        }
        if cfg["stale_s"] * 1000 < 3 * cfg["publishing_ms"]:
            raise ConfigError(path + ".stale_s", f"{cfg['stale_s']!r} is shorter than three "
                              f"publishing intervals ({cfg['publishing_ms']} ms)",
                              "at least 3 * publishing_ms / 1000 seconds")
        if cfg["security_policy"] == "None":
            for key in ("security_mode", *SECURITY_FILES):
                if key in table:
                    raise ConfigError(f"{path}.{key}", "is set but security_policy is None",
                                      "only with a security_policy other than None")
            cfg.update(security_mode=None, certificate=None, private_key=None,
                       server_certificate=None)
            return cfg
        cfg["security_mode"] = field(table, "security_mode", path, str, default="SignAndEncrypt",
                                     choices=MODES)
        for key in SECURITY_FILES:
            cfg[key] = _file_field(table, key, path)
        for key in ("certificate", "private_key"):
            if cfg[key] is None:
                raise ConfigError(f"{path}.{key}", "is required with security_policy "
                                  f"{cfg['security_policy']}", "a path to a PEM or DER file")
        return cfg

    # -- loop ----------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._serve())

    def _interrupt(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until stop."""
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _unless_stopped(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """``coro``'s result; SessionLost if stop comes first, TimeoutError after ``timeout_s``."""
        assert self._wake is not None
        task = asyncio.ensure_future(coro)
        waker = asyncio.ensure_future(self._wake.wait())
        done, _ = await asyncio.wait({task, waker}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        waker.cancel()
        if task in done:
            return task.result()
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - cancelled, or failed while being cancelled
            pass
        if self._stopping.is_set():
            raise SessionLost("stopping")
        raise TimeoutError(f"no answer within {timeout_s:g} s")

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        endpoint = self.cfg["endpoint"]
        backoff_s = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            client = Client(endpoint, timeout=self.cfg["timeout_s"],
                            watchdog_intervall=self.cfg["timeout_s"])
            try:
                await self._unless_stopped(self._connect(client), 3 * self.cfg["timeout_s"])
            except Exception as exc:  # noqa: BLE001 - refused, timed out, security: all one state
                self._drop_socket(client)
                if self._stopping.is_set():
                    return
                self.status.count("connect_failures")
                self.set_state("disconnected", f"cannot connect to {endpoint}: {_text(exc)}")
            else:
                self._sessions += 1
                if self._sessions > 1:
                    self.status.count("reconnects")
                log.info("%s: connected to %s", self.name, endpoint)
                try:
                    if await self._session(client):
                        backoff_s = BACKOFF_FIRST_S  # it worked for a while: retry soon
                except Exception as exc:  # noqa: BLE001 - whatever broke, connect again
                    if not self._stopping.is_set():
                        if not isinstance(exc, SessionLost | ConnectionError | OSError
                                          | TimeoutError | ua.UaError):
                            # A surprise: its traceback once per state change, not per retry.
                            log.log(logging.ERROR if self.status.state == "ok"
                                    else logging.DEBUG, "%s: session failed", self.name,
                                    exc_info=True)
                        self.status.count("connection_lost")
                        self.set_state("disconnected", f"connection to {endpoint} lost: {_text(exc)}")
                finally:
                    await self._close(client)
            if not self._stopping.is_set():
                await self._sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _connect(self, client: Client) -> None:
        policy = POLICIES[self.cfg["security_policy"]]
        if policy is not None:
            await client.set_security(policy, self.cfg["certificate"], self.cfg["private_key"],
                                      server_certificate=self.cfg["server_certificate"],
                                      mode=MODES[self.cfg["security_mode"]])
        await client.connect()

    async def _close(self, client: Client) -> None:
        """Close the session and socket; a dead server must not hold the loop up."""
        try:
            await asyncio.wait_for(client.disconnect(), self.cfg["timeout_s"])
        except Exception:  # noqa: BLE001 - the connection may be long gone
            log.debug("%s: disconnect failed", self.name, exc_info=True)
        self._drop_socket(client)

    @staticmethod
    def _drop_socket(client: Client) -> None:
        # asyncua skips closing the socket once its supervisor has marked the client
        # disconnected (a blackholed server), and a connect cut short leaves it open:
        # close it here rather than leave it to the garbage collector.
        protocol = getattr(client.uaclient, "protocol", None)
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.close()

    async def _session(self, client: Client) -> bool:
        """Subscribe and turn notifications into events until stop (False) or loss (raises).

        Returns True if the session ran long enough to reset the reconnect backoff."""
        publishing_ms = self.cfg["publishing_ms"]
        keepalive = max(1, round(self.cfg["stale_s"] * 1000 / 3 / publishing_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms,
            RequestedLifetimeCount=min(keepalive * 10, 2**32 - 1),
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=0,
            PublishingEnabled=True, Priority=0)
        setup_s = 2 * self.cfg["timeout_s"]
        sub = await self._unless_stopped(client.create_subscription(
            params, queue_maxsize=EVENT_QUEUE_MAX, overflow=OverflowPolicy.DISCONNECT), setup_s)
        nodes = [client.get_node(n["node_id"]) for n in self.cfg["nodes"]]
        results = await self._unless_stopped(sub.subscribe_data_change(
            nodes, queuesize=self.cfg["queue_size"],
            sampling_interval=float(self.cfg["sampling_ms"])), setup_s)
        self._bad.clear()
        for spec, result in zip(self.cfg["nodes"], results, strict=True):
            if isinstance(result, ua.StatusCode):
                self.status.count("bad_nodes")
                self._bad[spec["node_id"]] = f"{spec['tag']} ({spec['node_id']}): cannot " \
                                             f"monitor: {result.name}"
        self._update_state()
        started = self.clock.monotonic_ms()
        ev = None  # an event taken from the queue and not handled yet
        while not self._stopping.is_set():
            if client.uaclient.state is not UaClientState.CONNECTED:
                raise SessionLost(f"client {client.uaclient.state.value}")
            if ev is None:
                ev = await sub.next_event(timeout=SLICE_S)
            if isinstance(ev, DataChangeEvent):
                # One publish's data changes are queued together: take them all and
                # journal them at once (one sync for all, not one each).
                events = []
                while isinstance(ev, DataChangeEvent) and len(events) < BATCH_MAX:
                    event = self._on_value(ev)
                    if event is not None:
                        events.append(event)
                    ev = await sub.next_event(timeout=BATCH_WAIT_S)
                self.emit_many(events)
                continue
            if isinstance(ev, StatusChangeEvent):
                status = ev.notification.Status
                if not status.is_good():
                    raise SessionLost(f"subscription status {status.name}")
            ev = None
            self._check_stale(sub.last_publish_at)
        return self.clock.monotonic_ms() - started > 10_000

    def _check_stale(self, last_publish_at: float | None) -> None:
        if last_publish_at is None:
            return
        quiet_s = time.monotonic() - last_publish_at  # asyncua stamps it with time.monotonic()
        if quiet_s >= self.cfg["stale_s"]:
            self.set_state("stale", f"no publish response or keepalive for {quiet_s:.1f} s")
        elif self.status.state == "stale":
            self._update_state()

    def _update_state(self) -> None:
        if self._bad:
            self.set_state("error", "; ".join(self._bad.values()))
        else:
            self.set_state("ok")

    def _on_value(self, ev: DataChangeEvent) -> Event | None:
        """The event a notification makes, or None (counted) if it makes none."""
        node = ev.node.nodeid.to_string()
        tag = self._tags.get(node)
        dv = ev.data.monitored_item.Value
        if tag is None or dv is None:
            self.status.count("unknown_notifications")
            return None
        status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode()
        if status.is_bad():
            self.status.count("bad_status")
            self._bad[node] = f"{tag} ({node}): {status.name}"
            self._update_state()
            return None
        ts = dv.SourceTimestamp or dv.ServerTimestamp
        if ts is not None:
            read_ms = timestamp_ms(ts)
        else:
            self.status.count("no_timestamp")
            read_ms = self.clock.now_ms()
        ok, value = json_value(dv.Value.Value if dv.Value is not None else None)
        if not ok:
            self.status.count("rejected_values")
            log.warning("%s: %s (%s): value %r cannot be carried in an event", self.name, tag,
                        node, dv.Value)
            return None
        if self._bad.pop(node, None) is not None or self.status.state != "ok":
            self._update_state()
        key = (read_ms, value)
        if self._last.get(node) == key:
            self.status.count("repeated_values")
            return None
        self._last[node] = key
        if status.is_uncertain():
            self.status.count("uncertain_status")
        return Event(source=self.name, kind="opcua", read_ms=read_ms,
                     data={"tag": tag, "node": node, "value": value,
                           "status": "Good" if status.is_good() else status.name})


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


TYPE = "opcua"
DEFAULT_CLASS = "telemetry"  # values a PLC reports again: state, not transactions
DRIVER = OpcUaDriver
