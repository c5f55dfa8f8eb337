"""A serial port that comes and goes: pyserial opened by URL, reopened with a backoff,
woken on stop; and the config fields a gateway's serial devices share (a pyserial port,
a stale time; the baud rate is the core's ``config_fields.baudrate_field``).

The port is any pyserial URL or path (``serial_for_url``): ``/dev/serial/by-id/...``, a
pty's stable link in the simulator, ``socket://127.0.0.1:4001`` behind a serial server.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import serial

from midshift.firmware.core.config_fields import field, positive
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.driver import Driver

log = logging.getLogger(__name__)

URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "hwgrep", "alt")  # pyserial's handlers
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
READ_SLICE_S = 0.05  # longest a read blocks: bounds how late a stop or an expiry is seen
WRITE_TIMEOUT_S = 1.0  # a peer that stops reading makes a write fail, not hang the loop


def port_field(table: dict[str, Any], path: str) -> str:
    """The ``port`` key: a device path or a pyserial URL with a known scheme."""
    port = field(table, "port", path, str, allowed="a device path (/dev/serial/by-id/...) "
                 "or a pyserial URL (socket://HOST:PORT)")
    if not port.strip():
        raise ConfigError(path + ".port", "is empty", "a device path or a pyserial URL")
    if "://" in port:
        scheme = port.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise ConfigError(path + ".port", f"{port!r} has an unknown URL scheme {scheme!r}",
                              ", ".join(s + "://" for s in URL_SCHEMES))
    return port


def stale_field(table: dict[str, Any], path: str, default: float | None) -> float | None:
    return field(table, "stale_s", path, float, default=default, check=positive,
                 allowed="a number of seconds above 0")


class SerialLink:
    """One pyserial port for a driver: open, re-open with backoff, lose, close, interrupt.

    ``open()`` tries once; on failure it sets ``disconnected``, waits the backoff (woken
    by stop) and returns None, so the caller's loop stays simple and bounded by stop.
    """

    def __init__(self, driver: Driver, url: str, baudrate: int, timeout_s: float) -> None:
        self.driver = driver
        self.url = url
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.port: serial.SerialBase | None = None
        self._lock = threading.Lock()
        self._backoff_s = BACKOFF_FIRST_S
        self._opened_once = False
        self._failing = False

    def open(self) -> serial.SerialBase | None:
        drv = self.driver
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout_s,
                                         write_timeout=WRITE_TIMEOUT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            drv.status.count("open_failures")
            if not self._failing:  # one warning per outage, not one per retry
                log.warning("%s: cannot open %s: %s", drv.name, self.url, exc)
            self._failing = True
            drv.set_state("disconnected", f"cannot open {self.url}: {exc}")
            drv.wait(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            return None
        with self._lock:
            self.port = port
        if self._opened_once:
            drv.status.count("reconnects")
        log.info("%s: opened %s at %d baud", drv.name, self.url, self.baudrate)
        self._opened_once = True
        self._failing = False
        self._backoff_s = BACKOFF_FIRST_S
        return port

    def lost(self, exc: BaseException) -> None:
        """The port failed under us (unplugged): close it and say so."""
        self.driver.status.count("disconnects")
        self.driver.set_state("disconnected", f"port {self.url} lost: {exc}")
        self.close()

    def close(self) -> None:
        with self._lock:
            port, self.port = self.port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                log.debug("%s: close failed", self.driver.name, exc_info=True)

    def interrupt(self) -> None:
        """Wake a blocking read (posix ports have ``cancel_read``; others time out)."""
        with self._lock:
            port = self.port
            if port is not None and hasattr(port, "cancel_read"):
                port.cancel_read()
