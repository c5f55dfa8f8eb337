"""One uplink: a paho-mqtt client to one broker, leaving through one interface.

Health is MQTT's own ping on a short keepalive (default 1 s: a silent partition is found
in about two keepalives, not the 90 s of a 60 s keepalive), plus ``TCP_USER_TIMEOUT`` on
the socket so unacknowledged TCP data fails the connection in seconds too.

A standby uplink (any but the most preferred, while another carries the traffic) pings
only every ``standby_keepalive_s`` (default 60 s): an idle LTE link costs a ping exchange
a minute (4 bytes of MQTT, about 5.8 kB a day) instead of one a second (345 kB a day,
some 20 MB with TCP/IP headers). It connects with that keepalive, so the broker allows
it; when it becomes the active link it pings every second from then on (a client may
ping more often than it said), so the link carrying the traffic is watched as closely
as ever and failover, which the active link's failure drives, is no slower. Sharp edge:
a standby that dies unnoticed is found within about two standby keepalives, or about a
second after it has been made active; the broker fires its last will up to 1.5 standby
keepalives after it vanished. A down link
is retried on a short interval (``RETRY_S``, 0.1 s; a metered link 0.1 s growing to
``RETRY_METERED_S``, 0.25 s), so the first batch after a restore goes out within about a
tenth of a second, not minutes: a backlog of 120,000 events drains in about half a second,
and at 0.5 s the wait for the retry was a third to half of a drain; at 0.25 s it was still
0.12 to 0.31 s of a 0.64 to 0.84 s drain (a link comes back at a random point of its retry
period). A retry is one SYN: refused, a RST comes back at once; blackholed, the connect
waits out its own timeout, so a dead link is not spun on.

Everything the client hears is put on the agent's queue as a small event: ``LinkUp``,
``LinkDown`` (with the reason) or ``Received`` (topic and payload), each naming the
uplink. The forwarding loop is the only consumer; paho's callbacks do nothing else.

Subscriptions (``ack`` and ``cmd``) are made on every connect: the broker may have
restarted without persistence and forgotten them. The last will marks the gateway
``offline`` on the retained status topic when it vanishes; a clean stop publishes its own
``offline`` first (``publish_wait``), since a clean DISCONNECT discards the will.

Not done here: the interface binding is by source address (the interface's IPv4
address); SO_BINDTODEVICE would need root on the gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import queue
import random
import socket
import ssl
import struct
from typing import Any

import paho.mqtt.client as mqtt

from midshift.firmware.core.site_config import UplinkConfig
from midshift.firmware.edges.paho_client import set_nodelay

log = logging.getLogger(__name__)
SIOCGIFADDR = 0x8915
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
RETRY_S = 0.1          # between connects while a link is down (each one SYN)
RETRY_METERED_S = 0.25  # the most a metered link waits between them (0.1 s doubling)


class LinkUp:
    def __init__(self, uplink: str) -> None:
        self.uplink = uplink


class LinkDown:
    def __init__(self, uplink: str, reason: str) -> None:
        self.uplink = uplink
        self.reason = reason


class Received:
    def __init__(self, uplink: str, topic: str, payload: bytes) -> None:
        self.uplink = uplink
        self.topic = topic
        self.payload = payload


def interface_address(ifname: str) -> str:
    """The IPv4 address of a network interface (to bind an uplink's socket to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname[:15].encode()))
        except OSError as exc:
            raise OSError(f"interface {ifname}: no IPv4 address ({exc.strerror})") from None
    return socket.inet_ntoa(packed[20:24])


class MqttUplink:
    def __init__(self, cfg: UplinkConfig, client_id: str, events: queue.Queue[Any],
                 subscriptions: list[str], will: tuple[str, bytes] | None = None,
                 keepalive_s: int = 1, max_retry_s: float | None = None,
                 user_timeout_ms: int = 3000, preferred: bool = True) -> None:
        """``preferred``: the first uplink by priority, which is never a standby for long
        (it takes the traffic back once healthy) and keeps ``keepalive_s`` throughout.
        ``max_retry_s``: the most a down link waits between connects (None: ``RETRY_S``,
        or ``RETRY_METERED_S`` for a metered one)."""
        self.name = cfg.name
        self.cfg = cfg
        self.events = events
        self.subscriptions = subscriptions
        self.keepalive_s = keepalive_s
        standby_s = max(keepalive_s, getattr(cfg, "standby_keepalive_s", keepalive_s))
        # What CONNECT tells the broker, and how often we ping while idle.
        self.standby_keepalive_s = keepalive_s if preferred else standby_s
        self.active = False
        self.user_timeout_ms = user_timeout_ms
        self.connected = False
        self.counters = {"connects": 0, "disconnects": 0, "published": 0, "publish_errors": 0}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=True, protocol=mqtt.MQTTv311)
        # Jittered per client, so a fleet that lost the same broker does not return in step.
        jitter = random.uniform(0.8, 1.25)
        if max_retry_s is None:
            max_retry_s = RETRY_METERED_S if cfg.metered else RETRY_S
        self.client.reconnect_delay_set(min_delay=RETRY_S * jitter,
                                        max_delay=max_retry_s * jitter)
        # Unacked QoS 1 publishes are not kept across a reconnect by us: the forwarder
        # resends from the journal, which is the durable copy.
        self.client.max_inflight_messages_set(64)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        if cfg.tls:  # TLS 1.2 at least, the broker verified against the site CA
            ctx = ssl.create_default_context(cafile=cfg.ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if cfg.cert:
                ctx.load_cert_chain(cfg.cert, cfg.key)
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_socket_open = self._on_socket_open
        self.client.on_pre_connect = self._on_pre_connect

    def bind_address(self) -> str:
        if self.cfg.source_address:
            return self.cfg.source_address
        if self.cfg.interface:
            return interface_address(self.cfg.interface)
        return ""

    def start(self) -> MqttUplink:
        try:
            bind = self.bind_address()
        except OSError as exc:
            log.error("uplink %s: %s; using the default route", self.name, exc)
            bind = ""
        self.client.connect_async(self.cfg.host, self.cfg.port,
                                  keepalive=self.standby_keepalive_s, bind_address=bind)
        self.client.loop_start()
        return self

    def set_active(self, active: bool) -> None:
        """This link carries the traffic (ping every ``keepalive_s``) or idles as a standby
        (every ``standby_keepalive_s``). paho refuses to change the keepalive of an open
        connection through its property, because CONNECT announced it; pinging more often
        than announced is allowed (MQTT 3.1.1, 3.1.2.10), so the ping period is set under it
        and CONNECT always announces the standby value (``_on_pre_connect``)."""
        self.active = active
        self.client._keepalive = self._ping_s()  # noqa: SLF001 - see above

    def _ping_s(self) -> int:
        return self.keepalive_s if self.active else self.standby_keepalive_s

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to paho; False if the link cannot take it now (not connected)."""
        return self._hand(topic, payload, qos, retain) is not None

    def _hand(self, topic: str, payload: bytes, qos: int, retain: bool) -> Any:
        """paho's MQTTMessageInfo once handed over and counted; None if it was not."""
        if not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.counters["publish_errors"] += 1
            return None
        self.counters["published"] += 1
        return info

    def publish_wait(self, topic: str, payload: bytes, timeout_s: float, qos: int = 1,
                     retain: bool = False) -> bool:
        """Publish and wait (at most ``timeout_s``) until the broker has it: the goodbye
        before a clean disconnect, which would otherwise drop it from paho's queue."""
        info = self._hand(topic, payload, qos, retain)
        if info is None:
            return False
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):  # the link went down meanwhile
            return False
        return info.is_published()

    # ---- paho callbacks (network thread): queue and return ------------------------------

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        client._keepalive = self.standby_keepalive_s  # noqa: SLF001 - what CONNECT announces

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if set_nodelay(sock):  # else not a TCP socket: the ping still guards the link
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, self.user_timeout_ms)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any = None) -> None:
        if reason.is_failure:
            self.events.put(LinkDown(self.name, f"broker refused: {reason}"))
            return
        client._keepalive = self._ping_s()  # noqa: SLF001 - see set_active
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected = True
        self.counters["connects"] += 1
        self.events.put(LinkUp(self.name))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any = None) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.counters["disconnects"] += 1
        self.events.put(LinkDown(self.name, str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.events.put(Received(self.name, msg.topic, msg.payload))
