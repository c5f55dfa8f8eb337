"""A paho-mqtt client wrapped for tests: connect, publish QoS 1, wait for PUBACKs."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt


class Probe:
    def __init__(self, host: str, port: int, client_id: str, clean: bool = True) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.acked: set[int] = set()
        self.messages: list[tuple[str, bytes]] = []
        self._cv = threading.Condition()
        self.client.on_connect = lambda c, u, f, rc, p=None: self.connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p=None: self.disconnected.set()
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def _on_publish(self, client, userdata, mid, rc=None, props=None) -> None:
        with self._cv:
            self.acked.add(mid)
            self._cv.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cv:
            self.messages.append((msg.topic, msg.payload))
            self._cv.notify_all()

    def connect(self, keepalive: int = 60, timeout_s: float = 5.0) -> bool:
        self.client.connect(self.host, self.port, keepalive=keepalive)
        self.client.loop_start()
        return self.connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        return self.client.publish(topic, payload, qos=qos).mid

    def wait_acked(self, mid: int, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: mid in self.acked, timeout_s)

    def wait_messages(self, n: int, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self.messages) >= n, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
