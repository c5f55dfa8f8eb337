"""A PLC seen through OPC UA: asyncua's ``Server`` with variables that change on a period.

One object ``<name>`` under Objects holds the configured variables and a method:

- ``counter`` (UInt32): a parts counter, ``+step`` every period (wraps at 2**32);
- ``temperature`` (Double): a seeded random walk (``noise`` degrees per period, kept
  within ``min``..``max``), rounded to 0.1; written only when the rounded value moves;
- ``status`` (String): the machine state, a seeded pick from ``states`` (never the same
  one twice in a row) every ``change_every`` periods;
- ``ResetCounter()`` (method, no inputs, returns the number of counters it set to 0).

Node ids are strings and stable across restarts: ``ns=<idx>;s=<name>`` for the object,
``ns=<idx>;s=<name>.<tag>`` for a variable, ``ns=<idx>;s=<name>.ResetCounter``. The
namespace ``urn:midshift:sim:<name>`` (or ``namespace``) is the first one registered, so
its index is 2 on every start.

Config (``[devices.NAME]`` with ``type = "opcua"``; defaults shown)::

    endpoint = "opc.tcp://127.0.0.1:4840/midshift/plc"   # or host / port / path; port 0: any
    namespace = "urn:midshift:sim:NAME"
    period_ms = 500            # how often values move
    seed = 0                   # same seed and name: same temperatures and states
    certificate = "plc.der"    # optional, with private_key: offer Basic256Sha256 too
    # The agent's own table works too: nodes = [{tag, node_id = "ns=2;s=TEXT"}], each
    # served at its node id, typed by its tag (temperature if it has "temp", status if
    # "status", "state" or "mode", else counter); the agent's other keys are ignored.
    [[devices.NAME.variables]]  # default: counter, temperature, status
    tag = "counter"            # type "counter": start = 0, step = 1
    type = "counter"           # "temperature": start = 20.0, noise = 0.3, min = -40, max = 150
                               # "status": states = [...], change_every = 5 (periods)

A value is written only when it differs from the last one: a data-change subscription
(trigger StatusValue, asyncua's default) reports only changes, so every write is one
notification, and one ground-truth entry. Each write carries a SourceTimestamp (the
time the PLC "sampled" it) equal to ``source_ms`` in the ground truth.

The server runs in its own thread with its own asyncio loop; ``start()``, ``stop()`` and
the controls are synchronous and safe from any thread (they run in that loop).

Controls: ``set_value(tag, v)``, ``set_bad(tag, on, code)`` (the variable's DataValue
turns Bad, e.g. BadSensorFailure, with no value; its updates stop until it is Good
again, when its current value is written afresh), ``pause_updates()`` /
``resume_updates()``, ``restart(down_s)`` = ``power_off()`` + ``power_on()``: the server
(sessions, subscriptions, sockets) goes away and a new one comes up on the same endpoint
(port 0 is resolved at the first start and kept) with the same node ids and the values
(and their timestamps) it had; updates continue from there.

Ground truth (``GroundTruthLog``): every value written is kind ``opcua`` with
``expect=True`` and ``tag``, ``node``, ``source_ms``, ``source`` (``period``, ``set``,
``method``, ``good_again``); a value is logged before it is written, so every value a
client has seen is in ``truth()``. Bad status, Good again, method calls, power off and on
are kind ``fault`` with ``expect=False``.

Security: the None policy always; with ``certificate`` and ``private_key`` (the server's)
also Basic256Sha256 with Sign and SignAndEncrypt. Any client certificate is accepted.

Not modelled: certificate trust lists and rejection, other policies, users, history, events and
alarms, a source clock different from the host's, sampling (writes are reported as they
happen; a client's sampling interval is ignored by asyncua), values changing while the
server is off (a powered-off PLC produces nothing), ``set_value`` on a Bad variable
(stored, served when Good again).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from asyncua import Server, ua

from midshift.simulator.broker import free_port
from midshift.simulator.devices import rounded
from midshift.simulator.ground_truth import GroundTruthLog

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_KEYS = ("endpoint", "host", "port", "path", "namespace", "period_ms", "seed",
               "variables", "certificate", "private_key")
# Keys of the agent's table (midshift/firmware/edges/opcua.py) that are the client's business.
AGENT_ONLY_KEYS = ("publishing_ms", "sampling_ms", "queue_size", "timeout_s", "stale_s",
                   "security_policy", "security_mode", "certificate", "private_key",
                   "server_certificate")
NODE_ID_RE = re.compile(r"ns=2;s=(.+)\Z")
VARIABLE_KEYS = {
    "counter": ("tag", "type", "start", "step"),
    "temperature": ("tag", "type", "start", "noise", "min", "max"),
    "status": ("tag", "type", "states", "change_every"),
}
VARIANT_TYPES = {"counter": ua.VariantType.UInt32, "temperature": ua.VariantType.Double,
                 "status": ua.VariantType.String}
DEFAULT_VARIABLES: list[dict[str, Any]] = [
    {"tag": "counter", "type": "counter"},
    {"tag": "temperature", "type": "temperature"},
    {"tag": "status", "type": "status"},
]
DEFAULT_STATES = ["RUNNING", "IDLE", "SETUP", "STOPPED"]
TAG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
CALL_TIMEOUT_S = 30.0  # a control call waits this long for the server's loop at most


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch, exact: the same number a client computes."""
    return (ts - EPOCH) // timedelta(milliseconds=1)


