"""An uplink leaves through its own source address (the interface's address on a gateway)."""

from __future__ import annotations

import queue
import socket

from midshift.firmware.core.site_config import UplinkConfig
from midshift.firmware.edges.mqtt import MqttUplink, interface_address


def test_the_uplink_connects_from_its_source_address() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(5)
        cfg = UplinkConfig("lte", "127.0.0.1", srv.getsockname()[1], False, 20, None,
                           "127.0.0.2", False)
        uplink = MqttUplink(cfg, "gw-bind", queue.Queue(), [])
        uplink.start()
        try:
            conn, peer = srv.accept()
            conn.close()
        finally:
            uplink.stop()
    assert peer[0] == "127.0.0.2"


def test_an_interface_name_resolves_to_its_address() -> None:
    assert interface_address("lo") == "127.0.0.1"
    try:
        interface_address("no-such-if0")
    except OSError as exc:
        assert "no-such-if0" in str(exc)
    else:
        raise AssertionError("an unknown interface resolved")
