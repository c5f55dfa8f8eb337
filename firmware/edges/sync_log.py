"""The sync log: one JSON line per sync event, in a file rotated by size.

Events: ``sent``, ``acked``, ``rejected``, ``resent``, ``failover``, ``failback``, ``up``,
``down``, ``uplink_up``, ``uplink_down``, ``command``, ``command_rejected``. Each line has
``ts_ms`` (wall clock) and ``event``. The logger (``midshift.sync``) does not propagate to
the agent's console log: an integrator reads this file, not a scrolling terminal.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("midshift.sync")
logger.propagate = False
logger.setLevel(logging.INFO)


def sync_event(event: str, **fields: Any) -> None:
    if logger.handlers:
        logger.info(json.dumps({"ts_ms": int(time.time() * 1000), "event": event, **fields},
                               separators=(",", ":"), default=str))


def open_sync_log(path: str | Path, max_bytes: int = 5 << 20, backups: int = 3) -> logging.Handler:
    """Start writing the sync log to ``path`` (rotated at ``max_bytes``, ``backups`` kept)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return handler


def close_sync_log(handler: logging.Handler) -> None:
    logger.removeHandler(handler)
    handler.close()