class PlcVariable:
    """One variable's configuration and state: what it serves and how it moves."""

    def __init__(self, device: str, index: int, spec: Any, seed: int) -> None:
        where = f"devices.{device}.variables[{index}]"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: {spec!r} is not a table")
        kind = spec.get("type")
        if kind not in VARIABLE_KEYS:
            raise ValueError(f"{where}.type: {kind!r} is not one of {', '.join(VARIABLE_KEYS)}")
        self.ident: str = spec.get("ident") or f"{device}.{spec.get('tag')}"  # the node's s=
        spec = {k: v for k, v in spec.items() if k != "ident"}
        unknown = sorted(set(spec) - set(VARIABLE_KEYS[kind]))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} for type {kind}; "
                             f"allowed: {', '.join(VARIABLE_KEYS[kind])}")

        def check(key: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"{where}.{key}: {spec.get(key)!r} is not {expected}")

        tag = spec.get("tag")
        check("tag", isinstance(tag, str) and TAG_RE.match(tag) is not None,
              "a name of letters, digits and _ starting with a letter (at most 64)")
        self.tag: str = tag
        self.kind: str = kind
        self.vtype = VARIANT_TYPES[kind]
        self.rng = random.Random(f"{seed}:{device}:{tag}")
        self.bad: str | None = None  # the Bad status code's name while the sensor failed
        self.dv: ua.DataValue | None = None  # what the server holds (carried over restarts)
        self.periods = 0
        self.value: Any
        if kind == "counter":
            start, step = spec.get("start", 0), spec.get("step", 1)
            check("start", _is_int(start) and 0 <= start < 2**32, "an integer from 0 to 4294967295")
            check("step", _is_int(step) and 1 <= step < 2**31, "an integer from 1 to 2147483647")
            self.value, self.step = start, step
        elif kind == "temperature":
            start, noise = spec.get("start", 20.0), spec.get("noise", 0.3)
            low, high = spec.get("min", -40.0), spec.get("max", 150.0)
            check("min", _is_num(low), "a number")
            check("max", _is_num(high) and high > low, "a number above min")
            check("start", _is_num(start) and low <= start <= high, "a number from min to max")
            check("noise", _is_num(noise) and 0 <= noise <= 100, "a number from 0 to 100")
            self.value, self.noise = round(float(start), 1), float(noise)
            self.low, self.high = float(low), float(high)
            self._exact = float(start)  # the walk itself, unrounded
        else:
            states, every = spec.get("states", DEFAULT_STATES), spec.get("change_every", 5)
            check("states", isinstance(states, list) and len(states) >= 2
                  and all(isinstance(s, str) and s for s in states) and len(set(states)) == len(states),
                  "a list of two or more different non-empty strings")
            check("change_every", _is_int(every) and 1 <= every <= 1_000_000,
                  "an integer from 1 to 1000000 (periods)")
            self.states, self.change_every = list(states), every
            self.value = states[0]

    def next_value(self) -> Any:
        """The value after one more period (may equal the current one)."""
        self.periods += 1
        if self.kind == "counter":
            return (self.value + self.step) % 2**32
        if self.kind == "temperature":
            self._exact = min(self.high, max(self.low, self._exact + self.rng.gauss(0, self.noise)))
            return round(self._exact, 1)
        if self.periods % self.change_every:
            return self.value
        return self.rng.choice([s for s in self.states if s != self.value])

    def check_value(self, value: Any) -> Any:
        """``value`` as this variable's type; ValueError if it does not fit."""
        if self.kind == "counter":
            if not (_is_int(value) and 0 <= value < 2**32):
                raise ValueError(f"{self.tag}: {value!r} is not a UInt32")
            return value
        if self.kind == "temperature":
            if not _is_num(value):
                raise ValueError(f"{self.tag}: {value!r} is not a number")
            return float(value)
        if not isinstance(value, str):
            raise ValueError(f"{self.tag}: {value!r} is not a string")
        return value


