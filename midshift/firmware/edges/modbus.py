"""Device type ``modbus``: a PLC or meter whose register map is polled (pymodbus), over
Modbus TCP or, when ``port`` names a serial port, Modbus RTU.

Each poll's changes become ``register`` events. Exports ``TYPE``, ``DEFAULT_CLASS`` and
``DRIVER``, as every ``midshift/firmware/edges/<type>.py``. The register map, its decoding and its
block reads are ``modbus_registers.py``'s, the same for both wires.

Config (``[devices.NAME]``, type ``modbus``):

- Modbus TCP: ``host`` (required), ``port`` (502), ``unit_id`` (1, 0 to 247);
- Modbus RTU: ``port`` a serial port (a path, a ``[serial]`` name or a pyserial URL),
  ``unit_id`` (1, 1 to 247), ``baudrate`` (19200), ``parity`` (``E``; ``N``, ``O``),
  ``stop_bits`` (1 or 2). Devices naming the same port are units on one RS-485 line:
  one serial client, one request at a time (``modbus_rtu.py``); their line settings must
  agree and their unit ids differ (the site check says so);
- ``poll_ms`` (500): one poll of the whole map per period;
- ``timeout_s`` (1.0): how long one request may wait for its answer;
- ``stale_s`` (5.0): no answer at all for this long makes the device ``stale``;
- ``registers``, a list of tables: ``tag`` (unique), ``table`` (holding|input|coil,
  default holding), ``address`` (0-based, required), ``type`` (int16|uint16|int32|uint32|
  float32, default uint16; coils are bool), ``word_order`` (big: high word first, the
  Modbus convention; little: low word first), ``scale`` (1.0, multiplies the raw value),
  ``deadband`` (0: every change; else a change must exceed it).

Each poll reads adjacent registers of one table with one request (at most 125 registers
or 2,000 coils, the PDU limits); a value is emitted when it is first read and then when
it moves by more than its deadband from the last value emitted. Event: kind
``register``, data ``{"tag", "value", "address", "table"}``, ``read_ms`` the wall time the
answer arrived. A float32 is emitted as the shortest decimal that reads back as the same
float32 (21.5, not 21.500000953674316), the same rule the simulator's ground truth uses.

Failures, as a PLC's far end goes wrong:

- exception reply: state ``error``, last error names the code (``Modbus exception 2
  (illegal data address)``), counters ``modbus_exceptions`` and ``modbus_exception_<code>``;
  nothing is emitted for that block;
- no answer within ``timeout_s``: counter ``timeouts``, the connection is closed (a late
  answer would be taken for the next request's) and opened again; after ``stale_s``
  without any answer the state is ``stale``;
- connection refused or lost: ``disconnected``, reconnect with a backoff (0.2 s doubling
  to 5 s), counters ``disconnects``, ``connect_failures`` and ``reconnects``;
- an answer with more or fewer values than asked for: counter ``wrong_count_answers``,
  state ``error``, nothing is emitted for that block (which value is which is unknown);
- anything else raised while polling (a library surprise): counter ``poll_failures``,
  state ``error``, the connection is renewed.

- RTU only: an answer whose CRC is wrong: counter ``crc_errors``, state ``error`` (the unit
  is there; the line is noisy), nothing is emitted for that block; a unit that does not
  answer (``timeouts``) waits a back-off (0.2 s doubling to 5 s) before it is asked
  again, so the line's other units keep their turns; ``line_wait_ms`` counts the time
  this unit waited for the line (a slow neighbour shows there). A timeout never closes
  the shared port; a failing port makes every unit on it ``disconnected``.

None of them ends the polling loop; when the PLC answers again polling resumes by itself.
A value that was not read again is never emitted again: a PLC that stops answering is
marked stale, not repeated. A value the pipeline refuses (journal full, counted by the
base class) is not taken as emitted, so the next read of it, with its own time, is
offered again.

Not modelled: writes to the PLC, discrete inputs, Modbus ASCII, broadcast (unit 0 on a
line), per-register poll periods, strings and 64-bit types.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from midshift.firmware.core.config_fields import field, no_unknown_keys, positive
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.event import Event
from midshift.firmware.edges import modbus_rtu
from midshift.firmware.edges.driver import Driver
from midshift.firmware.edges.modbus_registers import (  # noqa: F401 - their home before the split
    TYPES,
    Block,
    answer_size_problem,
    decode_words,
    float32_value,
    plan_blocks,
    register_config,
)

log = logging.getLogger(__name__)

POLL_KEYS = ("poll_ms", "timeout_s", "stale_s", "registers")
DEVICE_KEYS = ("host", "port", "unit_id", *POLL_KEYS)
RTU_DEVICE_KEYS = ("port", "unit_id", "baudrate", "parity", "stop_bits", *POLL_KEYS)
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
# Modbus Application Protocol Specification v1.1b3, section 7.
EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "server device failure", 5: "acknowledge", 6: "server device busy",
                   8: "memory parity error", 10: "gateway path unavailable",
                   11: "gateway target device failed to respond"}


class ModbusDriver(Driver):
    kind = "modbus"

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        port = table.get("port")
        if isinstance(port, str) and port.strip().isdigit():
            raise ConfigError(path + ".port", f"{port!r} is a number in quotes",
                              "a TCP port number without quotes (Modbus TCP), or a serial "
                              "port path or URL (Modbus RTU)")
        if isinstance(port, str):  # a serial port: Modbus RTU
            if "host" in table:
                raise ConfigError(path + ".host", "is set with a serial port",
                                  "host and a TCP port number (Modbus TCP), or a serial port "
                                  "without host (Modbus RTU)")
            no_unknown_keys(table, path, RTU_DEVICE_KEYS)
            cfg = modbus_rtu.line_config(table, path)
        else:
            no_unknown_keys(table, path, DEVICE_KEYS)
            cfg = {
                "host": field(table, "host", path, str, check=lambda v: bool(v.strip()),
                              allowed="a host name or address"),
                "port": field(table, "port", path, int, default=502,
                              check=lambda v: 0 < v < 65536, allowed="1 to 65535"),
                "unit_id": field(table, "unit_id", path, int, default=1,
                                 check=lambda v: 0 <= v <= 247, allowed="0 to 247"),
            }
        cfg |= {
            "poll_ms": field(table, "poll_ms", path, int, default=500,
                             check=lambda v: 10 <= v <= 3_600_000, allowed="10 to 3600000"),
            "timeout_s": field(table, "timeout_s", path, float, default=1.0,
                               check=lambda v: positive(v) and v <= 60, allowed="above 0, up to 60"),
            "stale_s": field(table, "stale_s", path, float, default=5.0, check=positive,
                             allowed="above 0"),
        }
        regs = field(table, "registers", path, list, allowed="a list of [[registers]] tables")
        if not regs:
            raise ConfigError(path + ".registers", "is empty", "at least one register")
        tags: set[str] = set()
        cfg["registers"] = []
        for i, r in enumerate(regs):
            reg = register_config(r, f"{path}.registers[{i}]", tags)
            tags.add(reg["tag"])
            cfg["registers"].append(reg)
        return cfg

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks = plan_blocks(self.cfg["registers"])
        self._client: ModbusTcpClient | None = None
        self.rtu = isinstance(self.cfg["port"], str)
        self._line: modbus_rtu.RtuLine | None = None
        self._unit_backoff_s = 0.0  # RTU: a unit that did not answer waits this long
        self._last: dict[str, Any] = {}  # tag -> last value emitted (accepted downstream)
        self._last_answer_ms = self.clock.monotonic_ms()
        self._ever_connected = False
        self._link_up = False  # connected since the last refusal or loss (timeouts aside)

    def _interrupt(self) -> None:
        """Wake a read waiting in select(): closing the socket from this thread does not,
        shutting it down does (the read sees end of stream)."""
        client = self._client
        sock = client.socket if client is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected any more: nothing is waiting on it

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        poll_s = self.cfg["poll_ms"] / 1000
        while not self._stopping.is_set():
            if not self._connected():
                if not self._connect():
                    self._check_stale()
                    if self.wait(backoff):
                        break
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = BACKOFF_FIRST_S
            started = self.clock.monotonic_ms()
            try:
                self._poll()
            except Exception as exc:  # noqa: BLE001 - the poller outlives any one bad poll
                if self._stopping.is_set():
                    break
                # The traceback once, when the state changes; a repeat is a counter.
                log.log(logging.ERROR if self.status.state != "error" else logging.DEBUG,
                        "%s: poll failed", self.name, exc_info=True)
                self.status.count("poll_failures")
                self.set_state("error", f"poll failed: {exc!r}")
                self._close()
            self._check_stale()
            left = poll_s - (self.clock.monotonic_ms() - started) / 1000
            if self.wait(max(0.0, left, self._unit_backoff_s)):
                break
        self._close()
        if self._line is not None:
            modbus_rtu.detach(self._line)
            self._line = None

    def _close(self) -> None:
        """TCP: the connection goes. RTU: nothing; the port is the line's, and its other
        units still use it (it is closed when it fails or its last device detaches)."""
        if self._client is not None:
            self._client.close()

    def _connected(self) -> bool:
        if self.rtu:
            return self._line is not None and self._line.is_open
        return self._client is not None and self._client.connected

    def _connect(self) -> bool:
        if self.rtu:
            return self._open_line()
        self._close()
        self._client = ModbusTcpClient(self.cfg["host"], port=self.cfg["port"],
                                       timeout=self.cfg["timeout_s"], retries=0,
                                       reconnect_delay=0)
        if self._client.connect():
            if self._ever_connected:
                self.status.count("reconnects")
            self._ever_connected = True
            self._link_up = True
            self.status.count("connects")
            return True
        self._link_up = False
        self.status.count("connect_failures")
        self.set_state("disconnected", f"cannot connect to {self.cfg['host']}:{self.cfg['port']}")
        return False

    def _open_line(self) -> bool:
        """RTU: join the line on the port (shared with the other units named on it)."""
        c = self.cfg
        if self._line is None:
            self._line = modbus_rtu.attach(c["port"], c["baudrate"], c["parity"],
                                           c["stop_bits"])
        if self._line.open(self._stopping):
            if self._ever_connected and not self._link_up:
                self.status.count("reconnects")
            if not self._link_up:
                self.status.count("connects")
            self._ever_connected = self._link_up = True
            return True
        self._link_up = False
        self.status.count("connect_failures")
        self.set_state("disconnected", f"cannot open {c['port']} ({self._line.name})")
        return False

    def _poll(self) -> None:
        """Read every block once; the state follows the worst answer of this poll."""
        errors = []
        for block in self.blocks:
            if self._stopping.is_set():
                return
            try:
                rr = self._read(block)
            except modbus_rtu.CrcError as exc:
                # The unit answered, through noise: alive (not stale), but nothing usable.
                self._last_answer_ms = self.clock.monotonic_ms()
                self.status.count("crc_errors")
                errors.append(f"{exc} reading {block.table} {block.address}.."
                              f"{block.address + block.count - 1}")
                continue
            except (ModbusException, OSError) as exc:
                if self._stopping.is_set():
                    return  # our own stop() shut the socket: not the PLC's doing
                if isinstance(exc, ConnectionException | OSError) or not self._connected():
                    self.status.count("disconnects")
                    self._link_up = False
                    self.set_state("disconnected", f"connection lost: {exc}")
                    self._close()
                    return
                # No answer in time. TCP: a late answer would come with an old transaction
                # id and be taken for the next request's: start again on a fresh
                # connection. RTU: the line is the other units' too; this unit waits a
                # back-off before it asks again, so a dead unit does not starve them.
                self.status.count("timeouts")
                log.debug("%s: no answer reading %r: %s", self.name, block, exc)
                if self.rtu:
                    self._unit_backoff_s = min(max(self._unit_backoff_s * 2, BACKOFF_FIRST_S),
                                               BACKOFF_MAX_S)
                self._close()
                return
            self._unit_backoff_s = 0.0
            read_ms = self.clock.now_ms()
            self._last_answer_ms = self.clock.monotonic_ms()
            if rr.isError():
                code = getattr(rr, "exception_code", None)
                self.status.count("modbus_exceptions")
                self.status.count(f"modbus_exception_{code}")
                errors.append(f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
                              f" reading {block.table} {block.address}.."
                              f"{block.address + block.count - 1}")
                continue
            values = rr.bits if block.table == "coil" else rr.registers
            wrong = answer_size_problem(block, len(values))
            if wrong:
                self.status.count("wrong_count_answers")
                errors.append(wrong)
                continue
            changed: list[tuple[dict[str, Any], Any]] = []
            for r in block.regs:
                off = r["address"] - block.address
                raw = [int(v) for v in values[off:off + TYPES[r["type"]][1]]]
                value = decode_words(raw, r["type"], r["word_order"])
                if r["scale"] != 1.0 and not isinstance(value, bool):
                    value = round(value * r["scale"], 9)
                if self._changed(r, value):
                    changed.append((r, value))
            # One block's changed values are journaled together: one sync for all.
            accepted = self.emit_many([Event(self.name, "register", read_ms, {
                "tag": r["tag"], "value": value, "address": r["address"],
                "table": r["table"]}) for r, value in changed])
            for (r, value), ok in zip(changed, accepted, strict=True):
                if ok:
                    self._last[r["tag"]] = value
        if errors:
            self.set_state("error", "; ".join(errors))
        else:
            self.set_state("ok")

    def _read(self, block: Block) -> Any:
        unit = self.cfg["unit_id"]
        if self._line is not None:
            rr, waited_s = self._line.request(self._stopping, self.cfg["timeout_s"],
                                              lambda client: read_block(client, block, unit))
            self.status.count("line_wait_ms", int(waited_s * 1000))
            return rr
        client = self._client
        if client is None:
            raise ConnectionException("closed")
        return read_block(client, block, unit)

    def _changed(self, r: dict[str, Any], value: Any) -> bool:
        """First read, or moved by more than the deadband from the last value emitted."""
        if r["tag"] not in self._last:
            return True
        last = self._last[r["tag"]]
        if isinstance(value, bool) or r["deadband"] == 0:
            return value != last
        return abs(value - last) > r["deadband"]

    def _check_stale(self) -> None:
        """Connected, but no answer at all (good or exception) for ``stale_s``: stale. A
        PLC answering with exceptions is in error; one refusing connections, disconnected."""
        quiet_s = (self.clock.monotonic_ms() - self._last_answer_ms) / 1000
        if quiet_s > self.cfg["stale_s"] and self.status.state != "stale" and (
                self._link_up or self.status.state in ("ok", "error")):
            self.set_state("stale", f"no answer for {quiet_s:.1f} s")


def read_block(client: Any, block: Block, unit: int) -> Any:
    """One request for ``block`` to ``unit``, on a TCP or a serial pymodbus client."""
    if block.table == "coil":
        return client.read_coils(block.address, count=block.count, device_id=unit)
    if block.table == "input":
        return client.read_input_registers(block.address, count=block.count, device_id=unit)
    return client.read_holding_registers(block.address, count=block.count, device_id=unit)


TYPE = "modbus"
DEFAULT_CLASS = "telemetry"  # values a PLC reports again: state, not transactions
DRIVER = ModbusDriver
