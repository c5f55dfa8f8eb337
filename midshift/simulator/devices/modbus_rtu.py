"""Modbus RTU units on one emulated RS-485 line: pymodbus's serial server on a pty, with
faults. A shared part of the ``modbus`` device type, not a type itself.

Each unit is a ``ModbusPLC`` (``midshift/simulator/devices/modbus.py``: its register map,
behaviours, ground truth and controls) that is never started on TCP; this line serves
them all with one ``ModbusSerialServer`` (unit ids as the server context's devices,
``ignore_missing_devices`` so a request to another id gets no answer, as on a real
line). The server opens one pty; the client opens a second (``link_path``, a stable
symlink, ``pty_port.PtyPort``); a relay thread pair moves the bytes between them and
holds each chunk for its wire time at the line's baud rate (start bit, 8 data bits,
parity, stop bits), since a pty alone moves bytes at memory speed.

Faults, per unit, switchable while serving, each logged in that unit's ground truth as
kind ``fault`` with ``expect: false``:

- ``corrupt_crc(unit, every)``: every ``every``-th answer of the unit goes out with its
  last CRC byte flipped (0 stops it); its values are not logged as served (they never
  reached the client);
- ``silence(unit, on)``: the unit reads requests and answers none (its ``ModbusPLC.silence``);
- ``slow(unit, delay_ms)``: the unit answers each request ``delay_ms`` late. The line is
  one wire: while a slow unit dawdles nobody else is answered (a real line's master
  would be waiting for it too).

Parity: a Linux pty drops the PARENB flag, and pyserial's next reconfiguration of such a
port fails with EINVAL, so both ends of this line open their ptys without parity (the
client configured with ``parity = "N"``, two stop bits as the spec wants then); the
``parity`` given here only lengthens the modelled character.

Not modelled: line noise outside answers, collisions, the master's own requests being
corrupted, RS-485 turnaround and echo, character timing inside a frame (a chunk is
delayed as a whole), broadcast (unit 0). An answer later than the client's timeout is
still logged as served, though the client has given up on it: keep ``slow`` delays
under the client's ``timeout_s`` where the ground truth is compared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import time
import tty
from pathlib import Path
from typing import Any

from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer

from midshift.simulator.devices.modbus import ModbusPLC, _PlcDevice
from midshift.simulator.devices.pty_port import PtyPort

log = logging.getLogger(__name__)

PARITY_BITS = {"N": 0, "E": 1, "O": 1}


def char_time_s(baudrate: int, parity: str, stop_bits: int) -> float:
    """The wire time of one character: start bit, 8 data bits, parity, stop bits."""
    return (1 + 8 + PARITY_BITS[parity] + stop_bits) / baudrate


class _Unit(_PlcDevice):
    """One unit id: answers from its ``ModbusPLC``, late if slowed, marked if corrupted."""

    def __init__(self, plc: ModbusPLC, line: RtuLinePLC) -> None:
        super().__init__(plc)
        self.line = line
        self.answers = 0

    async def async_getValues(self, func_code: int, address: int, count: int = 1) -> Any:
        unit = self.plc.unit_id
        delay_s = self.line.delays_ms.get(unit, 0) / 1000
        if delay_s:
            await asyncio.sleep(delay_s)
        self.answers += 1
        every = self.line.crc_every.get(unit, 0)
        corrupt = bool(every) and self.answers % every == 0
        if corrupt:
            self.line._corrupt_next = True
        return self.plc._serve(self.decode(func_code), address, count, delivered=not corrupt)


class _LineContext(ModbusServerContext):
    """The units by id; a silenced unit is missing, so pymodbus answers nothing."""

    def __init__(self, line: RtuLinePLC) -> None:
        super().__init__(devices={u: _Unit(p, line) for u, p in line.units.items()},
                         single=False)
        self.line = line

    def __getitem__(self, device_id: int) -> Any:
        plc = self.line.units.get(device_id)
        if plc is None or plc._silent:
            self.line.ignored += 1
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return super().__getitem__(device_id)


class RtuLinePLC:
    """Units on one emulated RS-485 line; see the module docstring."""

    kind = "modbus"

    def __init__(self, name: str, link_path: str | Path, units: list[ModbusPLC],
                 baudrate: int = 19200, parity: str = "E", stop_bits: int = 1,
                 pace: bool = True) -> None:
        if parity not in PARITY_BITS:
            raise ValueError(f"{name}.parity: {parity!r} is not one of N, E, O")
        ids = [u.unit_id for u in units]
        if not units or len(set(ids)) != len(ids) or 0 in ids:
            raise ValueError(f"{name}: unit ids {ids} are not distinct ids from 1 to 247")
        self.name = name
        self.units = {u.unit_id: u for u in units}
        self.baudrate, self.parity, self.stop_bits = baudrate, parity, stop_bits
        self.char_s = char_time_s(baudrate, parity, stop_bits) if pace else 0.0
        self.port = PtyPort(link_path)
        self.crc_every: dict[int, int] = {}
        self.delays_ms: dict[int, int] = {}
        self.corrupted = 0  # answers sent with a bad CRC
        self.ignored = 0  # requests nobody answered (silenced or unknown unit)
        self._corrupt_next = False
        self._server_fds: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusSerialServer | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def link_path(self) -> Path:
        return self.port.link_path

    def absorb(self, other: RtuLinePLC) -> RtuLinePLC:
        """Take ``other``'s units (built from another table naming the same port, not
        started): one line, one server, as the agent's devices share one port."""
        settings = (self.baudrate, self.parity, self.stop_bits)
        if (other.baudrate, other.parity, other.stop_bits) != settings:
            raise ValueError(f"devices.{other.name}: {other.link_path} is devices.{self.name}'s "
                             f"line at {settings}, not {(other.baudrate, other.parity, other.stop_bits)}")
        for unit, plc in other.units.items():
            if unit in self.units:
                raise ValueError(f"devices.{other.name}.unit_id: {unit} is also "
                                 f"devices.{self.units[unit].name}'s on {self.link_path}")
            self.units[unit] = plc
        return self

    # ---- life ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> RtuLinePLC:
        """Open both ptys, serve, relay; returns once the server has its port open."""
        if self._threads:
            raise RuntimeError(f"RTU line {self.name}: already serving")
        self._stopping.clear()
        self._ready.clear()
        master, slave = os.openpty()
        tty.setraw(slave)  # held open, so the relay's master never sees a hang-up
        self._server_fds = (master, slave)
        self.port.open()
        for plc in self.units.values():
            plc._stopping.clear()
        for target, label in ((self._serve, "server"), (self._to_server, "to-server"),
                              (self._to_client, "to-client")):
            t = threading.Thread(target=target, name=f"rtu-{self.name}-{label}", daemon=True)
            t.start()
            self._threads.append(t)
        if not self._ready.wait(timeout_s) or self._start_error is not None:
            error = self._start_error
            self.stop()
            raise RuntimeError(f"RTU line {self.name}: cannot serve: {error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving, close both ptys (the client's port hangs up). Safe to call twice."""
        self._stopping.set()
        for plc in self.units.values():
            plc._stopping.set()
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(timeout_s)
            except Exception:  # noqa: BLE001 - stopping anyway
                log.debug("RTU line %s: shutdown", self.name, exc_info=True)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        self.port.interrupt()
        for t in self._threads:
            t.join(timeout_s)
        self._threads = []
        self.port.close()
        if self._server_fds is not None:
            for fd in self._server_fds:
                os.close(fd)
            self._server_fds = None
        self._loop = self._server = None

    def close(self) -> None:
        self.stop()
        for plc in self.units.values():
            plc.ground_truth.close()

    def __enter__(self) -> RtuLinePLC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        assert self._server_fds is not None
        path = os.ttyname(self._server_fds[1])

        async def main() -> None:
            try:
                self._server = ModbusSerialServer(
                    _LineContext(self), framer=FramerType.RTU, port=path,
                    baudrate=self.baudrate, parity="N", stopbits=self.stop_bits,
                    ignore_missing_devices=True, trace_packet=self._trace)
                await self._server.serve_forever(background=True)
            except Exception as exc:  # noqa: BLE001 - reported by start()
                self._start_error = exc
                self._ready.set()
                return
            self._ready.set()
            await asyncio.gather(*(plc._tick() for plc in self.units.values()))

        loop.create_task(main())
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """The server's frames on their way out: the one marked for corruption loses its CRC."""
        if sending and self._corrupt_next and data:
            self._corrupt_next = False
            self.corrupted += 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def _wire_delay(self, n: int) -> None:
        if self.char_s:
            time.sleep(n * self.char_s)

    def _to_server(self) -> None:
        """Requests: the client's pty to the server's."""
        while not self._stopping.is_set():
            data = self.port.read(4096, timeout_s=0.1)
            fds = self._server_fds
            if data and fds is not None:
                self._wire_delay(len(data))
                try:
                    os.write(fds[0], data)
                except OSError:
                    return

    def _to_client(self) -> None:
        """Answers: the server's pty to the client's."""
        while not self._stopping.is_set():
            fds = self._server_fds
            if fds is None:
                return
            try:
                ready, _, _ = select.select([fds[0]], [], [], 0.1)
                data = os.read(fds[0], 4096) if ready else b""
            except OSError:
                return
            if data:
                self._wire_delay(len(data))
                self.port.write(data)

    # ---- faults -----------------------------------------------------------------------------

    def _unit(self, unit: int) -> ModbusPLC:
        if unit not in self.units:
            raise KeyError(f"RTU line {self.name} has no unit {unit}")
        return self.units[unit]

    def corrupt_crc(self, unit: int, every: int = 1) -> None:
        """Flip the CRC of every ``every``-th answer of ``unit``; 0 stops."""
        plc = self._unit(unit)
        self.crc_every[unit] = max(0, int(every))
        plc.ground_truth.record("fault", every, expect=False, fault="crc")

    def silence(self, unit: int, on: bool) -> None:
        self._unit(unit).silence(on)

    def slow(self, unit: int, delay_ms: int) -> None:
        """Answer ``unit``'s requests ``delay_ms`` late (0: on time)."""
        plc = self._unit(unit)
        self.delays_ms[unit] = max(0, int(delay_ms))
        plc.ground_truth.record("fault", delay_ms, expect=False, fault="slow")

    def truth(self, unit: int) -> list[dict[str, Any]]:
        return self._unit(unit).truth()

    def requests(self, unit: int) -> int:
        return self._unit(unit).requests

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "port": str(self.link_path),
                "baudrate": self.baudrate, "parity": self.parity, "stop_bits": self.stop_bits,
                "running": bool(self._threads),
                "units": {u: p.describe() for u, p in self.units.items()}}
