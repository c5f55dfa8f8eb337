"""A lab in one process: a gateway agent, its uplinks through fault proxies, a real
mosquitto and the reference ledger on SQLite.

Tests and benchmarks use it to drive the output side end to end. The agent runs
in-process with its forwarding loop (timers can be shortened through ``forwarding``);
its devices are configured but disabled, and events are handed to ``agent.emit``
directly, so the caller knows exactly what was produced and can check that the ledger
holds each event once. Scenarios with emulated devices build on the same parts.

Not modelled: separate machines (everything is on loopback, so "interfaces" are fault
proxies), a ledger under its own load (it runs in this process).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from midshift.firmware.agent import Agent
from midshift.firmware.core.event import Event
from midshift.firmware.core.site_config import DeviceType, SiteConfig, validate
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.simulator.broker import Broker
from midshift.simulator.network import FaultProxy

KEY = bytes(range(32))
COMMAND_KEY = bytes(range(100, 132))


def wait_for(cond: Any, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())


def lab_config(tmp: Path, uplink_ports: list[int], journal_segments: int = 64) -> SiteConfig:
    """The lab gateway's config: keys in ``tmp``, one uplink per port (by priority)."""
    (tmp / "gw.key").write_text(KEY.hex())
    (tmp / "host-cmd.key").write_text(COMMAND_KEY.hex())
    doc = {
        "gateway": {"id": "gw-t", "site": "lab", "key_file": str(tmp / "gw.key"),
                    "command_key_file": str(tmp / "host-cmd.key")},
        "board": {"name": "test"},
        "journal": {"path": str(tmp / "journal"), "segment_size": 65536,
                    "segment_count": journal_segments},
        # Disabled: no driver runs; events are handed to agent.emit by the caller.
        "devices": {"dev1": {"type": "scanner", "enabled": False},
                    "plc1": {"type": "modbus", "class": "telemetry", "enabled": False}},
        "uplinks": {f"up{i}": {"broker": f"mqtt://127.0.0.1:{port}", "priority": 10 * (i + 1)}
                    for i, port in enumerate(uplink_ports)},
    }
    return validate(doc, {"scanner": DeviceType("txn", lambda n, t, p: t),
                          "modbus": DeviceType("telemetry", lambda n, t, p: t)})


class Lab:
    def __init__(self, tmp: Path, uplinks: int = 2, journal_segments: int = 64,
                 direct: bool = False, **forwarding: Any) -> None:
        self.tmp = tmp
        self.broker = Broker(tmp / "broker").start()
        host, port = "127.0.0.1", self.broker.port
        self.proxies = [FaultProxy((host, port)).start() for _ in range(uplinks)]
        self.store = open_store(f"sqlite:///{tmp / 'ledger.db'}")
        self.ledger = LedgerService(self.store, {"gw-t": KEY}, f"mqtt://{host}:{port}").start()
        ports = [port if direct and i == 0 else p.address[1] for i, p in enumerate(self.proxies)]
        self.cfg = lab_config(tmp, ports, journal_segments)
        self.forwarding = {"hold_ms": 2000, "ack_timeout_ms": 1500, "keepalive_s": 1} | forwarding
        self.agent: Agent | None = None
        self.n = 0

    def start_agent(self, clock: Any = None) -> Agent:
        self.agent = Agent(self.cfg, clock=clock)
        self.agent.forwarding_options = self.forwarding
        return self.agent.start()

    def emit(self, count: int, source: str = "dev1") -> list[int]:
        if self.agent is None:
            raise RuntimeError("start_agent() first")
        seqs = []
        for _ in range(count):
            self.n += 1
            seqs.append(self.agent.emit(Event(source, "scan", int(time.time() * 1000),
                                              {"code": f"C{self.n:08d}"})))
        return seqs

    def emit_block(self, count: int, source: str = "plc1") -> list[int]:
        """``count`` values read together (one poll of a PLC's block), handed over at once
        through ``agent.emit_many``: they share one journal sync."""
        if self.agent is None:
            raise RuntimeError("start_agent() first")
        now = int(time.time() * 1000)
        events = []
        for _ in range(count):
            self.n += 1
            events.append(Event(source, "register", now, {"tag": f"r{self.n % 64}",
                                                          "value": self.n}))
        got = self.agent.emit_many(events)
        return [g for g in got if isinstance(g, int)]

    def ledger_codes(self) -> list[str]:
        """The data of the devices' events (not the agent's own incidents), by seq."""
        rows = self.store.query("SELECT data FROM event_fields WHERE gateway='gw-t' "
                                "AND source <> 'agent' ORDER BY seq")
        return [r[0] for r in rows]

    def ledger_count(self) -> int:
        """The devices' events in the ledger (the agent's own incidents left out). Polled
        often by tests and benches: a prefix match on the body, not a JSON parse per row."""
        agent = self.store.query("SELECT COUNT(*) FROM events WHERE gateway='gw-t' AND "
                                 "body LIKE ?", ('{"v":1,"src":"agent",%',))[0][0]
        return self.store.count("gw-t") - agent

    def incidents(self) -> list[tuple[str, Any]]:
        """(kind, data) of the agent's own events in the ledger, by seq."""
        import json
        rows = self.store.query("SELECT kind, data FROM event_fields WHERE gateway='gw-t' "
                                "AND source = 'agent' ORDER BY seq")
        return [(k, json.loads(d) if isinstance(d, str) else d) for k, d in rows]

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.ledger.stop()
        for p in self.proxies:
            p.stop()
        self.broker.stop()
        self.store.close()
