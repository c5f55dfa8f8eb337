"""The agent's console log (stderr, the journal of systemd): levels and quiet libraries.

A gateway writes its log to an SD card for months, so at the default level the log says
what changed, not what is still so. What an operator needs of a device is its state
change (``plc1: disconnected (cannot connect to 10.0.0.5:502)``, once), which the drivers
log; the libraries under them say the same thing on every retry:

- pymodbus logs an ERROR for each refused connection (one a second while a PLC is off);
- asyncua logs an INFO line per publish (``Publish callback called with result ...``, 92%
  of an integrator's log at five minutes), and a traceback when a server closes a session.

So the ``[log]`` table of the site file sets three levels: ``level`` (the agent's own
lines, default INFO), ``libraries`` (paho, cheroot and every other library, default
WARNING) and ``device_libraries`` (pymodbus, asyncua, can and canopen, whose failures the drivers fold
into state changes, default CRITICAL). ``--log-level`` on the command line overrides
``level``. Set ``device_libraries = "DEBUG"`` to see the wire while diagnosing a driver.
"""

from __future__ import annotations

import logging
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers the drivers speak for: their retries and closed sessions are device states.
DEVICE_LIBRARIES = ("asyncua", "pymodbus", "can", "canopen")
# Everything else that logs under the agent; anything not in either list and not ours
# (``midshift``) falls under ``libraries`` too, by the filter below.
OWN = ("midshift", "__main__")


class LevelByOrigin(logging.Filter):
    """Passes a record if it reaches the level of where it came from: ours, a device
    library or another library. On the handler, so it sees records of every logger,
    including ones created after it was set up."""

    def __init__(self, own: int, libraries: int, device_libraries: int) -> None:
        super().__init__()
        self.own = own
        self.libraries = libraries
        self.device_libraries = device_libraries

    def level_for(self, name: str) -> int:
        top = name.split(".", 1)[0]
        if top in OWN:
            return self.own
        if top in DEVICE_LIBRARIES:
            return self.device_libraries
        return self.libraries

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in OWN:
            return True  # our loggers' own level decided (a set-log-level command moves it)
        return record.levelno >= self.level_for(record.name)


def configure(log: dict[str, Any], level_override: str | None = None,
              handler: logging.Handler | None = None) -> logging.Handler:
    """Set up the root logger from the site file's ``[log]`` table (``site_config._log``);
    returns the handler (stderr unless given). Replaces the handlers set up before."""
    own = logging.getLevelName(level_override or log["level"])
    levels = LevelByOrigin(own, logging.getLevelName(log["libraries"]),
                           logging.getLevelName(log["device_libraries"]))
    if handler is None:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(levels)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Our loggers carry our level (the set-log-level command changes the
    # "midshift.firmware" logger's: reset here too, or an earlier command's level would stay); the root carries the libraries', the device libraries theirs, so no
    # record is built that nobody reads. The filter then sorts by origin.
    root.setLevel(min(levels.libraries, levels.device_libraries))
    for name in (*OWN, "midshift.firmware"):
        logging.getLogger(name).setLevel(levels.own)
    for name in DEVICE_LIBRARIES:
        logging.getLogger(name).setLevel(levels.device_libraries)
    return handler
