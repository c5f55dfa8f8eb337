"""The gateways at a glance: a table built from their retained status messages.

Each agent publishes ``midshift/v1/<site>/<gw>/status`` (retained, JSON: uplink, backlog,
in-flight batches, device errors, clock offset, alarms) every status period through its
active uplink; its last will, published by the broker when the gateway vanishes without
a goodbye, says ``"state": "offline"``. ``StatusBoard`` keeps the latest per gateway with
the time it arrived; ``render`` turns that into rows.

A gateway whose last message is older than ``stale_s`` is shown ``stale``: its link may be
down in a way the broker has not noticed yet, or it has no uplink at all (the status only
travels over an uplink, so a gateway in a total outage goes quiet rather than saying so).
A retained message can be old news: SEEN counts from the status's own ``ts_ms`` (this
host's clock against the gateway's), so a retained ``online`` from a gateway that died an
hour ago reads an hour old; a status without ``ts_ms`` (older firmware) counts from when
this tool received it and is marked ``(retained)`` until a fresh one comes.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from midshift.firmware.core.broker_url import parse_broker_url
from midshift.firmware.edges import paho_client
from midshift.host_tools.status_judge import status_age_s

COLUMNS = ("GATEWAY", "SITE", "STATE", "UPLINK", "BACKLOG", "IN-FLIGHT", "DEV-ERR",
           "OFFSET-MS", "ALARMS", "SEEN")


class StatusBoard:
    """Latest status per (site, gateway), fed by ``update`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], tuple[float, bool, dict[str, Any]]] = {}
        self.bad_messages = 0
        self.changed = threading.Event()

    def update(self, topic: str, payload: bytes, retained: bool, now: float) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] != "status":
            return
        try:
            doc = json.loads(payload.decode())
            if not isinstance(doc, dict):
                raise ValueError
        except (ValueError, UnicodeError):
            doc = {"state": "unreadable"}
            self.bad_messages += 1
        with self._lock:
            if payload:  # an empty retained message clears the topic: forget the gateway
                self._latest[(parts[2], parts[3])] = (now, retained, doc)
            else:
                self._latest.pop((parts[2], parts[3]), None)
        self.changed.set()

    def get(self, gateway: str) -> dict[str, Any] | None:
        with self._lock:
            for (_, gw), (_, _, doc) in self._latest.items():
                if gw == gateway:
                    return doc
        return None

    def entries(self) -> list[tuple[str, str, float, bool, dict[str, Any]]]:
        """(site, gateway, received at (monotonic), retained, doc) for each, sorted."""
        with self._lock:
            return [(site, gw, seen, retained, doc)
                    for (site, gw), (seen, retained, doc) in sorted(self._latest.items())]

    def rows(self, now: float, stale_s: float = 30.0,
             wall_ms: int | None = None) -> list[list[str]]:
        wall = int(time.time() * 1000) if wall_ms is None else wall_ms
        return [_row(site, gw, seen, retained, doc, now, stale_s, wall)
                for site, gw, seen, retained, doc in self.entries()]


def _row(site: str, gw: str, seen: float, retained: bool, doc: dict[str, Any], now: float,
         stale_s: float, wall_ms: int) -> list[str]:
    fwd = doc.get("forwarding") or {}
    state = str(doc.get("state", "?"))
    age_s = status_age_s(doc, wall_ms, now - seen, False)
    if state == "online" and age_s is not None and age_s > stale_s:
        state = "stale"
    if doc.get("journal_refusing_txn"):
        state += " FULL"  # the journal refuses transactions: the red LED is on
    offset = fwd.get("clock_offset_ms")
    alarms = list(doc.get("alarms") or fwd.get("alarms") or [])
    stamped = "ts_ms" in doc
    age = f"{age_s:.0f}s ago" + (" (retained)" if retained and not stamped else "")
    if state == "offline":
        return [gw, site, state, "-", "-", "-", "-", "-", "-", age]
    return [gw, site, state, str(doc.get("uplink", "-")),
            str(doc.get("backlog_records", "-")), str(fwd.get("in_flight", "-")),
            str(doc.get("devices_in_error", "-")), "-" if offset is None else str(offset),
            ",".join(alarms) or "-", age]


def render(rows: list[list[str]], header: str = "") -> str:
    table = [list(COLUMNS)] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = [header] if header else []
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in table]
    if not rows:
        lines.append("(no gateway has published a status yet)")
    return "\n".join(lines)


class StatusSubscriber:
    """A paho client feeding a board; reconnects by itself after a broker restart."""

    def __init__(self, board: StatusBoard, url: str, topic: str, ca: str | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        self.board = board
        self.host, self.port, tls = parse_broker_url(url)
        self.topic = topic
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client = paho_client.new_client(protocol=mqtt.MQTTv311)
        if tls:
            ctx = ssl.create_default_context(cafile=ca)
            if cert:
                ctx.load_cert_chain(cert, key)
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: board.update(m.topic, m.payload, m.retain,
                                                              time.monotonic())
        self.client.reconnect_delay_set(0.2, 2)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any = None) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def start(self) -> StatusSubscriber:
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