class OpcUaPLC:
    """OPC UA PLC emulator on asyncua's server; see the module docstring."""

    kind = "opcua"

    def __init__(self, name: str, *, host: str = "127.0.0.1", port: int = 4840,
                 path: str = "/midshift/plc", namespace: str | None = None,
                 period_ms: int = 500, seed: int = 0,
                 variables: list[dict[str, Any]] | None = None,
                 certificate: str | Path | None = None, private_key: str | Path | None = None,
                 ground_truth_path: str | Path | None = None) -> None:
        def check(key: str, ok: bool, value: Any, expected: str) -> None:
            if not ok:
                raise ValueError(f"devices.{name}.{key}: {value!r} is not {expected}")

        check("host", isinstance(host, str) and bool(host), host, "a host name or address")
        check("port", _is_int(port) and 0 <= port <= 65535, port,
              "a port number from 0 (any free port) to 65535")
        check("path", isinstance(path, str) and path.startswith("/"), path,
              "a URL path starting with /")
        namespace = namespace if namespace is not None else f"urn:midshift:sim:{name}"
        check("namespace", isinstance(namespace, str) and bool(namespace), namespace,
              "a namespace URI")
        check("period_ms", _is_int(period_ms) and 10 <= period_ms <= 3_600_000, period_ms,
              "an integer from 10 to 3600000")
        check("seed", _is_int(seed), seed, "an integer")
        for key, file in (("certificate", certificate), ("private_key", private_key)):
            check(key, file is None or (isinstance(file, str | Path) and Path(file).is_file()),
                  file, "a readable file (the server's own, PEM or DER)")
        if (certificate is None) != (private_key is None):
            missing = "certificate" if certificate is None else "private_key"
            raise ValueError(f"devices.{name}.{missing}: is missing; certificate and "
                             "private_key go together")
        specs = DEFAULT_VARIABLES if variables is None else variables
        check("variables", isinstance(specs, list) and len(specs) >= 1, specs,
              "a list of one or more [[variables]] tables")
        self.variables: dict[str, PlcVariable] = {}
        for i, spec in enumerate(specs):
            var = PlcVariable(name, i, spec, seed)
            if var.tag in self.variables:
                raise ValueError(f"devices.{name}.variables[{i}].tag: {var.tag!r} is used twice")
            self.variables[var.tag] = var
        self.name = name
        self.host = host
        self.port = port  # the configured one; 0 is replaced by the bound port at start
        self.path = path
        self.namespace = namespace
        self.period_ms = period_ms
        self.seed = seed
        self.certificate = certificate
        self.private_key = private_key
        self.ground_truth = GroundTruthLog(ground_truth_path, name)
        self.ns_index: int | None = None
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._updater: asyncio.Task[None] | None = None
        self._paused = False
        self._stopped = False

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any],
                    ground_truth_dir: str | Path | None) -> OpcUaPLC:
        """Build from a ``[devices.NAME]`` table; the ground truth goes to ``DIR/NAME.jsonl``.

        ``endpoint = "opc.tcp://HOST:PORT/PATH"`` or ``host``/``port``/``path`` (not both)."""
        if "nodes" in cfg:
            cfg = agent_form(name, cfg)
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"devices.{name}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(CONFIG_KEYS)}")
        kwargs = dict(cfg)
        if "endpoint" in kwargs:
            endpoint = kwargs.pop("endpoint")
            both = sorted({"host", "port", "path"} & set(kwargs))
            if both:
                raise ValueError(f"devices.{name}.endpoint: give either endpoint or "
                                 f"{', '.join(both)}, not both")
            kwargs.update(parse_endpoint(name, endpoint))
        gt = None
        if ground_truth_dir is not None:
            Path(ground_truth_dir).mkdir(parents=True, exist_ok=True)
            gt = Path(ground_truth_dir) / f"{name}.jsonl"
        return cls(name, ground_truth_path=gt, **kwargs)

    # -- life cycle ------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def security_policies(self) -> list[ua.SecurityPolicyType]:
        """None always; Basic256Sha256 (Sign, SignAndEncrypt) with a certificate and key."""
        offered = [ua.SecurityPolicyType.NoSecurity]
        if self.certificate is not None:
            offered += [ua.SecurityPolicyType.Basic256Sha256_Sign,
                        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        return offered

    def start(self) -> OpcUaPLC:
        if self._thread is not None or self._stopped:
            raise RuntimeError(f"OPC UA PLC {self.name}: start() once per instance")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,),
                                        name=f"opcua-plc-{self.name}", daemon=True)
        self._thread.start()
        try:
            self._call(self._power_on(record=False))
        except BaseException:
            self._close_loop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (clients see the socket close), the loop, the thread, the log."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            try:
                self._call(self._power_off(record=False))
            except Exception:  # noqa: BLE001 - stop must finish, the log says what went wrong
                log.exception("%s: stopping the server failed", self.name)
        self._close_loop()
        self.ground_truth.close()

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            try:  # asyncua builds its address space in the loop's default executor
                self._call(loop.shutdown_default_executor())
            except Exception:  # noqa: BLE001 - a thread left over is logged, not fatal
                log.exception("%s: executor shutdown failed", self.name)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if thread.is_alive():
                log.warning("%s: server thread did not stop", self.name)
            else:
                loop.close()

    def __enter__(self) -> OpcUaPLC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Run ``coro`` in the server's loop and wait for its result."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError(f"OPC UA PLC {self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def truth(self) -> list[dict[str, Any]]:
        """The ground-truth entries so far (a value is logged before clients can see it)."""
        return list(self.ground_truth.entries)

    def node_id(self, tag: str) -> str:
        """The node id string of variable ``tag`` (``ns=2;s=line1.counter``)."""
        if tag not in self.variables:
            raise KeyError(f"{self.name}: no variable {tag!r}")
        return f"ns={self._ns()};s={self.variables[tag].ident}"

    def _ns(self) -> int:
        if self.ns_index is None:
            raise RuntimeError(f"OPC UA PLC {self.name} has not started")
        return self.ns_index

    def describe(self) -> dict[str, Any]:
        ns = self.ns_index
        running = self._server is not None
        return {
            "name": self.name, "kind": self.kind, "endpoint": self.endpoint,
            "namespace": self.namespace, "namespace_index": ns,
            "object": f"ns={ns};s={self.name}" if ns is not None else None,
            "nodes": {t: f"ns={ns};s={self.name}.{t}" for t in self.variables} if ns is not None else {},
            "types": {t: v.kind for t, v in self.variables.items()},
            "methods": {"ResetCounter": f"ns={ns};s={self.name}.ResetCounter"} if ns is not None else {},
            "security": [p.name for p in self.security_policies],
            "period_ms": self.period_ms, "running": running, "paused": self._paused,
            "bad": {t: v.bad for t, v in self.variables.items() if v.bad},
            "ground_truth": str(self.ground_truth.path) if self.ground_truth.path else None,
        }

    # -- controls --------------------------------------------------------------------

    def set_value(self, tag: str, value: Any) -> None:
        """Write ``value`` now (Good, fresh timestamp), as the PLC program would."""
        var = self._var(tag)
        value = var.check_value(value)
        self._call(self._set(var, value, "set"))

    def set_bad(self, tag: str, on: bool = True, code: str = "BadSensorFailure") -> None:
        """Turn ``tag`` Bad (``code``, a Bad status name) or Good again."""
        var = self._var(tag)
        status = getattr(ua.StatusCodes, code, None)
        if status is None or not ua.StatusCode(status).is_bad():
            raise ValueError(f"{code!r} is not the name of a Bad OPC UA status code")
        self._call(self._set_bad(var, on, code))

    def pause_updates(self) -> None:
        """Values stop changing (the server keeps serving them)."""
        self._paused = True
        self.ground_truth.record("fault", None, expect=False, fault="pause_updates")

    def resume_updates(self) -> None:
        self._paused = False
        self.ground_truth.record("fault", None, expect=False, fault="resume_updates")

    def power_off(self) -> None:
        """The server goes away: sockets close, sessions and subscriptions are lost."""
        self._call(self._power_off(record=True))

    def power_on(self) -> None:
        """A new server on the same endpoint, with the same nodes and values."""
        self._call(self._power_on(record=True))

    def restart(self, down_s: float = 0.0) -> None:
        """``power_off()``, ``down_s`` seconds of nothing, ``power_on()``."""
        self._call(self._restart(down_s), CALL_TIMEOUT_S + down_s)

    def _var(self, tag: str) -> PlcVariable:
        try:
            return self.variables[tag]
        except KeyError:
            raise KeyError(f"{self.name}: no variable {tag!r}; "
                           f"variables: {', '.join(self.variables)}") from None

    # -- in the loop -----------------------------------------------------------------

    async def _restart(self, down_s: float) -> None:
        await self._power_off(record=True)
        await asyncio.sleep(down_s)
        await self._power_on(record=True)

    async def _power_on(self, record: bool) -> None:
        if self._server is not None:
            return
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"midshift simulated PLC {self.name}")
        server.set_security_policy(self.security_policies)
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        server.set_identity_tokens([ua.AnonymousIdentityToken])  # users are not modelled
        idx = await server.register_namespace(self.namespace)
        obj = await server.nodes.objects.add_object(ua.NodeId(self.name, idx),
                                                    ua.QualifiedName(self.name, idx))
        for var in self.variables.values():
            node = await obj.add_variable(ua.NodeId(var.ident, idx),
                                          ua.QualifiedName(var.tag, idx),
                                          ua.Variant(var.value if var.kind != "status" else "",
                                                     var.vtype))
            if var.dv is not None:  # after a restart: exactly what it served before
                await server.write_attribute_value(node.nodeid, var.dv)
        await obj.add_method(ua.NodeId(f"{self.name}.ResetCounter", idx),
                             ua.QualifiedName("ResetCounter", idx), self._reset_counter,
                             [], [ua.VariantType.UInt32])
        await server.start()
        if self.port == 0 and server.bserver is not None:
            self.port = server.bserver.port  # kept: a restart comes back on the same endpoint
        self._server = server
        self.ns_index = idx
        if record:
            self.ground_truth.record("fault", None, expect=False, fault="power_on",
                                     endpoint=self.endpoint)
        first_start = all(v.dv is None for v in self.variables.values())
        if first_start:
            for var in self.variables.values():
                await self._write(var, var.value, "initial")
        self._updater = asyncio.get_running_loop().create_task(self._update_loop())
        log.info("%s: OPC UA server at %s (ns=%d %s)", self.name, self.endpoint, idx,
                 self.namespace)

    async def _power_off(self, record: bool) -> None:
        server, self._server = self._server, None
        if self._updater is not None:
            self._updater.cancel()
            try:
                await self._updater
            except asyncio.CancelledError:
                pass
            self._updater = None
        if server is None:
            return
        # asyncua's clock task sleeps 1 s between ticks and stop() waits for it; cancelling
        # it makes a restart 1 s quicker and changes nothing a client sees.
        clock_task = getattr(server.iserver, "time_task", None)
        if clock_task is not None:
            clock_task.cancel()
            try:
                await clock_task
            except asyncio.CancelledError:
                pass
            server.iserver.time_task = None
        await server.stop()
        if record:
            self.ground_truth.record("fault", None, expect=False, fault="power_off",
                                     endpoint=self.endpoint)
        log.info("%s: OPC UA server stopped", self.name)

    async def _update_loop(self) -> None:
        period_s = self.period_ms / 1000
        loop = asyncio.get_running_loop()
        next_t = loop.time() + period_s
        while True:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            next_t = max(next_t + period_s, loop.time())  # late ticks are skipped, not burst
            if self._paused:
                continue
            for var in self.variables.values():
                if var.bad:
                    continue
                value = var.next_value()
                if value != var.value:
                    await self._write(var, value, "period")

    async def _write(self, var: PlcVariable, value: Any, source: str) -> None:
        """Log, then write one Good value with a fresh SourceTimestamp."""
        ts = datetime.now(UTC)
        var.value = value
        dv = ua.DataValue(ua.Variant(value, var.vtype), ua.StatusCode(ua.StatusCodes.Good),
                          SourceTimestamp=ts, ServerTimestamp=ts)
        var.dv = dv
        self.ground_truth.record("opcua", value, expect=True, tag=var.tag,
                                 node=f"ns={self.ns_index};s={var.ident}",
                                 source_ms=_ms(ts), source=source)
        if self._server is not None:
            await self._server.write_attribute_value(self._node(var), dv)

    def _node(self, var: PlcVariable) -> ua.NodeId:
        return ua.NodeId(var.ident, self._ns())

    async def _set(self, var: PlcVariable, value: Any, source: str) -> None:
        if var.bad:
            var.value = value  # served when the sensor is Good again
            return
        await self._write(var, value, source)

    async def _set_bad(self, var: PlcVariable, on: bool, code: str) -> None:
        ts = datetime.now(UTC)
        node = f"ns={self.ns_index};s={var.ident}"
        if on:
            var.bad = code
            dv = ua.DataValue(ua.Variant(), ua.StatusCode(getattr(ua.StatusCodes, code)),
                              SourceTimestamp=ts, ServerTimestamp=ts)
            var.dv = dv
            self.ground_truth.record("fault", code, expect=False, fault="bad_status",
                                     tag=var.tag, node=node, source_ms=_ms(ts))
            if self._server is not None:
                await self._server.write_attribute_value(self._node(var), dv)
            return
        if not var.bad:
            return
        var.bad = None
        self.ground_truth.record("fault", "Good", expect=False, fault="good_status",
                                 tag=var.tag, node=node, source_ms=_ms(ts))
        await self._write(var, var.value, "good_again")

    async def _reset_counter(self, parent: ua.NodeId) -> list[ua.Variant]:
        """The ResetCounter method: every counter to 0 (a Bad one when Good again)."""
        self.ground_truth.record("fault", "ResetCounter", expect=False, fault="method_call")
        n = 0
        for var in self.variables.values():
            if var.kind == "counter":
                n += 1
                if var.value != 0:
                    await self._set(var, 0, "method")
        return [ua.Variant(n, ua.VariantType.UInt32)]


