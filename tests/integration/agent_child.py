"""A gateway agent process for the SIGKILL tests: it emits events and prints each code
once ``emit`` has returned (durable: a device would have been told OK), until killed.

    python -m tests.integration.agent_child DIR PORT [PORT...] LIFE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from midshift.firmware.agent import Agent
from midshift.firmware.core.event import Event
from midshift.simulator.lab import lab_config


def main() -> None:
    tmp, *ports, life = sys.argv[1:]
    cfg = lab_config(Path(tmp), [int(p) for p in ports])
    agent = Agent(cfg)
    agent.forwarding_options = {"hold_ms": 2000, "ack_timeout_ms": 1500, "keepalive_s": 1}
    agent.start()
    print("started", flush=True)
    n = 0
    while n < 100000:  # bounded; the parent kills it long before
        n += 1
        code = f"L{life}-{n:06d}"
        agent.emit(Event("dev1", "scan", int(time.time() * 1000), {"code": code}))
        print(code, flush=True)
        time.sleep(0.002)


if __name__ == "__main__":
    main()
