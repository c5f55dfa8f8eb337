"""A Modbus TCP PLC on pymodbus's server, with a register map from config and faults.

Registers are named by tag and live in the holding (function 3), input (4) or coil (1)
table at a 0-based address: ``int16``, ``uint16``, ``int32``, ``uint32``, ``float32``
(two registers, ``word_order`` big or little) or ``bool`` (a coil). Behaviours:

- ``static``: keeps its ``value`` until ``set_value``;
- ``counter``: a production counter that only rises, by ``step`` every ``period_ms``;
- ``random_walk``: a measurement (a temperature) drifting every ``period_ms``, seeded;
- ``changes_every_read``: the value rises by one on every read that covers it.

Faults, switchable while serving: ``exception_mode(code)`` (every read answers that
Modbus exception; None clears), ``silence(True)`` (requests are accepted and never
answered: the client times out), ``drop_connections()`` (close every client connection),
``restart()`` (stop, then serve again on the same port; values keep going).

Ground truth: every value *served* to a client that differs from the value last served
for that tag is logged (kind ``register``, ``tag``, ``address``), so a poller faster than
the changes should turn each entry into exactly one event. Faults are logged with
``expect: false``. A value that changed and changed again between two reads was never
served and is not logged: no client could have seen it.

Not modelled: writes from the client (accepted into the store, not logged), discrete
inputs, serial RTU, unit ids other than the one configured (every unit id is answered).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import threading
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.datastore.context import ModbusBaseDeviceContext
from pymodbus.server import ModbusTcpServer

from simulator.broker import free_port
from simulator.ground_truth import GroundTruthLog

log = logging.getLogger(__name__)

TYPES = {"int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
         "float32": (">f", 2), "bool": (None, 1)}
TABLES = {"holding": "h", "input": "i", "coil": "c"}
BEHAVIOURS = ("static", "counter", "random_walk", "changes_every_read")
CONFIG_KEYS = ("host", "port", "unit_id", "seed", "registers")
REGISTER_KEYS = ("tag", "table", "address", "type", "word_order", "value", "behaviour",
                 "step", "period_ms")


def encode_value(dtype: str, value: Any, word_order: str = "big") -> list[int]:
    """Register words of a value (independent of pymodbus's own converters)."""
    fmt, n = TYPES[dtype]
    if fmt is None:
        return [1 if value else 0]
    if dtype == "float32":
        raw = struct.pack(fmt, float(value))
    else:
        raw = struct.pack(fmt, int(value))
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, 2 * n, 2)]
    return words[::-1] if word_order == "little" else words


class Register:
    def __init__(self, device: str, i: int, t: dict[str, Any]) -> None:
        where = f"devices.{device}.registers[{i}]"
        unknown = sorted(set(t) - set(REGISTER_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(REGISTER_KEYS)}")
        self.tag = t.get("tag")
        if not isinstance(self.tag, str) or not self.tag:
            raise ValueError(f"{where}.tag: {self.tag!r} is not a name")
        self.table = t.get("table", "holding")
        if self.table not in TABLES:
            raise ValueError(f"{where}.table: {self.table!r} is not one of {', '.join(TABLES)}")
        self.type = t.get("type", "bool" if self.table == "coil" else "uint16")
        if self.type not in TYPES or (self.type == "bool") != (self.table == "coil"):
            raise ValueError(f"{where}.type: {self.type!r} does not fit table {self.table} "
                             f"(coils are bool; registers: int16, uint16, int32, uint32, float32)")
        self.address = t.get("address")
        if isinstance(self.address, bool) or not isinstance(self.address, int) or not (
                0 <= self.address <= 65534):
            raise ValueError(f"{where}.address: {self.address!r} is not 0 to 65534")
        self.word_order = t.get("word_order", "big")
        if self.word_order not in ("big", "little"):
            raise ValueError(f"{where}.word_order: {self.word_order!r} is not big or little")
        self.behaviour = t.get("behaviour", "static")
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"{where}.behaviour: {self.behaviour!r} is not one of "
                             f"{', '.join(BEHAVIOURS)}")
        self.value: Any = t.get("value", 0.0 if self.type == "float32" else 0)
        self.step = t.get("step", 1)
        self.period_s = t.get("period_ms", 500) / 1000
        self.width = TYPES[self.type][1]
        self.last_served: Any = None

    def words(self) -> list[int]:
        return encode_value(self.type, self.value, self.word_order)


class _PlcContext(ModbusBaseDeviceContext):
    """pymodbus asks this for values; it answers from the PLC's registers."""

    def __init__(self, plc: ModbusPLC) -> None:
        self.plc = plc

    def reset(self) -> None:
        pass

    async def async_getValues(self, func_code: int, address: int, count: int = 1) -> Any:
        while self.plc._silent and not self.plc._stopping:  # accepted, never answered
            await asyncio.sleep(0.05)
        return self.getValues(func_code, address, count)

    def getValues(self, func_code: int, address: int, count: int = 1) -> Any:
        return self.plc._serve(self.decode(func_code), address, count)

    def setValues(self, func_code: int, address: int, values: Any) -> Any:
        return None


