"""One RS-485 line of Modbus RTU units: one serial port, one pymodbus client, one request
at a time, whoever asks.

Several ``[devices.NAME]`` tables of type ``modbus`` naming the same serial ``port`` are
units on one multi-drop line (Modbus over Serial Line v1.02, 2.1: one master, up to 247
slaves). Each device keeps its own driver thread, poll period, state and counters; the
line is shared through ``attach(port, ...)`` (a reference-counted registry keyed by the
port), and every request takes a turn:

- **one request at a time**, first come first served: a ``threading.Lock`` hands itself
  to no waiter in particular, so a unit polling back to back could take the line again and
  again; here every waiting device gets its turn in the order it asked;
- **inter-frame silence**: before a request the line stays quiet for 3.5 character times
  after the previous frame (1.75 ms above 19,200 baud), the spec's 2.5.1.1;
- **CRC errors are told apart from silence**: pymodbus's framer treats a frame with a
  bad CRC as "need more bytes" and waits out the timeout; the line checks each complete
  answer's CRC itself (pymodbus's own ``FramerRTU.check_CRC``) and raises ``CrcError``
  at once, so a noisy unit costs the line one frame, not one timeout;
- **a timeout does not close the port**: the other units on it are fine. The port is
  closed only when it fails (``OSError``: an unplugged adapter) or when its last device
  detaches; the next request opens it again.

When the far end is gone: a unit that does not answer costs the line ``timeout_s`` per
request (the driver backs such a unit off, doubling from 0.2 s to 5 s, so a dead meter
does not starve the live ones); a missing adapter makes every device on the line
``disconnected`` until it is back.

Sharp edges: a unit answering later than its timeout may answer into the next request
to the same unit (the line flushes its input before each request, so only an answer
later than the timeout plus the unit's back-off can); two spellings of one port (a
``/dev/serial/by-id`` link and ``/dev/ttyUSB0``) are two lines to this registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType

from midshift.firmware.core.config_fields import BAUDRATES, field
from midshift.firmware.edges.serial_port import port_field

log = logging.getLogger(__name__)

PARITIES = ("N", "E", "O")
FAST_LINE_BAUD = 19200  # above it the spec fixes the gaps (2.5.1.1)
FAST_LINE_GAP_S = 0.00175


class CrcError(ModbusIOException):
    """An answer arrived whole but its CRC does not match: noise on the line."""


def frame_gap_s(baudrate: int, parity: str, stop_bits: int) -> float:
    """The silence between two frames: 3.5 characters, or 1.75 ms on a fast line."""
    if baudrate > FAST_LINE_BAUD:
        return FAST_LINE_GAP_S
    bits = 1 + 8 + (0 if parity == "N" else 1) + stop_bits
    return 3.5 * bits / baudrate


def line_name(baudrate: int, parity: str, stop_bits: int) -> str:
    """``19200 8E1``: how a serial line's settings are written on a label."""
    return f"{baudrate} 8{parity}{stop_bits}"


def crc_problem(data: bytes, decoder: Any) -> str | None:
    """What is wrong with the CRC of the answer at the start of ``data``, or None when it
    is right or the answer is not complete yet (the framer waits for more)."""
    if len(data) < 4:
        return None
    try:
        pdu_class = decoder.lookupPduClass(data)
        size = pdu_class.calculateRtuFrameSize(data) if pdu_class else 0
    except Exception:  # noqa: BLE001 - an unknown function code: the framer decides
        return None
    if not size or len(data) < size:
        return None
    crc = int.from_bytes(data[size - 2:size], "big")
    if FramerRTU.check_CRC(data[:size - 2], crc):
        return None
    return f"bad CRC in a {size}-byte answer from unit {data[0]}"


