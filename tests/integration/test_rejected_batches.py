"""A batch the ledger refuses for good (a signed ``rejected`` ack) against a real agent,
mosquitto and ledger: its records stay on the gateway (the commit point stops before
them) while later batches go on, the status lists the range under the alarm
``ledger_rejected``, and only an operator moves on: ``replay-from`` once the ledger is
fixed (stored exactly once), or ``settle-rejected`` after exporting them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import midshift.host_tools.ledger.verify as verify_module
from midshift.simulator.lab import COMMAND_KEY, Lab, wait_for

REFUSED: set[str] = set()  # codes the ledger refuses, as a stricter future check might


def _strict(batch: Any) -> tuple[str, str] | None:
    for r in batch.records:
        if any(code.encode() in bytes(r[3]) for code in REFUSED):
            return "bad_body", "refused by the test's stricter ledger"
    return _ORIGINAL(batch)


_ORIGINAL = verify_module.unstorable


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setattr(verify_module, "unstorable", _strict)
    REFUSED.clear()
    r = Lab(tmp_path)
    yield r
    r.close()
    REFUSED.clear()


def _command(rig: Lab, cmd_id: int, cmd: str, args: dict[str, Any]) -> None:
    import paho.mqtt.publish as publish

    from midshift.firmware.core.commands import sign_command
    from midshift.firmware.core.signing import Signer
    publish.single("midshift/v1/lab/gw-t/cmd",
                   sign_command(Signer(COMMAND_KEY), "gw-t", cmd_id, cmd, args), qos=1,
                   hostname="127.0.0.1", port=rig.broker.port)


def _forwarding(rig: Lab) -> dict[str, Any]:
    assert rig.agent is not None
    return rig.agent.snapshot()["forwarding"]


def _codes(rig: Lab) -> list[str]:
    return sorted(json.loads(d)["code"] for d in rig.ledger_codes())


def test_a_rejected_batch_is_kept_alarmed_and_replayed_once_the_ledger_takes_it(
        rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    REFUSED.add("C00000007")
    rig.emit(10)
    assert wait_for(lambda: _forwarding(rig)["rejected"], 10), _forwarding(rig)
    (first, last), = _forwarding(rig)["rejected"]
    assert first <= 8 and last >= 7  # C00000007: seq 7, or 8 behind the "online" incident
    assert "ledger_rejected" in _forwarding(rig)["alarms"]
    rig.emit(10, source="dev1")  # later batches go on
    assert wait_for(lambda: "C00000020" in _codes(rig), 10)
    assert "C00000007" not in _codes(rig)
    # The commit point stops before the refused records: their space is not reclaimed.
    assert wait_for(lambda: agent.journal.tail()[1] == first, 5), agent.journal.tail()
    REFUSED.clear()  # the ledger is fixed; the operator asks for the rest again
    _command(rig, 1, "replay-from", {"seq": first})
    assert wait_for(lambda: len(_codes(rig)) == 20, 15), _codes(rig)
    assert _codes(rig) == [f"C{i:08d}" for i in range(1, 21)]  # each exactly once
    assert wait_for(lambda: "ledger_rejected" not in _forwarding(rig)["alarms"], 5)
    assert _forwarding(rig)["rejected"] == []
    # Everything acked (seqs also count the link's "online" incident).
    assert wait_for(lambda: agent.journal.tail()[1] == agent.journal.durable_seq + 1, 5), \
        agent.journal.tail()


def test_settle_rejected_lets_the_space_go_only_for_the_range_named(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    REFUSED.add("C00000003")
    rig.emit(6)
    assert wait_for(lambda: _forwarding(rig)["rejected"], 10)
    (first, last), = _forwarding(rig)["rejected"]
    _command(rig, 1, "settle-rejected", {"first": last + 1, "last": last + 5})  # misses it
    assert wait_for(lambda: (_forwarding(rig)["last_command"] or {}).get("id") == 1, 5)
    assert _forwarding(rig)["last_command"]["result"] == {"settled": []}
    # The acks before the rejected range move the commit point up to it (not at once:
    # the session commits on its own deadline), never past it.
    assert wait_for(lambda: agent.journal.tail()[1] == first, 5), agent.journal.tail()
    _command(rig, 2, "settle-rejected", {"first": first, "last": last})
    assert wait_for(lambda: agent.journal.tail()[1] == agent.journal.durable_seq + 1, 5), \
        agent.journal.tail()
    assert "ledger_rejected" not in _forwarding(rig)["alarms"]
    # Settled: exactly the range's scans are gone (the range may also hold seq 1, the
    # link's "online" incident, so one scan fewer than its length).
    assert "C00000003" not in _codes(rig)
    assert len(_codes(rig)) in (6 - (last - first + 1), 6 - (last - first))
