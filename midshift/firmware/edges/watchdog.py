"""systemd integration: ``sd_notify`` READY and WATCHDOG keepalives, without libsystemd.

When ``NOTIFY_SOCKET`` is set (systemd ``Type=notify``), the agent says ``READY=1`` once
its journal is open and its threads run, and ``WATCHDOG=1`` every half ``WATCHDOG_USEC``
while its loops are alive; a hung agent stops sending and systemd restarts it
(``WatchdogSec`` in ``midshift/firmware/midshift.service``). Without ``NOTIFY_SOCKET`` every call
is a no-op, so the same agent runs under a shell, a container or the simulator.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_interval_s = int(usec) / 2e6 if usec and usec.isdigit() else None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)  # a listener that does not read must not stall a loop
                s.sendto(state.encode(), addr)
        except OSError as exc:
            log.warning("sd_notify %s to %s failed: %s", state, self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
