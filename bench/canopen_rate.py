"""TPDOs journaled per second from one CANopen node, through the real driver and journal.

The battery-module emulator (``midshift/simulator/devices/canopen.py``) sends TPDO1 (pack voltage
and current, 8 data bytes) on a schedule, each with a new voltage and current (two
values, two events per TPDO, as a battery's current never sits still), on python-can's
``virtual`` bus; an in-process ``Agent`` built from a site file runs the ``canopen``
driver (heartbeat, NMT start, the TPDO's mapping from the EDS) and journals each TPDO's
new value as one event through the pipeline and the group-committed journal.

The offered rate is what a busy 500 kbit/s bus carries: an 8-byte standard frame is 111
bits before stuffing, up to 135 with it, so the bus is full at about 3,700 such frames a
second; ``OFFERED_PER_S`` = 2,500 is two thirds of that. The virtual bus has no bit
timing, so the schedule is the bus: ``offered_per_s`` and ``sent_per_s`` say what was
offered and what the emulator managed on a shared machine, ``tpdo_per_s`` what was
journaled (events accepted with a seq, halved, from the first TPDO to the last
journaled), ``events_per_s`` the same in events, and
``lost`` how many sent values never became an event (must be 0). Every emit waits for
its record to be durable; the driver's lanes (``midshift/firmware/edges/emit_lanes.py``) let the
two tags share a sync, so the rate is about one TPDO per journal sync: ``journal_syncs``
and ``sync_ms`` (wall time per sync) show it, and
a shared machine's disk makes the figure vary run to run (the driver's queue absorbs the
difference; ``queue_overflows`` says if it did not).

``python -m bench devices --json`` prints ``canopen_tpdo_per_s`` from ``tpdo_per_s()``.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from midshift.firmware.agent import Agent
from midshift.firmware.edges.config_file import load_config
from midshift.simulator.devices.canopen import EDS, BatteryModule

OFFERED_PER_S = 2_500
SLOT_S = 0.01  # frames are offered in slots of 10 ms (25 frames at 2,500/s)
_runs = itertools.count()


def _site(tmp: Path, channel: str) -> Path:
    (tmp / "board.toml").write_text(
        '[board]\nname = "bench"\n[journal]\npath = "journal"\n'
        "segment_size = 1048576\nsegment_count = 64\n")
    site = tmp / "site.toml"
    site.write_text(f"""board_config = "board.toml"
[gateway]
id = "gw-bench"
site = "bench"
[devices.bms1]
type = "canopen"
interface = "virtual"
channel = "{channel}"
node_id = 16
eds = "{EDS}"
tpdos = [1]
heartbeat_ms = 200
""")
    return site


def _journaled(agent: Agent) -> int:
    return agent.events_by_device.get("bms1", {}).get("journaled", 0)


def tpdo_per_s(seconds: float = 5.0, offered_per_s: int = OFFERED_PER_S) -> dict[str, Any]:
    """Offer ``offered_per_s`` TPDOs a second for ``seconds``; what was journaled."""
    channel = f"bench-canopen-{next(_runs)}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="midshift-canopen-") as d:
        tmp = Path(d)
        node = BatteryModule("bms1", 16, channel, tpdo_period_ms=3_600_000).start()
        agent = Agent(load_config(_site(tmp, channel))).start()
        try:
            drv = agent.drivers[0]
            deadline = time.monotonic() + 10
            while drv.status.state != "ok" or node.nmt_state() != "OPERATIONAL":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node not started: {drv.status.as_dict()}")
                time.sleep(0.01)
            base = _journaled(agent)
            syncs = agent.journal.syncs if agent.journal is not None else 0
            voltage, current = 40_000, 10_000
            sent = 0
            per_slot = offered_per_s * SLOT_S
            started = time.monotonic()
            next_slot = started
            while True:
                now = time.monotonic()
                if now - started >= seconds:
                    break
                due = int((now - started) / SLOT_S + 1) * per_slot
                while sent < due:
                    voltage, current = voltage + 1, current + 1
                    node.set_value(0x2001, voltage)
                    node.set_value(0x2002, current)
                    sent += node.send_tpdos((1,))
                next_slot += SLOT_S
                time.sleep(max(0.0, next_slot - time.monotonic()))
            sent_s = time.monotonic() - started
            want = 2 * sent  # each TPDO: a new voltage and a new current
            last_change = time.monotonic()
            seen = _journaled(agent) - base
            while seen < want and time.monotonic() - last_change < 2.0:
                time.sleep(0.005)
                now_seen = _journaled(agent) - base
                if now_seen != seen:
                    seen, last_change = now_seen, time.monotonic()
            journal_s = last_change - started
            counters = drv.status.as_dict()["counters"]
            syncs = (agent.journal.syncs if agent.journal is not None else 0) - syncs
        finally:
            agent.stop()
            node.stop()
    return {"canopen_tpdo_per_s": round(seen / 2 / journal_s),
            "canopen_events_per_s": round(seen / journal_s),
            "canopen_offered_per_s": offered_per_s,
            "canopen_sent_per_s": round(sent / sent_s),
            "canopen_tpdos_sent": sent, "canopen_events_journaled": seen,
            "canopen_lost": want - seen, "canopen_bad_frames": counters.get("bad_frames", 0),
            "canopen_queue_overflows": counters.get("queue_overflows", 0),
            "canopen_journal_syncs": syncs,
            "canopen_sync_ms": round(journal_s * 1000 / max(1, syncs), 3)}


if __name__ == "__main__":
    import json
    print(json.dumps(tpdo_per_s(), sort_keys=True))
