"""MT-SICS scale driver: weights from a pyserial port become ``weight`` events.

Two modes:

- ``poll`` (default): send ``poll_command`` (``SI``: one reading now, stable or not;
  ``S``: the scale waits for a stable reading itself, up to its own timeout, so
  ``timeout_ms`` must cover that) every ``poll_ms``; a request without a reply in
  ``timeout_ms`` counts ``timeouts``.
- ``listen``: the scale streams (``SIR``, sent on every open, or its own continuous
  setting) and the driver reads.

Replies are parsed by the core's ``firmware/core/mtsics.py``.

Which readings become events, the rule that makes one placed item one event:

- A stable reading (``S S``) is emitted when its shown value or unit differs from the
  previous stable reading (emitted or not), and only if the net weight is above zero: an
  empty pan or a negative net after zeroing weighs nothing. Polling the same settled
  load again and again emits it once; taking it off (a zero reading) and putting it back
  emits it again. The memory survives faults and reconnects (an item still on the pan
  after an overload or an unplugged cable is not a new item), not a driver restart.
  Sharp edge: replacing an item by one of exactly the same shown weight without a
  different stable reading between them (the pan polled while empty) reads as one load.
- ``stable_only = false``: dynamic readings (``S D``) are emitted too, with
  ``"stable": false``, each distinct from the previous dynamic one.

Event: kind ``weight``, data ``{"weight": float, "unit": "g" | "kg" ..., "stable": bool}``,
``read_ms`` = the wall time at which the read that brought the reply returned.

States and counters:

- ``ok`` on a weight (or ``S I``) reply. ``S I`` counts ``not_stable``; ``S D`` counts
  ``dynamic_readings``; a stable reading not emitted counts ``repeated_readings`` or
  ``zero_readings``.
- ``error`` on overload ``S +`` (``overloads``), underload ``S -`` (``underloads``),
  ``ES``/``ET``/``EL``/``S L`` (``errors_es``, ``errors_et``, ``errors_el``,
  ``errors_sl``) and unparsable lines (``rejected_malformed``), until the next weight.
- ``stale`` when a scale that was answering has said nothing for ``stale_s``;
  ``disconnected`` after twice that: the port is closed and re-opened (an adapter that
  wedged), ``SIR`` sent again in listen mode. A scale that never answered since the port
  opened stays ``disconnected``. ``disconnected`` also when the port cannot be opened or
  fails (unplugged, or a write not taken within 1 s): re-opened with a backoff, see
  ``serial_scanner.SerialLink``.
- An event the pipeline refuses (``JournalFull``) is counted by ``Driver.emit`` and lost;
  the reading is not retried (it would be a new read, and is, at the next poll).

Not modelled: tare and zero commands (the driver never changes the scale), units other
than those ``mtsics.UNITS`` knows, MT-SICS level 2/3 replies, weights converted to grams
(the unit travels with the value).
"""

from __future__ import annotations

import logging
from typing import Any

import serial

from firmware.core.config_fields import field, no_unknown_keys
from firmware.core.errors import ConfigError
from firmware.core.event import Event
from firmware.core.mtsics import MtReply, MtSicsReader, command
from firmware.edges.driver import Clock, Driver, Emit
from firmware.edges.serial_port import (
    READ_SLICE_S,
    SerialLink,
    baudrate_field,
    port_field,
    stale_field,
)

log = logging.getLogger(__name__)

SCALE_KEYS = ("port", "baudrate", "mode", "poll_command", "poll_ms", "timeout_ms",
              "stable_only", "stale_s")
ERROR_TEXT = {"ES": "syntax error", "ET": "transmission error", "EL": "logical error",
              "S L": "command not executable with these parameters"}


