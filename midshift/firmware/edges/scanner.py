"""Device type ``scanner``: a serial barcode scanner whose lines become ``scan`` events.

Like every ``midshift/firmware/edges/<type>.py``, the module exports ``TYPE``, ``DEFAULT_CLASS``
and ``DRIVER`` (the driver class, with its ``validate_config``); the loader finds it by
the type's name (``docs/device-types.md``).

The port is any pyserial URL or path (``serial_for_url``): ``/dev/serial/by-id/...``, a
pty's stable link in the simulator, ``socket://127.0.0.1:4001`` for a scanner behind a
serial server. Framing, validation, the config check and the line-to-event rule are the
core's ``midshift/firmware/core/scan_line.py`` (every rejection reason and the charset names are
there), shared with the MicroPython node; this module reads bytes, stamps times, keeps
the state and emits.

Event: kind ``scan``, data ``{"code": str, "symbology": "]E0" or None}``, ``read_ms`` =
the wall time at which the read that brought the line's terminator returned. Codes pass
through unchanged: masking card numbers is the pipeline's job.

States and counters:

- ``ok`` after a good scan (or when the port opens); ``error`` after a rejected line,
  until the next good scan, with the reason as the last error (never the line's bytes:
  a rejected line may hold a card number). Each rejection counts ``rejected_<reason>``
  and ``rejected``.
- ``stale`` when ``stale_s`` is set and no byte came for that long (a scanner that
  sends a heartbeat or scans all day); without ``stale_s`` silence is normal.
- ``disconnected`` when the port cannot be opened or fails under a read (unplugged
  adapter: ``SerialException``). The driver polls for the path again with a backoff
  (0.1 s doubling to 2 s), counts ``disconnects``, ``open_failures`` and, when the port
  is back, ``reconnects``. A line cut by the disconnect is dropped (``rejected_partial``).
- An event the pipeline refuses (``JournalFull``) is counted by ``Driver.emit`` and lost;
  reading goes on.

The driver never writes to the scanner (no configuration commands, no good-read beep).
Not modelled: HID keyboard-wedge scanners, modem lines, per-symbology length rules and
check digits (the ledger side knows products; the driver only frames).
"""

from __future__ import annotations

import logging
from typing import Any

import serial

from midshift.firmware.core import scan_line, scan_line_config
from midshift.firmware.core.scan_line import ScanLine
from midshift.firmware.edges.driver import Clock, Driver, Emit
from midshift.firmware.edges.serial_port import READ_SLICE_S, SerialLink, port_field, stale_field

log = logging.getLogger(__name__)


class BarcodeScannerDriver(Driver):
    kind = "scanner"

    def __init__(self, name: str, cfg: dict[str, Any], emit: Emit, clock: Clock) -> None:
        super().__init__(name, cfg, emit, clock)
        self.framer = scan_line_config.framer_for(cfg)
        slice_s = min(READ_SLICE_S, cfg["inter_char_timeout_ms"] / 2000)
        self.link = SerialLink(self, cfg["port"], cfg["baudrate"], slice_s)
        self._stale_ms = int(cfg["stale_s"] * 1000) if cfg["stale_s"] is not None else None

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        """The ``[devices.NAME]`` table of a scanner, normalized; ``ConfigError`` if wrong:
        the core's check (``scan_line_config.check_config``) with a pyserial port and ``stale_s``."""
        cfg: dict[str, Any] = scan_line_config.check_config(table, path, port_field, ("stale_s",))
        cfg["stale_s"] = stale_field(table, path, None)
        return cfg

    # -- loop ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            port = self.link.open()
            if port is None:
                continue
            self.set_state("ok")
            try:
                self._read_port(port)
            finally:
                for line in self.framer.reset():  # a line cut by the disconnect or stop
                    self._handle(line, 0)
                self.link.close()

    def _interrupt(self) -> None:
        self.link.interrupt()

    def _read_port(self, port: serial.SerialBase) -> None:
        last_byte_ms = self.clock.monotonic_ms()
        while not self._stopping.is_set():
            try:
                data = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                if not self._stopping.is_set():
                    self.link.lost(exc)
                return
            mono = self.clock.monotonic_ms()
            if data:
                wall = self.clock.now_ms()  # when the terminator (if any) was received
                last_byte_ms = mono
                self.status.count("bytes", len(data))
                if self.status.state == "stale":
                    self.set_state("ok")
                for line in self.framer.feed(data, mono):
                    self._handle(line, wall)
            else:
                for line in self.framer.expire(mono):
                    self._handle(line, 0)
                if self._stale_ms is not None and mono - last_byte_ms > self._stale_ms \
                        and self.status.state == "ok":
                    self.set_state("stale", f"no data for {self._stale_ms / 1000:.1f} s")

    def _handle(self, line: ScanLine, read_ms: int) -> None:
        event = scan_line.take(line, self.name, read_ms, self.status.count)
        if event is not None:
            self.set_state("ok")
            self.emit(event)
            return
        text = scan_line.rejection_text(line)
        log.warning("%s: %s", self.name, text)
        state = self.status.state if self.status.state == "disconnected" else "error"
        self.set_state(state, text)


TYPE = "scanner"
DEFAULT_CLASS = scan_line_config.DEFAULT_CLASS
DRIVER = BarcodeScannerDriver