def variable_type(tag: str) -> str:
    """The emulated type of a node the agent's table names (it carries no type): by tag."""
    low = tag.lower()
    if "temp" in low:
        return "temperature"
    if any(word in low for word in ("status", "state", "mode")):
        return "status"
    return "counter"


def agent_form(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The agent's ``[devices.NAME]`` table (``endpoint``, ``nodes`` of ``{tag, node_id}``)
    as this emulator's: each node a variable served at its ``node_id`` (``ns=2;s=TEXT``:
    this server's namespace is index 2), its type by ``variable_type``; the agent's
    subscription and security settings are its own (its ``certificate`` is the client's,
    not this server's) and are left out."""
    if "variables" in cfg:
        raise ValueError(f"devices.{name}: give either nodes (the agent's form) or "
                         "variables, not both")
    out = {k: v for k, v in cfg.items() if k not in AGENT_ONLY_KEYS and k != "nodes"}
    nodes = cfg["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise ValueError(f"devices.{name}.nodes: {nodes!r} is not a list of {{tag, node_id}}")
    variables = []
    for i, node in enumerate(nodes):
        where = f"devices.{name}.nodes[{i}]"
        if not isinstance(node, dict) or set(node) - {"tag", "node_id"}:
            raise ValueError(f"{where}: {node!r} is not a {{tag, node_id}} table")
        tag, node_id = node.get("tag"), node.get("node_id")
        m = NODE_ID_RE.match(node_id) if isinstance(node_id, str) else None
        if m is None:
            raise ValueError(f"{where}.node_id: {node_id!r} is not ns=2;s=TEXT (a string "
                             "id in this server's namespace, index 2)")
        if not isinstance(tag, str):
            raise ValueError(f"{where}.tag: {tag!r} is not a name")
        variables.append({"tag": tag, "type": variable_type(tag), "ident": m.group(1)})
    out["variables"] = variables
    return out


def parse_endpoint(name: str, endpoint: Any) -> dict[str, Any]:
    """``opc.tcp://HOST:PORT/PATH`` to ``host``, ``port``, ``path``; ValueError if not."""
    where = f"devices.{name}.endpoint"
    expected = "an opc.tcp://HOST:PORT/PATH URL (port 0: any free port)"
    if not isinstance(endpoint, str):
        raise ValueError(f"{where}: {endpoint!r} is not {expected}")
    url = urlparse(endpoint)
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "opc.tcp" or not url.hostname or port is None:
        raise ValueError(f"{where}: {endpoint!r} is not {expected}")
    return {"host": url.hostname, "port": port, "path": url.path or "/"}


# ---- the device type ``opcua`` (midshift/simulator/devices/__init__.py says what each name is for)

TYPE = "opcua"
EMULATOR = OpcUaPLC
TRANSACTION = False
SERIAL = False
SCENARIO_KEYS = ("period_ms", "variables", "publishing_ms")
SCENARIO_NUMBERS: dict[str, tuple[float, float, float]] = {}


def emulate(name: str, spec: dict[str, Any], directory: Path, seed: int, speed: float,
            ground_truth: Path) -> OpcUaPLC:
    plc = OpcUaPLC(name, port=free_port(), seed=seed,
                   period_ms=max(20, int(spec.get("period_ms", 1000) / speed)),
                   ground_truth_path=ground_truth,
                   **({"variables": spec["variables"]} if "variables" in spec else {}))
    return plc.start()


def site_table(name: str, spec: dict[str, Any], device: OpcUaPLC) -> list[str]:
    d = device.describe()
    lines = [f'endpoint = "{d["endpoint"]}"', f"publishing_ms = {spec.get('publishing_ms', 50)}"]
    for tag, node in d["nodes"].items():
        lines.append(f'[[devices.{name}.nodes]]\ntag = "{tag}"\nnode_id = "{node}"')
    return lines


def truth_value(entry: dict[str, Any]) -> Any:
    return (entry.get("tag"), rounded(entry.get("value")))


def ledger_value(data: dict[str, Any]) -> Any:
    return (data.get("tag"), rounded(data.get("value")))
