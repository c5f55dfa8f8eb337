"""Hostile downlink against a running agent: whatever lands on its ``cmd`` topic (deeply
nested, megabytes, binary, a far-future id, another gateway's command) is rejected with
a reason and counted, and forwarding goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from midshift.firmware.core.commands import ID_WINDOW, sign_command
from midshift.firmware.core.signing import Signer
from midshift.simulator.lab import COMMAND_KEY, Lab, wait_for


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path)
    yield r
    r.close()


def test_hostile_commands_are_rejected_counted_and_forwarding_goes_on(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    host = Signer(COMMAND_KEY)
    hostile = [b"[" * 50000 + b"]" * 50000,                  # RecursionError bait
               b"{" * 3000,
               b"\x00" * (1 << 20),                          # a megabyte
               bytes(range(256)) * 4,                        # binary
               b"[]", b'{"v":2,"sig":{"a":1}}',              # wrong types
               sign_command(host, "gw-other", 1, "drain-now"),
               sign_command(host, "gw-t", 2 ** 80, "ping"),
               sign_command(host, "gw-t", ID_WINDOW + 1, "ping")]
    for payload in hostile:
        publish.single("midshift/v1/lab/gw-t/cmd", payload, qos=1, hostname="127.0.0.1",
                       port=rig.broker.port)
    fwd = agent.forwarding.session
    assert wait_for(lambda: fwd.counters["commands_rejected"] == len(hostile), 10), fwd.counters
    assert fwd.gate.rejected == {"too_deep": 1, "too_large": 2, "malformed": 2,
                                 "bad_signature": 1, "wrong_gateway": 1, "id_out_of_window": 2}
    assert agent.forwarding.alive()
    rig.emit(20)
    assert wait_for(lambda: rig.ledger_count() == 20, 10), rig.ledger_count()
    publish.single("midshift/v1/lab/gw-t/cmd", sign_command(host, "gw-t", 1, "ping"), qos=1,
                   hostname="127.0.0.1", port=rig.broker.port)  # nothing was locked out
    assert wait_for(lambda: (fwd.last_command or {}).get("id") == 1, 10)
