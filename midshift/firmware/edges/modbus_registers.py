"""A Modbus register map: typed registers, their decoding, and the blocks one poll reads.

Shared by both transports of device type ``modbus`` (TCP and RTU, ``midshift/firmware/edges/
modbus.py``): the same ``[[registers]]`` tables, the same block reads and the same decoding
whichever wire carries the requests. Pure functions and one small class; no I/O.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from midshift.firmware.core.config_fields import field, no_unknown_keys, non_negative
from midshift.firmware.core.errors import ConfigError

TYPES = {"int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
         "float32": (">f", 2), "bool": (None, 1)}
TABLES = ("holding", "input", "coil")
REGISTER_KEYS = ("tag", "table", "address", "type", "word_order", "scale", "deadband")
MAX_BLOCK = {"holding": 125, "input": 125, "coil": 2000}  # Modbus spec 6.1, 6.3, 6.4


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


def register_config(r: Any, rp: str, tags: set[str]) -> dict[str, Any]:
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


