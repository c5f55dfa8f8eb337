"""The sync log: one JSON line per sync event, in a file rotated by size.

Events: ``sent``, ``acked``, ``rejected``, ``resent``, ``failover``, ``failback``, ``up``,
``down``, ``uplink_up``, ``uplink_down``, ``command``, ``command_rejected``. Each line has
``ts_ms`` (wall clock, ms since the Unix epoch), ``ts`` (the same instant in ISO 8601,
UTC, to the millisecond: ``2026-12-05T09:01:09.123Z``) and ``event``. The file is rotated
by the standard library's ``RotatingFileHandler`` at ``[status] sync_log_max_bytes``,
keeping ``sync_log_backups`` old files (``sync.log.1`` the newest). The logger (``midshift.sync``) does not propagate to
the agent's console log: an integrator reads this file, not a scrolling terminal.

A write that fails (a full disk) loses that line, never the caller's work: the handler
reports the failure through ``on_error(True)`` once (the agent raises the alarm
``sync_log_write``) and ``on_error(False)`` when a line is written again.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("midshift.sync")
logger.propagate = False
logger.setLevel(logging.INFO)


def iso_ms(ts_ms: int) -> str:
    """``ts_ms`` as ISO 8601 UTC with milliseconds (what a person greps for)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000)) + \
        f".{ts_ms % 1000:03d}Z"


def sync_event(event: str, **fields: Any) -> None:
    if logger.handlers:
        ts_ms = int(time.time() * 1000)
        logger.info(json.dumps({"ts_ms": ts_ms, "ts": iso_ms(ts_ms), "event": event,
                                **fields}, separators=(",", ":"), default=str))


class SyncLogHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that says when its writes fail and when they work again."""

    def __init__(self, path: str | Path, max_bytes: int, backups: int,
                 on_error: Callable[[bool], None] | None = None) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8",
                         delay=True)
        self.on_error = on_error
        self.failing = False
        self._failed_now = False
        self._sized: Any = None  # the stream whose size ``_size`` counts
        self._size = 0
        self._line = 0
        self._regular = True

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - logging's name
        """The standard decision without its syscalls per line (two stats, a seek and a
        tell: a fifth of the forwarding thread's time in a drain, each call giving the
        interpreter lock away): the file's size is read once per opened stream and
        counted from then on; this handler is the file's only writer."""
        if self.stream is None:
            self.stream = self._open()
        if self.stream is not self._sized:
            self.stream.seek(0, 2)
            self._size = self.stream.tell()
            self._regular = os.path.isfile(self.baseFilename)  # bpo-45401: files only
            self._sized = self.stream
        self._line = len(self.format(record)) + 1
        return self.maxBytes > 0 and self._regular and self._size + self._line >= self.maxBytes

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        try:
            super().emit(record)  # calls handleError (below) when the write fails
            if self.stream is self._sized and not self._failed_now:
                self._size += self._line
        except Exception:  # noqa: BLE001 - a full disk loses the line, not the caller
            self._failed()
        if self.failing and not self._failed_now:
            self.failing = False
            if self.on_error is not None:
                self.on_error(False)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self._failed()

    def _failed(self) -> None:
        self._failed_now = True
        if self.stream is not None:  # reopen on the next line: the file may be back
            try:
                self.stream.close()
            except Exception:  # noqa: BLE001 - its buffer could not be flushed either
                pass
            self.stream = None  # type: ignore[assignment]
        if not self.failing:
            self.failing = True
            logging.getLogger(__name__).error("sync log %s: write failed; lines are lost "
                                              "until it works again", self.baseFilename)
            if self.on_error is not None:
                self.on_error(True)


def open_sync_log(path: str | Path, max_bytes: int = 5 << 20, backups: int = 3,
                  on_error: Callable[[bool], None] | None = None) -> logging.Handler:
    """Start writing the sync log to ``path`` (rotated at ``max_bytes``, ``backups`` kept);
    ``on_error`` hears when writes start and stop failing."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # the first line fails and says so
    handler = SyncLogHandler(path, max_bytes, backups, on_error)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return handler


def close_sync_log(handler: logging.Handler) -> None:
    logger.removeHandler(handler)
    handler.close()
