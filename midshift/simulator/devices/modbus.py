"""A Modbus TCP PLC on pymodbus's server, with a register map from config and faults.

Config (``[devices.NAME]``, type ``modbus``): ``host`` ("127.0.0.1"), ``port`` (0 = a free
port, reported by ``describe()`` and kept across restarts), ``unit_id`` (1; requests to
other unit ids are not answered), ``seed`` (0), and ``[[devices.NAME.registers]]``. The
agent's own table drives it too: its poller keys (``poll_ms``, ``timeout_s``, ``stale_s``,
a register's ``scale`` and ``deadband``) are ignored here, and a register without
``behaviour`` is ``static``:

- ``tag`` (unique name), ``table`` ``holding`` (function 3), ``input`` (4) or ``coil`` (1),
  ``address`` (0-based);
- ``type`` ``int16``, ``uint16`` (default), ``int32``, ``uint32``, ``float32`` or ``bool``
  (the only type of a coil); 32-bit types take two registers, ``word_order`` ``big``
  (high word first, the Modbus convention) or ``little`` (low word first);
- ``value`` (initial), ``behaviour``: ``static`` (keeps ``value`` until ``set_value``),
  ``counter`` (a production counter: rises by ``step`` every ``period_ms``),
  ``random_walk`` (a measurement drifting by up to 0.5 every ``period_ms``, seeded),
  ``changes_every_read`` (rises by one on every read that covers it).

Integers wrap at their type's range as a PLC's do (a uint16 counter goes 65535 -> 0);
that is the only way a ``counter`` falls. Float values are served as IEEE 754 float32.

Faults, switchable while serving: ``exception_mode(code, table, first, last)`` (reads of
that range, or of everything, answer that Modbus exception; None clears), ``silence(on)``
(connections are accepted, requests read and never answered: the client times out),
``drop_connections()`` (the PLC closes every client connection), ``restart()`` (stop,
then serve again on the same port; values go on from where they were).

Ground truth (``truth()``, ``DIR/NAME.jsonl``): every value *served* in a response that
differs from the value last served for that tag, kind ``register`` with ``tag``,
``address``, ``table``; the value is what the wire carried (decoded back from the
response's words: float32 as the shortest decimal that round-trips the float32, the same
rule the agent's driver uses). A poller faster than the changes turns each entry into
exactly one event; a value that changed twice between two reads was never served and is
not logged. Faults are logged as kind ``fault`` with ``expect: false``.

``requests`` counts read requests that reached the register map and ``request_log`` keeps
the last 1,000 as ``(table, address, count)``, so tests can see how a client batches.

Modbus RTU: the same PLC, never started on TCP, is a unit on an emulated RS-485 line
(``midshift/simulator/devices/modbus_rtu.py``, pymodbus's serial server on a pty); in a scenario,
``rtu = true`` (and ``baudrate``) puts the device there, as unit 1 of its own line.

Not modelled: writes from the client (answered, not stored), discrete inputs,
the delay of a real PLC's scan cycle, exception code 0x0B for unknown unit ids (a
gateway's answer; this PLC stays silent like most single devices).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import threading
from collections import deque
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.datastore.context import ModbusBaseDeviceContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from midshift.simulator.devices import rounded
from midshift.simulator.ground_truth import GroundTruthLog

log = logging.getLogger(__name__)

TYPES = {"int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
         "float32": (">f", 2), "bool": (None, 1)}
TABLES = {"holding": "h", "input": "i", "coil": "c"}
TABLE_NAMES = {v: k for k, v in TABLES.items()} | {"d": "discrete"}
BEHAVIOURS = ("static", "counter", "random_walk", "changes_every_read")
CONFIG_KEYS = ("host", "port", "unit_id", "seed", "registers")
RTU_KEYS = ("baudrate", "parity", "stop_bits")  # with a serial port: a unit on an RTU line
REGISTER_KEYS = ("tag", "table", "address", "type", "word_order", "value", "behaviour",
                 "step", "period_ms")
# Keys of the agent's table (midshift/firmware/edges/modbus.py) that are the poller's business: the
# same file drives the agent and this PLC, which ignores them.
AGENT_ONLY_KEYS = ("poll_ms", "timeout_s", "stale_s")
AGENT_ONLY_REGISTER_KEYS = ("scale", "deadband")
EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 8, 10, 11)  # Modbus Application Protocol v1.1b3, 7


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def float32_value(x: float) -> float:
    """The float32 nearest ``x``, as the shortest decimal that reads back as that float32."""
    bits = struct.pack(">f", x)
    f32 = struct.unpack(">f", bits)[0]
    if not math.isfinite(f32):
        return f32
    for digits in range(1, 10):
        text = float(f"{f32:.{digits}g}")
        if struct.pack(">f", text) == bits:
            return text
    return f32


def encode_value(dtype: str, value: Any, word_order: str = "big") -> list[int]:
    """Register words of a value; integers wrap at the type's range, floats are float32."""
    fmt, n = TYPES[dtype]
    if fmt is None:
        return [1 if value else 0]
    if dtype == "float32":
        raw = struct.pack(fmt, float(value))
    else:
        bits = 16 * n
        raw = (int(round(value)) & ((1 << bits) - 1)).to_bytes(2 * n, "big")
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, 2 * n, 2)]
    return words[::-1] if word_order == "little" else words


