"""How every paho-mqtt client of ours is made: callback API 2, TCP_NODELAY on its socket.

paho writes each MQTT packet with one send, but two small packets back to back (a PUBACK,
then the next publish; the ledger's ack publish, then its PUBACK) meet Nagle: the second
waits until the peer ACKs the first, and Linux delays that ACK up to 40 ms when it has
nothing to send. The brokers we configure set ``set_tcp_nodelay true`` (the default of
EMQX and HiveMQ), which makes the broker's side prompt and exposes every client without
TCP_NODELAY to that 40 ms. Measured through mosquitto on loopback:

- a ledger-like subscriber (manual PUBACK, an ack published per batch): publish to
  receive p99 17 ms (max 45) with the broker's default, 1.2 ms with ``set_tcp_nodelay``;
- a client publishing right after acking what it received: p50 0.13 ms either way with
  TCP_NODELAY on the client, 44 ms without it once the broker sets the option.

The uplink (``edges/mqtt.py``) sets more on its socket and calls ``set_nodelay`` itself.
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt


def set_nodelay(sock: Any) -> bool:
    """Send small packets at once. False where the option does not apply (not TCP)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        return False
    return True


def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    set_nodelay(sock)


def new_client(**kwargs: Any) -> mqtt.Client:
    """``mqtt.Client`` (callback API 2) with ``kwargs``, sending small packets at once."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    client.on_socket_open = _on_socket_open
    return client
