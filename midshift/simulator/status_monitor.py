"""Watches the gateways' retained status messages (``midshift/v1/+/+/status``) on the
broker, as plant IT's dashboard would, and keeps each one with the time it arrived.

From them a scenario learns the active uplink and backlog over time, failovers (the
agents' own counters, summed over every life of the process), alarms and device errors.
The status comes through the agent's active uplink, so during a total outage there is
none: the gaps in the series are part of what the report shows. After a broker restart
paho reconnects and subscribes again by itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from midshift.firmware.core import topics
from midshift.firmware.edges import paho_client

TOPIC = topics.every(topics.STATUS)


class StatusMonitor:
    def __init__(self, host: str, port: int) -> None:
        self.samples: list[tuple[int, str, dict[str, Any]]] = []  # (ms, gateway, doc)
        self._lock = threading.Lock()
        self.client = paho_client.new_client(client_id="", protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: c.subscribe(TOPIC, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.host, self.port = host, port

    def start(self) -> StatusMonitor:
        self.client.connect_async(self.host, self.port, keepalive=5)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        gw = msg.topic.split("/")[3]
        with self._lock:
            self.samples.append((int(time.time() * 1000), gw, doc))

    def latest(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for _, gw, doc in self.samples:
                out[gw] = doc
            return out

    def snapshot(self) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            return list(self.samples)


def over_lives(samples: list[tuple[int, str, dict[str, Any]]],
               read: Callable[[dict[str, Any]], Any]) -> dict[str, int]:
    """Per gateway, a counter of the agent's summed over every life of the process (the
    counter restarts from 0 with a new process: a value that falls starts a new life)."""
    total: dict[str, int] = {}
    last: dict[str, int] = {}
    for _, gw, doc in samples:
        n = read(doc)
        if not isinstance(n, int):
            continue
        prev = last.get(gw, 0)
        total[gw] = total.get(gw, 0) + (n - prev if n >= prev else n)
        last[gw] = n
    return total


def failovers(samples: list[tuple[int, str, dict[str, Any]]]) -> dict[str, int]:
    return over_lives(samples, lambda d: (d.get("forwarding") or {}).get("failovers"))


def rejected_lines(samples: list[tuple[int, str, dict[str, Any]]]) -> dict[str, int]:
    """Lines the scanners' drivers refused (garbage, overlong, partial), over every life."""
    return over_lives(samples, lambda d: sum(
        (x.get("counters") or {}).get("rejected", 0) for x in d.get("devices") or []
        if isinstance(x, dict) and x.get("kind") == "scanner"))


def alarms(samples: list[tuple[int, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every alarm a gateway raised: the agent's own alarms (clock offset), a journal
    refusing transactions, a device in error; with the first and last time seen."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}

    def note(t: int, gw: str, name: str, detail: str = "") -> None:
        a = seen.setdefault((gw, name), {"gateway": gw, "alarm": name, "first_ms": t,
                                         "last_ms": t, "detail": detail})
        a["last_ms"] = t

    for t, gw, doc in samples:
        for name in (doc.get("forwarding") or {}).get("alarms") or []:
            note(t, gw, str(name))
        if doc.get("journal_refusing_txn"):
            note(t, gw, "journal_refusing_txn")
        for d in doc.get("devices") or []:
            if isinstance(d, dict) and d.get("state") == "error":
                note(t, gw, f"device_error:{d.get('name')}", str(d.get("last_error") or ""))
    return sorted(seen.values(), key=lambda a: a["first_ms"])