class ScaleDriver(Driver):
    kind = "scale"

    def __init__(self, name: str, cfg: dict[str, Any], emit: Emit, clock: Clock) -> None:
        super().__init__(name, cfg, emit, clock)
        self.reader = MtSicsReader()
        # Short enough reads that a poll goes out within a quarter of poll_ms of its time.
        slice_s = max(0.005, min(READ_SLICE_S, cfg["poll_ms"] / 4000))
        self.link = SerialLink(self, cfg["port"], cfg["baudrate"], slice_s)
        self._poll = cfg["mode"] == "poll"
        self._request = command(cfg["poll_command"] if self._poll else "SIR")
        self._stale_ms = int(cfg["stale_s"] * 1000)
        self._last_stable: tuple[str | None, str | None] | None = None
        self._last_dynamic: tuple[str | None, str | None] | None = None

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        """The ``[devices.NAME]`` table of a scale, normalized; ``ConfigError`` if wrong."""
        no_unknown_keys(table, path, SCALE_KEYS)
        cfg: dict[str, Any] = {
            "port": port_field(table, path),
            "baudrate": baudrate_field(table, path),
            "mode": field(table, "mode", path, str, default="poll", choices=("poll", "listen")),
            "poll_command": field(table, "poll_command", path, str, default="SI",
                                  choices=("SI", "S")),
            "poll_ms": field(table, "poll_ms", path, int, default=250,
                             check=lambda v: 10 <= v <= 600000, allowed="10 to 600000 ms"),
            "timeout_ms": field(table, "timeout_ms", path, int, default=1000,
                                check=lambda v: 10 <= v <= 600000, allowed="10 to 600000 ms"),
            "stable_only": field(table, "stable_only", path, bool, default=True),
            "stale_s": stale_field(table, path, 5.0),
        }
        if cfg["stale_s"] * 1000 <= cfg["timeout_ms"]:
            raise ConfigError(path + ".stale_s", (
                f"{cfg['stale_s']!r} is not longer than timeout_ms {cfg['timeout_ms']}"), "more than timeout_ms / 1000 seconds")
        return cfg

    # -- loop ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            port = self.link.open()
            if port is None:
                continue
            try:
                self._session(port)
            except (serial.SerialException, OSError) as exc:
                if not self._stopping.is_set():
                    self.link.lost(exc)
            finally:
                self.reader.reset()
                self.link.close()

    def _interrupt(self) -> None:
        self.link.interrupt()

    def _session(self, port: serial.SerialBase) -> None:
        """Talk to the scale until the port fails, it goes silent for 2 x stale_s, or stop."""
        mono = self.clock.monotonic_ms
        opened_ms = mono()
        last_reply_ms: int | None = None
        awaiting_since: int | None = None
        next_poll_ms = opened_ms
        if not self._poll:
            port.write(self._request)
        while not self._stopping.is_set():
            now = mono()
            if self._poll and awaiting_since is None and now >= next_poll_ms:
                port.write(self._request)
                awaiting_since = now
                next_poll_ms = max(next_poll_ms + self.cfg["poll_ms"], now)
            if awaiting_since is not None and now - awaiting_since >= self.cfg["timeout_ms"]:
                self.status.count("timeouts")
                awaiting_since = None
                self.reader.reset()  # a half reply, if any, will not be completed
            silent_ms = now - (last_reply_ms if last_reply_ms is not None else opened_ms)
            if silent_ms >= 2 * self._stale_ms:
                self.status.count("no_answer")
                self.set_state("disconnected", f"no answer for {silent_ms / 1000:.1f} s: re-opening the port")
                return
            if last_reply_ms is not None and silent_ms >= self._stale_ms:
                self.set_state("stale", f"no answer for {silent_ms / 1000:.1f} s")
            data = port.read(port.in_waiting or 1)
            if not data:
                continue
            wall = self.clock.now_ms()
            replies = self.reader.feed(data)
            if replies:
                last_reply_ms = mono()
                awaiting_since = None
            for reply in replies:
                self._handle(reply, wall)

    # -- replies -------------------------------------------------------------------

    def _handle(self, reply: MtReply, read_ms: int) -> None:
        kind = reply.kind
        if kind == "weight":
            self.set_state("ok")
            self._weight(reply, read_ms)
        elif kind == "not_executable":
            self.status.count("not_stable")
            self.set_state("ok")
        elif kind == "overload":
            self.status.count("overloads")
            self.set_state("error", "overload (S +): load above the weighing range")
        elif kind == "underload":
            self.status.count("underloads")
            self.set_state("error", "underload (S -): pan missing or load below zero range")
        elif kind == "error":
            code = str(reply.code)
            self.status.count("errors_" + code.replace(" ", "").lower())
            self.set_state("error", f"scale replied {code} ({ERROR_TEXT.get(code, '')})")
        elif kind == "malformed":
            self.status.count("rejected_malformed")
            self.set_state("error", "malformed reply (wrong baud rate or not MT-SICS?)")
        else:
            self.status.count("other_replies")

    def _weight(self, reply: MtReply, read_ms: int) -> None:
        key = (reply.value_text, reply.unit)
        if reply.stable:
            if key == self._last_stable:
                self.status.count("repeated_readings")
                return
            self._last_stable = key
            if reply.weight is None or reply.weight <= 0:
                self.status.count("zero_readings")
                return
        else:
            self.status.count("dynamic_readings")
            if self.cfg["stable_only"] or key == self._last_dynamic:
                return
            self._last_dynamic = key
        self.emit(Event(source=self.name, kind="weight", read_ms=read_ms,
                        data={"weight": reply.weight, "unit": reply.unit,
                              "stable": reply.stable}))