class LineTurns:
    """First come, first served: ``take`` waits for this caller's turn (False if
    ``stopping`` is set first), ``give`` hands the line to the next in line."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._busy = False

    def take(self, stopping: threading.Event) -> bool:
        me = object()
        with self._cond:
            self._queue.append(me)
            while self._queue[0] is not me or self._busy:
                if stopping.is_set():
                    self._queue.remove(me)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.05)
            self._queue.popleft()
            self._busy = True
            return True

    def give(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


class RtuLine:
    """A serial port and its pymodbus client, shared by the units on it."""

    def __init__(self, port: str, baudrate: int, parity: str, stop_bits: int) -> None:
        self.port = port
        self.settings = (baudrate, parity, stop_bits)
        self.name = line_name(baudrate, parity, stop_bits)
        self.gap_s = frame_gap_s(baudrate, parity, stop_bits)
        self.users = 0
        self._turns = LineTurns()
        self._last_end = 0.0
        self._problem: str | None = None
        self.client = ModbusSerialClient(port, framer=FramerType.RTU, baudrate=baudrate,
                                         bytesize=8, parity=parity, stopbits=stop_bits,
                                         timeout=1.0, retries=0, reconnect_delay=0,
                                         trace_packet=self._trace)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hands every frame out and every growing answer buffer in through here."""
        if not sending:
            problem = crc_problem(data, self.client.framer.decoder)
            if problem is not None:
                raise CrcError(problem)
        return data

    @property
    def is_open(self) -> bool:
        return self.client.connected

    def open(self, stopping: threading.Event) -> bool:
        """Open the port in a turn of its own (another unit may be mid-request)."""
        if not self._turns.take(stopping):
            return False
        try:
            return self.client.connected or self.client.connect()
        finally:
            self._turns.give()

    def request(self, stopping: threading.Event, timeout_s: float,
                call: Callable[[ModbusSerialClient], Any]) -> tuple[Any, float]:
        """Run ``call(client)`` in this caller's turn; returns its answer and the seconds
        waited for the line. Raises ``CrcError``, ``ModbusIOException`` (no answer in
        ``timeout_s``) or ``ConnectionException`` (the port cannot be opened or failed)."""
        asked = time.monotonic()
        if not self._turns.take(stopping):
            raise ConnectionException("stopping")
        waited_s = time.monotonic() - asked
        try:
            if not self.client.connected and not self.client.connect():
                raise ConnectionException(f"cannot open {self.port}")
            quiet_s = self._last_end + self.gap_s - time.monotonic()
            if quiet_s > 0:
                time.sleep(quiet_s)
            # One client serves units with different timeouts: pymodbus reads this one
            # field while it waits for an answer.
            self.client.comm_params.timeout_connect = timeout_s
            try:
                return call(self.client), waited_s
            except OSError as exc:  # pyserial's SerialException: the adapter went away
                self.client.close()
                raise ConnectionException(f"{self.port}: {exc}") from None
        finally:
            self._last_end = time.monotonic()
            self._turns.give()

    def close(self) -> None:
        self.client.close()


_lines: dict[str, RtuLine] = {}
_lines_lock = threading.Lock()


def attach(port: str, baudrate: int, parity: str, stop_bits: int) -> RtuLine:
    """The line on ``port``, made on first use; every ``attach`` needs its ``detach``."""
    with _lines_lock:
        line = _lines.get(port)
        if line is None:
            line = _lines[port] = RtuLine(port, baudrate, parity, stop_bits)
        elif line.settings != (baudrate, parity, stop_bits):
            raise ValueError(f"{port} is already a {line.name} line, not "
                             f"{line_name(baudrate, parity, stop_bits)}")
        line.users += 1
        return line


def detach(line: RtuLine) -> None:
    """One device less on ``line``; the last one closes the port."""
    with _lines_lock:
        line.users -= 1
        if line.users <= 0:
            _lines.pop(line.port, None)
            line.close()


def line_config(table: dict[str, Any], path: str) -> dict[str, Any]:
    """The RTU keys of a ``[devices.NAME]`` table whose ``port`` is a serial port, and
    ``multidrop``: the line's settings and the unit's address, by which the site check
    lets several devices share the port (and refuses two with one address)."""
    cfg = {
        "port": port_field(table, path),
        "unit_id": field(table, "unit_id", path, int, default=1,
                         check=lambda v: 1 <= v <= 247,
                         allowed="1 to 247 (0 is broadcast, which no unit answers)"),
        "baudrate": field(table, "baudrate", path, int, default=19200, choices=BAUDRATES),
        # Modbus over Serial Line v1.02, 2.5.1: even parity is the default a device must
        # support; without parity, two stop bits keep the character 11 bits long.
        "parity": field(table, "parity", path, str, default="E", choices=PARITIES),
        "stop_bits": field(table, "stop_bits", path, int, default=1, choices=(1, 2)),
    }
    cfg["multidrop"] = {"line": line_name(cfg["baudrate"], cfg["parity"], cfg["stop_bits"]),
                        "address": cfg["unit_id"], "address_key": "unit_id"}
    return cfg
