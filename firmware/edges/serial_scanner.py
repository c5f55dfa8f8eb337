"""Serial barcode scanner driver: lines from a pyserial port become ``scan`` events.

The port is any pyserial URL or path (``serial_for_url``): ``/dev/serial/by-id/...``, a
pty's stable link in the simulator, ``socket://127.0.0.1:4001`` for a scanner behind a
serial server. Framing and validation are the core's ``ScanLineFramer`` (see
``firmware/core/scan_line.py`` for every rejection reason and the charset names); this
module reads bytes, stamps times, counts and emits.

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

from firmware.core.config_fields import field, no_unknown_keys
from firmware.core.errors import ConfigError
from firmware.core.event import Event
from firmware.core.scan_line import (
    NAMED_CHARSETS,
    TERMINATORS,
    ScanLine,
    ScanLineFramer,
    charset_table,
)
from firmware.edges.driver import Clock, Driver, Emit
from firmware.edges.serial_port import (
    READ_SLICE_S,
    SerialLink,
    baudrate_field,
    port_field,
    stale_field,
)

log = logging.getLogger(__name__)

SCANNER_KEYS = ("port", "baudrate", "terminator", "prefix", "suffix", "min_length",
                "max_length", "charset", "aim_id", "inter_char_timeout_ms", "stale_s")


def _latin1_field(table: dict[str, Any], key: str, path: str) -> str:
    text = field(table, key, path, str, default="")
    if len(text) > 16 or any(ord(c) > 0xFF for c in text):
        raise ConfigError(f"{path}.{key}", f"{text!r} is not at most 16 8-bit characters",
                          'e.g. "\\u0002" for STX')
    return text


class BarcodeScannerDriver(Driver):
    kind = "scanner"

    def __init__(self, name: str, cfg: dict[str, Any], emit: Emit, clock: Clock) -> None:
        super().__init__(name, cfg, emit, clock)
        self.framer = ScanLineFramer(
            terminator=TERMINATORS[cfg["terminator"]],
            prefix=cfg["prefix"].encode("latin-1"), suffix=cfg["suffix"].encode("latin-1"),
            min_length=cfg["min_length"], max_length=cfg["max_length"], charset=cfg["charset"],
            aim_id=cfg["aim_id"], inter_char_timeout_ms=cfg["inter_char_timeout_ms"])
        slice_s = min(READ_SLICE_S, cfg["inter_char_timeout_ms"] / 2000)
        self.link = SerialLink(self, cfg["port"], cfg["baudrate"], slice_s)
        self._stale_ms = int(cfg["stale_s"] * 1000) if cfg["stale_s"] is not None else None

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        """The ``[devices.NAME]`` table of a scanner, normalized; ``ConfigError`` if wrong.

        ``charset``: one of ``digits``, ``alphanumeric``, ``ascii_printable`` (default),
        ``gs1``, or ``chars:`` followed by the allowed characters."""
        no_unknown_keys(table, path, SCANNER_KEYS)
        cfg: dict[str, Any] = {
            "port": port_field(table, path),
            "baudrate": baudrate_field(table, path),
            "terminator": field(table, "terminator", path, str, default="CR",
                                choices=tuple(TERMINATORS)),
            "prefix": _latin1_field(table, "prefix", path),
            "suffix": _latin1_field(table, "suffix", path),
            "min_length": field(table, "min_length", path, int, default=1,
                                check=lambda v: 1 <= v <= 4096, allowed="1 to 4096"),
            "max_length": field(table, "max_length", path, int, default=64,
                                check=lambda v: 1 <= v <= 4096, allowed="1 to 4096"),
            "charset": field(table, "charset", path, str, default="ascii_printable",
                             allowed=", ".join(NAMED_CHARSETS) + ", or chars:<characters>"),
            "aim_id": field(table, "aim_id", path, bool, default=False),
            "inter_char_timeout_ms": field(table, "inter_char_timeout_ms", path, int,
                                           default=200, check=lambda v: 1 <= v <= 60000,
                                           allowed="1 to 60000 ms"),
            "stale_s": stale_field(table, path, None),
        }
        if cfg["min_length"] > cfg["max_length"]:
            raise ConfigError(path + ".min_length", (
                f"{cfg['min_length']} is above max_length {cfg['max_length']}"), "at most max_length")
        try:
            charset_table(cfg["charset"])
        except ValueError as exc:
            raise ConfigError(path + ".charset", str(exc), ", ".join(NAMED_CHARSETS)
                              + ", or chars:<7-bit characters>") from None
        term = TERMINATORS[cfg["terminator"]].decode()
        for key in ("prefix", "suffix"):
            if term in cfg[key]:
                raise ConfigError(f"{path}.{key}", (
                    f"{cfg[key]!r} contains the terminator {cfg['terminator']}"), "characters other than the terminator")
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
        if line.ok:
            self.status.count("scans")
            self.set_state("ok")
            self.emit(Event(source=self.name, kind="scan", read_ms=read_ms,
                            data={"code": line.code, "symbology": line.symbology}))
            return
        self.status.count("rejected")
        self.status.count("rejected_" + str(line.reason))
        log.warning("%s: line rejected: %s (%d bytes)", self.name, line.reason, line.length)
        state = self.status.state if self.status.state == "disconnected" else "error"
        self.set_state(state, f"line rejected: {line.reason} ({line.length} bytes)")
