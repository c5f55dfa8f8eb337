"""Modbus TCP driver: polls a PLC's register map with pymodbus and emits changes.

Config (``[devices.NAME]``, type ``modbus``): ``host``, ``port`` (502), ``unit_id`` (1),
``poll_ms`` (500), ``timeout_s`` (1.0), ``stale_s`` (5.0), and ``registers``, a list of
``{tag, table (holding|input|coil), address, type (int16|uint16|int32|uint32|float32|
bool for coils), word_order (big|little), scale (1.0), deadband (0)}``.

Each poll reads adjacent registers of one table in one request (at most 125 registers or
2,000 coils); a value is emitted when it is read for the first time or moves by more than
its deadband from the last emitted value. Event: kind ``register``, data ``{"tag",
"value", "address", "table"}``, ``read_ms`` the wall time the response arrived.

Failures: a Modbus exception reply sets ``error`` with the exception code as the last
error (counter ``modbus_exceptions``); no response sets nothing by itself but counts
``timeouts``, and after ``stale_s`` without any answer the device is ``stale``; a lost or
refused connection is ``disconnected`` and the driver reconnects with a backoff (0.2 s
doubling to 5 s, counter ``reconnects``). None of them ends the polling loop: when the
PLC answers again, polling resumes by itself. A value that was not read again is never
emitted again: a PLC that stops answering is marked stale, not repeated.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

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
MAX_BLOCK = {"holding": 125, "input": 125, "coil": 2000}  # Modbus PDU limits
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0


def decode_words(words: list[int], dtype: str, word_order: str) -> float | int | bool:
    fmt, n = TYPES[dtype]
    if fmt is None:
        return bool(words[0])
    ws = words[:n][::-1] if word_order == "little" else words[:n]
    value = struct.unpack(fmt, b"".join(w.to_bytes(2, "big") for w in ws))[0]
    return round(value, 6) if dtype == "float32" else value


class Block:
    """Adjacent registers of one table, read with one request."""

    def __init__(self, table: str, regs: list[dict[str, Any]]) -> None:
        self.table = table
        self.regs = regs
        self.address = regs[0]["address"]
        last = regs[-1]
        self.count = last["address"] + TYPES[last["type"]][1] - self.address


def plan_blocks(registers: list[dict[str, Any]]) -> list[Block]:
    blocks = []
    for table in TABLES:
        regs = sorted((r for r in registers if r["table"] == table), key=lambda r: r["address"])
        run: list[dict[str, Any]] = []
        for r in regs:
            width = TYPES[r["type"]][1]
            if run:
                end = run[-1]["address"] + TYPES[run[-1]["type"]][1]
                if r["address"] != end or r["address"] + width - run[0]["address"] > MAX_BLOCK[table]:
                    blocks.append(Block(table, run))
                    run = []
            run.append(r)
        if run:
            blocks.append(Block(table, run))
    return blocks


class ModbusDriver(Driver):
    kind = "modbus"

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        no_unknown_keys(table, path, DEVICE_KEYS)
        cfg = {
            "host": field(table, "host", path, str),
            "port": field(table, "port", path, int, default=502,
                          check=lambda v: 0 < v < 65536, allowed="1 to 65535"),
            "unit_id": field(table, "unit_id", path, int, default=1,
                             check=lambda v: 0 <= v <= 247, allowed="0 to 247"),
            "poll_ms": field(table, "poll_ms", path, int, default=500,
                             check=lambda v: 10 <= v <= 3600000, allowed="10 to 3600000"),
            "timeout_s": field(table, "timeout_s", path, float, default=1.0, check=positive),
            "stale_s": field(table, "stale_s", path, float, default=5.0, check=positive),
        }
        regs = field(table, "registers", path, list, allowed="a list of [[registers]] tables")
        if not regs:
            raise ConfigError(path + ".registers", "is empty", "at least one register")
        cfg["registers"] = []
        tags = set()
        for i, r in enumerate(regs):
            rp = f"{path}.registers[{i}]"
            if not isinstance(r, dict):
                raise ConfigError(rp, f"{r!r} is not a table", "a table")
            no_unknown_keys(r, rp, REGISTER_KEYS)
            reg = {"tag": field(r, "tag", rp, str, check=lambda v: bool(v), allowed="a name"),
                   "table": field(r, "table", rp, str, default="holding", choices=TABLES)}
            default_type = "bool" if reg["table"] == "coil" else "uint16"
            reg["type"] = field(r, "type", rp, str, default=default_type, choices=TYPES)
            if (reg["type"] == "bool") != (reg["table"] == "coil"):
                raise ConfigError(rp + ".type", f"{reg['type']!r} does not fit table "
                                  f"{reg['table']}", "bool for coils; int16, uint16, int32, "
                                  "uint32 or float32 for registers")
            reg["address"] = field(r, "address", rp, int, check=lambda v: 0 <= v <= 65534,
                                   allowed="0 to 65534")
            reg["word_order"] = field(r, "word_order", rp, str, default="big",
                                      choices=("big", "little"))
            reg["scale"] = field(r, "scale", rp, float, default=1.0)
            reg["deadband"] = field(r, "deadband", rp, float, default=0.0, check=non_negative)
            if reg["tag"] in tags:
                raise ConfigError(rp + ".tag", f"{reg['tag']!r} is used twice", "unique tags")
            tags.add(reg["tag"])
            cfg["registers"].append(reg)
        return cfg

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks = plan_blocks(self.cfg["registers"])
        self._client: ModbusTcpClient | None = None
        self._last: dict[str, Any] = {}
        self._last_answer_ms = self.clock.monotonic_ms()

    def _interrupt(self) -> None:
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        poll_s = self.cfg["poll_ms"] / 1000
        while not self._stopping.is_set():
            if self._client is None or not self._client.connected:
                if not self._connect():
                    self._check_stale()
                    if self.wait(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = BACKOFF_FIRST_S
            started = self.clock.monotonic_ms()
            self._poll()
            self._check_stale()
            left = poll_s - (self.clock.monotonic_ms() - started) / 1000
            if self.wait(max(0.0, left)):
                return

    def _connect(self) -> bool:
        if self._client is not None:
            self._client.close()
        self._client = ModbusTcpClient(self.cfg["host"], port=self.cfg["port"],
                                       timeout=self.cfg["timeout_s"], retries=0,
                                       reconnect_delay=0)
        if self._client.connect():
            if self.status.counter("connects"):
                self.status.count("reconnects")
            self.status.count("connects")
            return True
        self.set_state("disconnected", f"cannot connect to {self.cfg['host']}:{self.cfg['port']}")
        return False

    def _poll(self) -> None:
        assert self._client is not None
        for block in self.blocks:
            try:
                rr = self._read(block)
            except ModbusException as exc:
                if self._client is None or not self._client.connected:
                    self.status.count("disconnects")
                    self.set_state("disconnected", f"connection lost: {exc}")
                    return
                # No answer in time. A late answer would arrive with an old transaction id
                # and confuse the next request: start again on a fresh connection.
                self.status.count("timeouts")
                self._client.close()
                return
            read_ms = self.clock.now_ms()
            self._last_answer_ms = self.clock.monotonic_ms()
            if rr.isError():
                code = getattr(rr, "exception_code", None)
                self.status.count("modbus_exceptions")
                self.set_state("error", f"Modbus exception {code} reading {block.table} "
                               f"{block.address}..{block.address + block.count - 1}")
                continue
            if self.status.state != "ok":
                self.set_state("ok")
            values = rr.bits if block.table == "coil" else rr.registers
            for r in block.regs:
                off = r["address"] - block.address
                value = decode_words([int(v) for v in values[off:off + TYPES[r["type"]][1]]],
                                     r["type"], r["word_order"])
                if r["scale"] != 1.0 and not isinstance(value, bool):
                    value = round(value * r["scale"], 6)
                self._changed(r, value, read_ms)

    def _read(self, block: Block) -> Any:
        assert self._client is not None
        unit = self.cfg["unit_id"]
        if block.table == "coil":
            return self._client.read_coils(block.address, count=block.count, device_id=unit)
        if block.table == "input":
            return self._client.read_input_registers(block.address, count=block.count,
                                                     device_id=unit)
        return self._client.read_holding_registers(block.address, count=block.count,
                                                   device_id=unit)

    def _changed(self, r: dict[str, Any], value: Any, read_ms: int) -> None:
        tag = r["tag"]
        last = self._last.get(tag)
        if last is not None:
            if isinstance(value, bool) or r["deadband"] == 0:
                if value == last:
                    return
            elif abs(value - last) <= r["deadband"]:
                return
        self._last[tag] = value
        self.emit(Event(self.name, "register", read_ms, {
            "tag": tag, "value": value, "address": r["address"], "table": r["table"]}))

    def _check_stale(self) -> None:
        """No answer at all (good or exception) for ``stale_s``: stale. A PLC answering
        with exceptions is in error, not stale."""
        quiet_s = (self.clock.monotonic_ms() - self._last_answer_ms) / 1000
        if quiet_s > self.cfg["stale_s"] and self.status.state in ("ok", "error"):
            self.set_state("stale", f"no answer for {quiet_s:.1f} s")