def decode_words(dtype: str, words: list[int], word_order: str = "big") -> Any:
    fmt, n = TYPES[dtype]
    if fmt is None:
        return bool(words[0])
    ws = words[::-1] if word_order == "little" else words
    value = struct.unpack(fmt, b"".join(w.to_bytes(2, "big") for w in ws))[0]
    return float32_value(value) if dtype == "float32" else value


class Register:
    """One tag of the map: where it lives, how it is typed, how it moves."""

    def __init__(self, device: str, i: int, t: Any) -> None:
        where = f"devices.{device}.registers[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{where}: {t!r} is not a table")
        t = {k: v for k, v in t.items() if k not in AGENT_ONLY_REGISTER_KEYS}
        unknown = sorted(set(t) - set(REGISTER_KEYS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: not a known key; "
                             f"allowed: {', '.join(REGISTER_KEYS)}")

        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{where}.{key}: {t.get(key)!r} is not {expected}")

        self.tag = t.get("tag")
        if not isinstance(self.tag, str) or not self.tag:
            raise bad("tag", "a name")
        self.table = t.get("table", "holding")
        if self.table not in TABLES:
            raise bad("table", f"one of {', '.join(TABLES)}")
        self.type = t.get("type", "bool" if self.table == "coil" else "uint16")
        if self.type not in TYPES or (self.type == "bool") != (self.table == "coil"):
            raise bad("type", f"a type for table {self.table} (coils are bool; registers: "
                      "int16, uint16, int32, uint32, float32)")
        self.width = TYPES[self.type][1]
        self.address = t.get("address")
        if not _is_int(self.address) or not 0 <= self.address <= 65536 - self.width:
            raise bad("address", f"an integer from 0 to {65536 - self.width}")
        self.word_order = t.get("word_order", "big")
        if self.word_order not in ("big", "little"):
            raise bad("word_order", "big or little")
        self.behaviour = t.get("behaviour", "static")
        if self.behaviour not in BEHAVIOURS:
            raise bad("behaviour", f"one of {', '.join(BEHAVIOURS)}")
        self.value: Any = t.get("value", False if self.type == "bool" else 0)
        if self.type == "bool" and not isinstance(self.value, bool):
            raise bad("value", "true or false")
        if self.type != "bool":
            check_value(self.type, self.value, f"{where}.value")
        if self.type == "bool" and self.behaviour != "static":
            raise bad("behaviour", "static (a coil only changes by set_value)")
        self.step = t.get("step", 1)
        if not _is_number(self.step) or self.step <= 0:
            raise bad("step", "a number above 0")
        period_ms = t.get("period_ms", 500)
        if not _is_int(period_ms) or not 10 <= period_ms <= 3_600_000:
            raise bad("period_ms", "an integer from 10 to 3600000")
        self.period_s = period_ms / 1000
        self.last_served: Any = None

    def words(self) -> list[int]:
        return encode_value(self.type, self.value, self.word_order)

    def wire_value(self) -> Any:
        """What a client decodes from this register's words right now."""
        return decode_words(self.type, self.words(), self.word_order)

    def advance(self, step: float) -> None:
        """Move a counter on; integers wrap at the type's range, as in a PLC."""
        if self.type == "float32":
            self.value = float32_value(self.value + step)
            return
        lo, hi = _int_range(self.type)
        self.value = (int(round(self.value + step)) - lo) % (hi - lo + 1) + lo


def _int_range(dtype: str) -> tuple[int, int]:
    bits = 16 * TYPES[dtype][1]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype.startswith("int") else (
        0, (1 << bits) - 1)


def check_value(dtype: str, value: Any, where: str) -> None:
    if dtype == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not true or false")
        return
    if dtype == "float32":
        if not _is_number(value):
            raise ValueError(f"{where}: {value!r} is not a number")
        return
    lo, hi = _int_range(dtype)
    if not _is_int(value) or not lo <= value <= hi:
        raise ValueError(f"{where}: {value!r} is not an integer from {lo} to {hi} ({dtype})")


class _PlcDevice(ModbusBaseDeviceContext):
    """pymodbus asks this for values; it answers from the PLC's registers."""

    def __init__(self, plc: ModbusPLC) -> None:
        self.plc = plc

    def reset(self) -> None:
        """Nothing to reset: the PLC's registers are its own state."""

    def getValues(self, func_code: int, address: int, count: int = 1) -> Any:
        return self.plc._serve(self.decode(func_code), address, count)

    def setValues(self, func_code: int, address: int, values: Any) -> Any:
        return None


class _PlcContext(ModbusServerContext):
    """One unit id; while silenced, no unit id exists, so pymodbus answers nothing."""

    def __init__(self, plc: ModbusPLC) -> None:
        super().__init__(devices={plc.unit_id: _PlcDevice(plc)}, single=False)
        self.plc = plc

    def __getitem__(self, device_id: int) -> Any:
        if self.plc._silent:
            self.plc.ignored += 1
            raise NoSuchIdException("silenced")  # with ignore_missing_devices: no reply
        if device_id != self.plc.unit_id:
            self.plc.ignored += 1
        return super().__getitem__(device_id)


class ModbusPLC:
    """Modbus TCP PLC emulator; see the module docstring."""

    kind = "modbus"

    def __init__(self, name: str, registers: list[dict[str, Any]], host: str = "127.0.0.1",
                 port: int = 0, unit_id: int = 1, seed: int = 0,
                 ground_truth_path: str | Path | None = None) -> None:
        where = f"devices.{name}"
        if not isinstance(host, str) or not host:
            raise ValueError(f"{where}.host: {host!r} is not a host name or address")
        if not _is_int(port) or not 0 <= port <= 65535:
            raise ValueError(f"{where}.port: {port!r} is not 0 (any free port) to 65535")
        if not _is_int(unit_id) or not 0 <= unit_id <= 247:
            raise ValueError(f"{where}.unit_id: {unit_id!r} is not an integer from 0 to 247")
        if not _is_int(seed):
            raise ValueError(f"{where}.seed: {seed!r} is not an integer")
        if not isinstance(registers, list) or not registers:
            raise ValueError(f"{where}.registers: {registers!r} is not a non-empty list of "
                             "[[registers]] tables")
        self.name = name
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.rng = random.Random(f"{seed}:{name}")
        self.registers = [Register(name, i, t) for i, t in enumerate(registers)]
        tags = [r.tag for r in self.registers]
        for i, tag in enumerate(tags):
            if tag in tags[:i]:
                raise ValueError(f"{where}.registers[{i}].tag: {tag!r} is used twice")
        self.ground_truth = GroundTruthLog(ground_truth_path, name)
        self.requests = 0
        self.ignored = 0  # requests not answered (silence or another unit id)
        self.request_log: deque[tuple[str, int, int]] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._exception: tuple[int, str | None, int, int] | None = None
        self._silent = False
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any],
                    ground_truth_dir: str | Path | None) -> Any:
        """Build from a ``[devices.NAME]`` table; the ground truth goes to ``DIR/NAME.jsonl``.
        A table whose ``port`` is a path is a Modbus RTU unit: its line (``modbus_rtu.py``)
        is returned, with the pty's link at that path (units of one path are joined into
        one line by ``RtuLinePLC.absorb``)."""
        cfg = {k: v for k, v in cfg.items() if k not in AGENT_ONLY_KEYS}
        serial = isinstance(cfg.get("port"), str)
        if serial and cfg["port"].strip().isdigit():
            raise ValueError(f"devices.{name}.port: {cfg['port']!r} is a number in quotes, not "
                             "a TCP port number (unquoted) or a serial port path")
        line = {k: cfg.pop(k) for k in RTU_KEYS if k in cfg} if serial else {}
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"devices.{name}.{unknown[0]}: not a known key; "
                             f"allowed: {', '.join(CONFIG_KEYS)}")
        gt = None
        if ground_truth_dir is not None:
            Path(ground_truth_dir).mkdir(parents=True, exist_ok=True)
            gt = Path(ground_truth_dir) / f"{name}.jsonl"
        if serial:
            from midshift.simulator.devices.modbus_rtu import RtuLinePLC  # it builds on this module
            unit = cls(name, cfg.get("registers"), "127.0.0.1", 0,  # type: ignore[arg-type]
                       cfg.get("unit_id", 1), cfg.get("seed", 0), gt)
            return RtuLinePLC(name, cfg["port"], [unit], line.get("baudrate", 19200),
                              line.get("parity", "E"), line.get("stop_bits", 1))
        return cls(name, cfg.get("registers"), cfg.get("host", "127.0.0.1"),  # type: ignore[arg-type]
                   cfg.get("port", 0), cfg.get("unit_id", 1), cfg.get("seed", 0), gt)

    # ---- life ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> ModbusPLC:
        """Serve in a thread of its own; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"modbus PLC {self.name}: already serving")
        self._stopping.clear()
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name=f"modbus-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"modbus PLC {self.name}: not serving within {timeout_s} s")
        if self._start_error is not None:
            error = self._start_error
            self.stop()
            raise RuntimeError(f"modbus PLC {self.name}: cannot serve on "
                               f"{self.host}:{self.port}: {error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the listener and every connection, end the thread. Safe to call twice."""
        self._stopping.set()
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(server.shutdown(), loop)
            try:
                fut.result(timeout_s)
            except Exception:  # noqa: BLE001 - stopping anyway
                log.debug("modbus PLC %s: shutdown", self.name, exc_info=True)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("modbus PLC %s: thread did not stop in %.1f s", self.name, timeout_s)
        self._thread = self._loop = self._server = None

    def restart(self) -> ModbusPLC:
        """A power cycle: every connection drops, the same port serves again, values go on."""
        self.ground_truth.record("fault", "restart", expect=False, fault="restart")
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        self.ground_truth.close()

    def __enter__(self) -> ModbusPLC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop

        async def main() -> None:
            # pymodbus binds the server to the running loop: build it inside.
            try:
                self._server = ModbusTcpServer(_PlcContext(self), address=(self.host, self.port),
                                               ignore_missing_devices=True)
                await self._server.serve_forever(background=True)
                if self.port == 0:  # keep the port the OS chose, for restarts
                    self.port = self._server.transport.sockets[0].getsockname()[1]
            except Exception as exc:  # noqa: BLE001 - reported by start()
                self._start_error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._tick()

        loop.create_task(main())
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _tick(self) -> None:
        """Counters and measurements move on their own periods."""
        loop = asyncio.get_running_loop()
        due = {r.tag: loop.time() + r.period_s for r in self.registers}
        while not self._stopping.is_set():
            now = loop.time()
            with self._lock:
                for r in self.registers:
                    if r.behaviour not in ("counter", "random_walk") or now < due[r.tag]:
                        continue
                    due[r.tag] = now + r.period_s
                    if r.behaviour == "counter":
                        r.advance(r.step)
                    elif r.type == "float32":
                        r.value = float32_value(r.value + self.rng.uniform(-0.5, 0.5))
                    else:
                        r.advance(self.rng.choice((-1, 0, 1)))
            await asyncio.sleep(0.005)

    # ---- serving ----------------------------------------------------------------------------

    def _serve(self, table: str, address: int, count: int, delivered: bool = True) -> Any:
        """One read request: the words (or bits) at ``address``, or an exception code.
        ``delivered`` False: the answer will not reach the client whole (an RTU line's
        CRC fault), so its values are not logged as served."""
        with self._lock:
            self.requests += 1
            name = TABLE_NAMES.get(table, table)
            self.request_log.append((name, address, count))
            if self._exception is not None:
                code, only_table, first, last = self._exception
                if (only_table is None or only_table == name) and (
                        address <= last and first < address + count):
                    return ExcCodes(code)
            if name not in TABLES:  # discrete inputs: not in this PLC
                return ExcCodes.ILLEGAL_ADDRESS
            out = [0] * count
            for r in self.registers:
                if TABLES[r.table] != table or not (
                        r.address < address + count and address < r.address + r.width):
                    continue
                if r.behaviour == "changes_every_read":
                    r.advance(1)
                for k, w in enumerate(r.words()):
                    if address <= r.address + k < address + count:
                        out[r.address + k - address] = w
                if delivered and r.address >= address and r.address + r.width <= address + count:
                    self._log_served(r)
            return [bool(x) for x in out] if table == "c" else out

    def _log_served(self, r: Register) -> None:
        value = r.wire_value()
        if value != r.last_served or r.last_served is None:
            r.last_served = value
            self.ground_truth.record("register", value, tag=r.tag, address=r.address,
                                     table=r.table)

    # ---- controls ---------------------------------------------------------------------------

    def set_value(self, tag: str, value: Any) -> None:
        """Change a tag's value (checked against its type); served from the next read."""
        with self._lock:
            r = self._register(tag)
            check_value(r.type, value, f"{self.name}.{tag}")
            r.value = value

    def bump_counter(self, tag: str, n: int = 1) -> Any:
        """Count ``n`` more pieces on ``tag`` now (as the counter's own tick does)."""
        with self._lock:
            r = self._register(tag)
            r.advance(n)
            return r.value

    def value(self, tag: str) -> Any:
        with self._lock:
            return self._register(tag).value

    def _register(self, tag: str) -> Register:
        for r in self.registers:
            if r.tag == tag:
                return r
        raise KeyError(f"modbus PLC {self.name} has no tag {tag!r}")

    def exception_mode(self, code: int | None, table: str | None = None, first: int = 0,
                       last: int = 65535) -> None:
        """Answer reads touching ``first..last`` (of ``table``, or of any) with exception
        ``code``; ``None`` serves values again."""
        if code is not None and code not in EXCEPTION_CODES:
            raise ValueError(f"exception code {code!r} is not one of {EXCEPTION_CODES}")
        if table is not None and table not in TABLES:
            raise ValueError(f"table {table!r} is not one of {', '.join(TABLES)}")
        with self._lock:
            self._exception = None if code is None else (code, table, first, last)
        self.ground_truth.record("fault", code, expect=False, fault="exception",
                                 table=table, first=first, last=last)

    def silence(self, on: bool) -> None:
        """Keep accepting connections and requests but answer none of them."""
        self._silent = bool(on)
        self.ground_truth.record("fault", bool(on), expect=False, fault="silence")

    def drop_connections(self) -> int:
        """Close every client connection from the PLC's side; returns how many."""
        loop, server = self._loop, self._server
        if server is None or loop is None:
            return 0
        done = threading.Event()
        closed: list[int] = []

        def close() -> None:
            conns = list(server.active_connections.values())
            for c in conns:
                c.close()
            closed.append(len(conns))
            done.set()

        loop.call_soon_threadsafe(close)
        done.wait(5)
        n = closed[0] if closed else 0
        self.ground_truth.record("fault", n, expect=False, fault="drop")
        return n

    def connections(self) -> int:
        server = self._server
        return len(server.active_connections) if server is not None else 0

    def truth(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.ground_truth.entries)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "host": self.host, "port": self.port,
                "unit_id": self.unit_id, "running": self._thread is not None,
                "ground_truth": str(self.ground_truth.path) if self.ground_truth.path else None,
                "registers": [{"tag": r.tag, "table": r.table, "address": r.address,
                               "type": r.type, "word_order": r.word_order,
                               "behaviour": r.behaviour} for r in self.registers]}