class ModbusPLC:
    kind = "modbus"

    def __init__(self, name: str, registers: list[dict[str, Any]], host: str = "127.0.0.1",
                 port: int = 0, unit_id: int = 1, seed: int = 0,
                 ground_truth_path: str | Path | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.unit_id = unit_id
        self.rng = random.Random(f"{seed}:{name}")
        self.registers = [Register(name, i, t) for i, t in enumerate(registers)]
        self.ground_truth = GroundTruthLog(ground_truth_path, name)
        self.requests = 0
        self._lock = threading.Lock()
        self._exception: int | None = None
        self._silent = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None
        self._ready = threading.Event()

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any],
                    ground_truth_dir: str | Path | None) -> ModbusPLC:
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"devices.{name}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(CONFIG_KEYS)}")
        regs = cfg.get("registers")
        if not isinstance(regs, list) or not regs:
            raise ValueError(f"devices.{name}.registers: a list of [[...registers]] tables")
        gt = None
        if ground_truth_dir is not None:
            Path(ground_truth_dir).mkdir(parents=True, exist_ok=True)
            gt = Path(ground_truth_dir) / f"{name}.jsonl"
        return cls(name, regs, cfg.get("host", "127.0.0.1"), cfg.get("port", 0),
                   cfg.get("unit_id", 1), cfg.get("seed", 0), gt)

    # ---- life ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> ModbusPLC:
        self._stopping = False
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"modbus-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"modbus PLC {self.name}: not serving within {timeout_s} s")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        if self._loop is not None and self._server is not None:
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            try:
                fut.result(timeout_s)
            except Exception:  # noqa: BLE001 - stopping anyway
                log.debug("modbus PLC %s: shutdown", self.name, exc_info=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = self._loop = self._server = None

    def restart(self) -> ModbusPLC:
        self.ground_truth.record("fault", "restart", expect=False, fault="restart")
        self.stop()
        return self.start()

    def __enter__(self) -> ModbusPLC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.ground_truth.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        context = ModbusServerContext(devices=_PlcContext(self), single=True)

        async def main() -> None:
            # pymodbus binds the server to the running loop: build it inside.
            self._server = ModbusTcpServer(context, address=(self.host, self.port))
            await self._server.serve_forever(background=True)
            self._ready.set()
            await self._tick()

        loop.create_task(main())
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _tick(self) -> None:
        """Counters and measurements move on their own periods."""
        due = {r.tag: 0.0 for r in self.registers}
        loop = asyncio.get_running_loop()
        while not self._stopping:
            now = loop.time()
            with self._lock:
                for r in self.registers:
                    if r.behaviour not in ("counter", "random_walk") or now < due[r.tag]:
                        continue
                    due[r.tag] = now + r.period_s
                    if r.behaviour == "counter":
                        r.value += r.step
                    else:
                        r.value = round(r.value + self.rng.uniform(-0.5, 0.5), 3)
            await asyncio.sleep(0.01)

    # ---- serving ----------------------------------------------------------------------------

    def _serve(self, table: str, address: int, count: int) -> Any:
        with self._lock:
            self.requests += 1
            if self._exception is not None:
                return ExcCodes(self._exception)
            out = [0] * count
            covered = [r for r in self.registers if TABLES[r.table] == table
                       and r.address < address + count and address < r.address + r.width]
            top = max((r.address + r.width for r in self.registers
                       if TABLES[r.table] == table), default=0)
            if address + count > max(top, 1) + 100:  # far past the map: no such address
                return ExcCodes.ILLEGAL_ADDRESS
            for r in covered:
                if r.behaviour == "changes_every_read":
                    r.value += 1
                words = r.words()
                for k, w in enumerate(words):
                    if address <= r.address + k < address + count:
                        out[r.address + k - address] = w
                if r.address >= address and r.address + r.width <= address + count:
                    self._log_served(r)
            return [bool(x) for x in out] if table == "c" else out

    def _log_served(self, r: Register) -> None:
        value = bool(r.value) if r.type == "bool" else r.value
        if value != r.last_served:
            r.last_served = value
            self.ground_truth.record("register", value, tag=r.tag, address=r.address,
                                     table=r.table)

    # ---- controls ---------------------------------------------------------------------------

    def set_value(self, tag: str, value: Any) -> None:
        with self._lock:
            self._register(tag).value = value

    def value(self, tag: str) -> Any:
        with self._lock:
            return self._register(tag).value

    def _register(self, tag: str) -> Register:
        for r in self.registers:
            if r.tag == tag:
                return r
        raise KeyError(f"modbus PLC {self.name} has no tag {tag!r}")

    def exception_mode(self, code: int | None) -> None:
        with self._lock:
            self._exception = code
        self.ground_truth.record("fault", code, expect=False, fault="exception")

    def silence(self, on: bool) -> None:
        self._silent = on
        self.ground_truth.record("fault", on, expect=False, fault="silence")

    def drop_connections(self) -> int:
        if self._server is None or self._loop is None:
            return 0
        conns = list(self._server.active_connections.values())

        def close() -> None:
            for c in conns:
                c.close()
        self._loop.call_soon_threadsafe(close)
        self.ground_truth.record("fault", len(conns), expect=False, fault="drop")
        return len(conns)

    def connections(self) -> int:
        return len(self._server.active_connections) if self._server is not None else 0

    def truth(self) -> list[dict[str, Any]]:
        return list(self.ground_truth.entries)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "host": self.host, "port": self.port,
                "unit_id": self.unit_id,
                "registers": [{"tag": r.tag, "table": r.table, "address": r.address,
                               "type": r.type, "word_order": r.word_order,
                               "behaviour": r.behaviour} for r in self.registers]}
