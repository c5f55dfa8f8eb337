"""Device type ``scale``: an MT-SICS scale on a pyserial port; weights become ``weight`` events.

Exports ``TYPE``, ``DEFAULT_CLASS`` and ``DRIVER``, as every ``midshift/firmware/edges/<type>.py``.

Two modes:

- ``poll`` (default): send ``poll_command`` (``SI``: one reading now, stable or not;
  ``S``: the scale waits for a stable reading itself, up to its own timeout, so
  ``timeout_ms`` must cover that) every ``poll_ms``; a request without a reply in
  ``timeout_ms`` counts ``timeouts``.
- ``listen``: the scale streams (``SIR``, sent on every open, or its own continuous
  setting) and the driver reads.

Replies, requests by the clock, the states replies imply and the event rule below are
the core's ``ScaleSession`` (``midshift/firmware/core/mtsics.py``), shared with the MicroPython
node; this module moves bytes, stamps times and handles staleness and re-opening.

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
  ``serial_port.SerialLink``.
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

from midshift.firmware.core import mtsics, mtsics_config
from midshift.firmware.core.event import Event
from midshift.firmware.edges.driver import Clock, Driver, Emit
from midshift.firmware.edges.serial_port import READ_SLICE_S, SerialLink, port_field

log = logging.getLogger(__name__)


class ScaleDriver(Driver):
    kind = "scale"

    def __init__(self, name: str, cfg: dict[str, Any], emit: Emit, clock: Clock) -> None:
        super().__init__(name, cfg, emit, clock)
        # The session outlives a re-opened port: an item still on the pan is not new.
        self.session = mtsics.ScaleSession(name, cfg, self.status.count)
        # Short enough reads that a poll goes out within a quarter of poll_ms of its time.
        slice_s = max(0.005, min(READ_SLICE_S, cfg["poll_ms"] / 4000))
        self.link = SerialLink(self, cfg["port"], cfg["baudrate"], slice_s)
        self._stale_ms = int(cfg["stale_s"] * 1000)

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        """The ``[devices.NAME]`` table of a scale, normalized; ``ConfigError`` if wrong:
        the core's check (``mtsics_config.check_config``) with a pyserial port."""
        return mtsics_config.check_config(table, path, port_field)

    # -- loop ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            port = self.link.open()
            if port is None:
                continue
            try:
                self._talk(port)
            except (serial.SerialException, OSError) as exc:
                if not self._stopping.is_set():
                    self.link.lost(exc)
            finally:
                self.link.close()

    def _interrupt(self) -> None:
        self.link.interrupt()

    def _talk(self, port: serial.SerialBase) -> None:
        """Talk to the scale until the port fails, it goes silent for 2 x stale_s, or stop."""
        mono = self.clock.monotonic_ms
        session = self.session
        opened_ms = mono()
        first = session.opened(opened_ms)
        if first:
            port.write(first)
        while not self._stopping.is_set():
            now = mono()
            request = session.due(now)
            if request:
                port.write(request)
            last = session.last_reply_ms
            silent_ms = now - (last if last is not None else opened_ms)
            if silent_ms >= 2 * self._stale_ms:
                self.status.count("no_answer")
                self.set_state("disconnected",
                               f"no answer for {silent_ms / 1000:.1f} s: re-opening the port")
                return
            if last is not None and silent_ms >= self._stale_ms:
                self.set_state("stale", f"no answer for {silent_ms / 1000:.1f} s")
            data = port.read(port.in_waiting or 1)
            if not data:
                continue
            wall = self.clock.now_ms()
            for item in session.feed(data, mono(), wall):
                if isinstance(item, Event):
                    self.emit(item)
                else:
                    self.set_state(item.state, item.error)


TYPE = "scale"
DEFAULT_CLASS = mtsics_config.DEFAULT_CLASS
DRIVER = ScaleDriver
