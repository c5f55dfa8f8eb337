"""Values read together are journaled together: one hand-over, one sync they share.

A Modbus block with many changed registers used to wait for one journal sync per value,
one after the other on the driver's thread; at a few milliseconds a sync that capped a
PLC at a few hundred values a second. ``Agent.emit_many`` appends them under one lock hold
and waits once. Counted here, not timed: syncs per value, and that each value is still
journaled exactly once, in order, refusals kept apart.
"""

from __future__ import annotations

from pathlib import Path

from midshift.firmware.agent import Agent
from midshift.firmware.core.event import Event, decode_body
from midshift.firmware.edges.config_file import load_config
from midshift.simulator.devices.modbus import ModbusPLC
from midshift.simulator.lab import Lab, wait_for

TAGS = [f"r{i:02d}" for i in range(40)]


def _agent(tmp: Path, device: str) -> Agent:
    """A started agent with one device table (``device``: the lines after its header)."""
    (tmp / "gw.key").write_text("11" * 32)
    (tmp / "board.toml").write_text('[board]\nname = "test"\n[journal]\npath = "journal"\n')
    site = tmp / "site.toml"
    site.write_text('board_config = "board.toml"\n[gateway]\nid = "gw-b"\nsite = "lab"\n'
                    f'key_file = "gw.key"\n{device}')
    return Agent(load_config(site)).start()


def _journaled(agent: Agent, source: str) -> list[dict]:
    assert agent.journal is not None
    return [b for b in (decode_body(r.body) for r in agent.journal.journal.records())
            if b["source"] == source]


def test_a_block_of_changed_registers_shares_one_sync(tmp_path: Path) -> None:
    regs = [{"tag": t, "address": i, "type": "uint16", "behaviour": "counter",
             "period_ms": 100} for i, t in enumerate(TAGS)]
    with ModbusPLC("plc1", regs) as plc:
        table = "".join(f'[[devices.plc1.registers]]\ntag = "{t}"\naddress = {i}\n'
                        'type = "uint16"\n' for i, t in enumerate(TAGS))
        agent = _agent(tmp_path, f'[devices.plc1]\ntype = "modbus"\nhost = "127.0.0.1"\n'
                                 f'port = {plc.port}\npoll_ms = 20\n{table}')
        try:
            assert agent.journal is not None
            syncs0 = agent.journal.syncs

            def journaled() -> list[dict]:
                return _journaled(agent, "plc1")

            assert wait_for(lambda: len(journaled()) >= 400, 20)
            syncs = agent.journal.syncs - syncs0
            got = journaled()
        finally:
            agent.stop()
    # One sync each would be >= 400; a block's 40 values (or the part that moved) share one.
    assert syncs * 5 < len(got), (syncs, len(got))
    served: dict[str, list[int]] = {}
    for e in plc.truth():
        if e["kind"] == "register":
            served.setdefault(e["tag"], []).append(e["value"])
    for tag in TAGS:
        values = [e["data"]["value"] for e in got if e["data"]["tag"] == tag]
        assert values == served[tag][:len(values)], tag  # each change once, in order
        assert len(values) >= 2, tag


def test_a_refused_event_among_many_does_not_hold_back_the_others(tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=1)
    try:
        agent = lab.start_agent()
        assert agent.journal is not None
        now = 1_780_000_000_000
        events = [Event("plc1", "register", now + i, {"tag": "t", "value": i})
                  for i in range(50)]
        events[17] = Event("plc1", "", now, {"tag": "t", "value": -1})  # no kind: invalid
        events[33] = Event("nobody", "register", now, {"tag": "t", "value": -2})
        syncs0 = agent.journal.syncs
        got = agent.emit_many(events)
        syncs = agent.journal.syncs - syncs0
        seqs = [g for g in got if isinstance(g, int)]
        assert len(seqs) == 48 and seqs == sorted(seqs)
        assert seqs == list(range(seqs[0], seqs[0] + 48))  # nothing else landed between them
        assert getattr(got[17], "reason", None) == "bad_kind"
        assert getattr(got[33], "reason", None) == "unknown_source"
        assert 1 <= syncs <= 2
        assert agent.events_by_device["plc1"]["journaled"] == 48
        assert agent.events_by_device["plc1"]["bad_kind"] == 1
        assert agent.events_by_device["(unknown)"]["unknown_source"] == 1
        assert wait_for(lambda: lab.ledger_count() >= 48, 15)
        rows = lab.store.query("SELECT seq FROM event_fields WHERE gateway='gw-t' AND source='plc1'")
        assert sorted(r[0] for r in rows) == seqs  # each once
    finally:
        lab.close()


def test_one_opcua_publish_of_many_changes_shares_one_sync(tmp_path: Path) -> None:
    from midshift.simulator.devices.opcua import OpcUaPLC

    tags = TAGS[:30]
    plc = OpcUaPLC("cell1", port=0, period_ms=100,
                   variables=[{"tag": t, "type": "counter", "start": 1} for t in tags]).start()
    try:
        nodes = "".join(f'[[devices.cell1.nodes]]\ntag = "{t}"\nnode_id = "{plc.node_id(t)}"\n'
                        for t in tags)
        agent = _agent(tmp_path, f'[devices.cell1]\ntype = "opcua"\nendpoint = "{plc.endpoint}"'
                                 f'\npublishing_ms = 50\n{nodes}')
        try:
            assert agent.journal is not None

            def journaled() -> list[dict]:
                return _journaled(agent, "cell1")

            assert wait_for(lambda: len(journaled()) >= 30, 20)  # subscribed, first values in
            syncs0, n0 = agent.journal.syncs, len(journaled())
            assert wait_for(lambda: len(journaled()) >= n0 + 300, 20)
            syncs = agent.journal.syncs - syncs0
            got = journaled()
        finally:
            agent.stop()
    finally:
        plc.stop()
    assert syncs * 5 < len(got) - n0, (syncs, len(got) - n0)
    for tag in tags:
        values = [e["data"]["value"] for e in got if e["data"]["tag"] == tag]
        assert values == sorted(set(values)), tag  # each change once, in order
