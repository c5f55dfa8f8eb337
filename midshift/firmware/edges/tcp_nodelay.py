"""TCP_NODELAY on the sockets our MQTT clients open (paho's ``on_socket_open``).

paho writes each MQTT packet with one send, but two small packets back to back (the
ledger's ack publish, then its PUBACK; a PUBACK behind a publish) meet Nagle: the second
waits until the peer ACKs the first, and Linux delays that ACK up to 40 ms when it has
nothing to send. Measured through mosquitto on loopback: a ledger-like subscriber saw
publish-to-receive p99 17 ms (max 45) without it on both ends, 1.2 ms with it (the broker
side is mosquitto's ``set_tcp_nodelay true``, which the configs we generate set).
"""

from __future__ import annotations

import socket
from typing import Any


def set_nodelay(sock: Any) -> bool:
    """Send small packets at once. False where the option does not apply (not TCP)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        return False
    return True


def on_socket_open(client: Any, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open`` callback form of ``set_nodelay``."""
    set_nodelay(sock)
