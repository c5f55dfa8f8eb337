"""Device type ``modbus``: a Modbus TCP PLC whose register map is polled (pymodbus).

Each poll's changes become ``register`` events. Exports ``TYPE``, ``DEFAULT_CLASS`` and
``DRIVER``, as every ``firmware/edges/<type>.py``.

Config (``[devices.NAME]``, type ``modbus``):

- ``host`` (required), ``port`` (502), ``unit_id`` (1, 0 to 247);
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

None of them ends the polling loop; when the PLC answers again polling resumes by itself.
A value that was not read again is never emitted again: a PLC that stops answering is
marked stale, not repeated. A value the pipeline refuses (journal full, counted by the
base class) is not taken as emitted, so the next read of it, with its own time, is
offered again.

Not modelled: writes to the PLC, discrete inputs, Modbus RTU, per-register poll periods,
strings and 64-bit types.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from firmware.core.config_fields import field, no_unknown_keys, non_negative, positive
from firmware.core.errors import ConfigError
from firmware.core.event import Event
from firmware.edges.driver import Driver

log = logging.getLogger(__name__)

TYPES = {"int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
         "float32": (">f", 2), "bool": (None, 1)}
TABLES = ("holding", "input", "coil")
DEVICE_KEYS = ("host", "port", "unit_id", "poll_ms", "timeout_s", "stale_s", "registers")
REGISTER_KEYS = ("tag", "table", "address", "type", "word_order", "scale", "deadband")
MAX_BLOCK = {"holding": 125, "input": 125, "coil": 2000}  # Modbus spec 6.1, 6.3, 6.4
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
# Modbus Application Protocol Specification v1.1b3, section 7.
EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "server device failure", 5: "acknowledge", 6: "server device busy",
                   8: "memory parity error", 10: "gateway path unavailable",
                   11: "gateway target device failed to respond"}


def float32_value(f32: float) -> float:
    """The shortest decimal that reads back as the same float32 (``f32`` is one)."""
    if not math.isfinite(f32):
        return f32
    bits = struct.pack(">f", f32)
    for digits in range(1, 10):
        text = float(f"{f32:.{digits}g}")
        if struct.pack(">f", text) == bits:
            return text
    return f32


def decode_words(words: list[int], dtype: str, word_order: str) -> float | int | bool:
    fmt, n = TYPES[dtype]
    if fmt is None:
        return bool(words[0])
    ws = words[:n][::-1] if word_order == "little" else words[:n]
    value = struct.unpack(fmt, b"".join(w.to_bytes(2, "big") for w in ws))[0]
    return float32_value(value) if dtype == "float32" else value


class Block:
    """Adjacent registers of one table, read with one request."""

    def __init__(self, table: str, regs: list[dict[str, Any]]) -> None:
        self.table = table
        self.regs = regs
        self.address = regs[0]["address"]
        self.count = max(r["address"] + TYPES[r["type"]][1] for r in regs) - self.address

    def __repr__(self) -> str:
        return f"Block({self.table} {self.address}+{self.count})"


def plan_blocks(registers: list[dict[str, Any]]) -> list[Block]:
    """Group registers that touch or overlap into blocks of at most the PDU limit."""
    blocks = []
    for table in TABLES:
        regs = sorted((r for r in registers if r["table"] == table), key=lambda r: r["address"])
        run: list[dict[str, Any]] = []
        end = 0
        for r in regs:
            r_end = r["address"] + TYPES[r["type"]][1]
            if run and (r["address"] > end or max(end, r_end) - run[0]["address"] > MAX_BLOCK[table]):
                blocks.append(Block(table, run))
                run = []
            end = max(end, r_end) if run else r_end
            run.append(r)
        if run:
            blocks.append(Block(table, run))
    return blocks


def _register(r: Any, rp: str, tags: set[str]) -> dict[str, Any]:
    if not isinstance(r, dict):
        raise ConfigError(rp, f"{r!r} is not a table", "a table with tag, address, type ...")
    no_unknown_keys(r, rp, REGISTER_KEYS)
    reg = {"tag": field(r, "tag", rp, str, check=lambda v: bool(v.strip()), allowed="a name"),
           "table": field(r, "table", rp, str, default="holding", choices=TABLES)}
    if reg["tag"] in tags:
        raise ConfigError(rp + ".tag", f"{reg['tag']!r} is used twice", "a unique tag")
    default_type = "bool" if reg["table"] == "coil" else "uint16"
    reg["type"] = field(r, "type", rp, str, default=default_type, choices=TYPES)
    if (reg["type"] == "bool") != (reg["table"] == "coil"):
        raise ConfigError(rp + ".type", f"{reg['type']!r} does not fit table {reg['table']}",
                          "bool for coils; int16, uint16, int32, uint32 or float32 for "
                          "registers")
    last = 65536 - TYPES[reg["type"]][1]
    reg["address"] = field(r, "address", rp, int, check=lambda v: 0 <= v <= last,
                           allowed=f"0 to {last}")
    reg["word_order"] = field(r, "word_order", rp, str, default="big", choices=("big", "little"))
    reg["scale"] = field(r, "scale", rp, float, default=1.0,
                         check=lambda v: v != 0 and math.isfinite(v),
                         allowed="a finite number other than 0")
    reg["deadband"] = field(r, "deadband", rp, float, default=0.0,
                            check=lambda v: non_negative(v) and math.isfinite(v),
                            allowed="0 or more")
    return reg


def answer_size_problem(block: Block, got: int) -> str | None:
    """What is wrong with an answer of ``got`` values to ``block``'s request, or None.

    Registers come back exactly as many as asked. Coils come packed in whole bytes and
    pymodbus unpacks every byte received, so ``count`` coils read as ``8 * ceil(count / 8)``
    bits (or exactly ``count``, should a library trim the padding).
    """
    where = f"{block.table} {block.address}..{block.address + block.count - 1}"
    if block.table == "coil":
        if got in (block.count, 8 * ((block.count + 7) // 8)):
            return None
        return f"answer of {got} coil bits to a request for {block.count} at {where}"
    if got != block.count:
        return f"answer of {got} registers to a request for {block.count} at {where}"
    return None


class ModbusDriver(Driver):
    kind = "modbus"

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        no_unknown_keys(table, path, DEVICE_KEYS)
        cfg = {
            "host": field(table, "host", path, str, check=lambda v: bool(v.strip()),
                          allowed="a host name or address"),
            "port": field(table, "port", path, int, default=502,
                          check=lambda v: 0 < v < 65536, allowed="1 to 65535"),
            "unit_id": field(table, "unit_id", path, int, default=1,
                             check=lambda v: 0 <= v <= 247, allowed="0 to 247"),
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
            reg = _register(r, f"{path}.registers[{i}]", tags)
            tags.add(reg["tag"])
            cfg["registers"].append(reg)
        return cfg

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks = plan_blocks(self.cfg["registers"])
        self._client: ModbusTcpClient | None = None
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
            if self._client is None or not self._client.connected:
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
            if self.wait(max(0.0, left)):
                break
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _connect(self) -> bool:
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

    def _poll(self) -> None:
        """Read every block once; the state follows the worst answer of this poll."""
        errors = []
        for block in self.blocks:
            if self._stopping.is_set():
                return
            try:
                rr = self._read(block)
            except (ModbusException, OSError) as exc:
                if self._stopping.is_set():
                    return  # our own stop() shut the socket: not the PLC's doing
                client = self._client
                if isinstance(exc, ConnectionException | OSError) or client is None or \
                        not client.connected:
                    self.status.count("disconnects")
                    self._link_up = False
                    self.set_state("disconnected", f"connection lost: {exc}")
                    self._close()
                    return
                # No answer in time. A late answer would come with an old transaction id
                # and be taken for the next request's: start again on a fresh connection.
                self.status.count("timeouts")
                log.debug("%s: no answer reading %r: %s", self.name, block, exc)
                self._close()
                return
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
            for r in block.regs:
                off = r["address"] - block.address
                raw = [int(v) for v in values[off:off + TYPES[r["type"]][1]]]
                value = decode_words(raw, r["type"], r["word_order"])
                if r["scale"] != 1.0 and not isinstance(value, bool):
                    value = round(value * r["scale"], 9)
                self._changed(r, value, read_ms)
        if errors:
            self.set_state("error", "; ".join(errors))
        else:
            self.set_state("ok")

    def _read(self, block: Block) -> Any:
        client = self._client
        if client is None:
            raise ConnectionException("closed")
        unit = self.cfg["unit_id"]
        if block.table == "coil":
            return client.read_coils(block.address, count=block.count, device_id=unit)
        if block.table == "input":
            return client.read_input_registers(block.address, count=block.count, device_id=unit)
        return client.read_holding_registers(block.address, count=block.count, device_id=unit)

    def _changed(self, r: dict[str, Any], value: Any, read_ms: int) -> None:
        tag = r["tag"]
        if tag in self._last:
            last = self._last[tag]
            if isinstance(value, bool) or r["deadband"] == 0:
                if value == last:
                    return
            elif abs(value - last) <= r["deadband"]:
                return
        accepted = self.emit(Event(self.name, "register", read_ms, {
            "tag": tag, "value": value, "address": r["address"], "table": r["table"]}))
        if accepted.ok:
            self._last[tag] = value

    def _check_stale(self) -> None:
        """Connected, but no answer at all (good or exception) for ``stale_s``: stale. A
        PLC answering with exceptions is in error; one refusing connections, disconnected."""
        quiet_s = (self.clock.monotonic_ms() - self._last_answer_ms) / 1000
        if quiet_s > self.cfg["stale_s"] and self.status.state != "stale" and (
                self._link_up or self.status.state in ("ok", "error")):
            self.set_state("stale", f"no answer for {quiet_s:.1f} s")


TYPE = "modbus"
DEFAULT_CLASS = "telemetry"  # values a PLC reports again: state, not transactions
DRIVER = ModbusDriver