# ---- the device type ``modbus`` (midshift/simulator/devices/__init__.py says what each name is for)

TYPE = "modbus"
EMULATOR = ModbusPLC
TRANSACTION = False
SERIAL = False
# registers as in the module docstring; the agent's register map is derived from them.
# rtu = true: the PLC is unit 1 on an emulated RS-485 line at baudrate (a pty at
# DIR/NAME, midshift/simulator/devices/modbus_rtu.py) and the agent polls it over Modbus RTU.
SCENARIO_KEYS = ("poll_ms", "registers", "rtu", "baudrate")
SCENARIO_NUMBERS: dict[str, tuple[float, float, float]] = {"baudrate": (19200, 1200, 115200)}


def emulate(name: str, spec: dict[str, Any], directory: Path, seed: int, speed: float,
            ground_truth: Path) -> ModbusPLC:
    regs = [dict(r) for r in spec.get("registers", [])] or None
    for r in regs or []:
        if "period_ms" in r:
            r["period_ms"] = max(1, int(r["period_ms"] / speed))
    plc = ModbusPLC(name, regs, "127.0.0.1", 0, 1, seed, ground_truth)
    if spec.get("rtu"):
        from midshift.simulator.devices.modbus_rtu import RtuLinePLC  # it builds on this module
        return RtuLinePLC(name, directory / name, [plc], baudrate=int(spec.get("baudrate", 19200)),
                          parity="N", stop_bits=2).start()
    return plc.start()


def site_table(name: str, spec: dict[str, Any], device: Any) -> list[str]:
    d = device.describe()
    poll = f"poll_ms = {spec.get('poll_ms', 200)}"
    if "units" in d:  # an RTU line: the agent's port is the line's pty, parity N on a pty
        unit, d = next(iter(d["units"].items()))
        lines = [f'port = "{device.link_path}"', f"unit_id = {unit}",
                 f"baudrate = {device.baudrate}", 'parity = "N"', "stop_bits = 2", poll,
                 "timeout_s = 0.5"]
    else:
        lines = ['host = "127.0.0.1"', f"port = {d['port']}", poll]
    for r in d["registers"]:
        lines.append(f"[[devices.{name}.registers]]\n" + "".join(
            f'{k} = "{r[k]}"\n' for k in ("tag", "table", "type", "word_order")
            if r.get(k) is not None) + f"address = {r['address']}")
    return lines


def truth_value(entry: dict[str, Any]) -> Any:
    return (entry.get("tag"), rounded(entry.get("value")))


def ledger_value(data: dict[str, Any]) -> Any:
    return (data.get("tag"), rounded(data.get("value")))
