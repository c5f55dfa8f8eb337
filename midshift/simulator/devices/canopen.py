"""A CANopen battery module (canopen's ``LocalNode``) on a python-can bus, with faults.

The node is described by ``battery_module.eds`` beside this file: pack voltage (mV), pack
current (mA), state of charge (0.1 %), warmest cell temperature (0.1 degC) in TPDO1 and
TPDO2 (event-driven, sent every ``tpdo_period_ms`` while OPERATIONAL), a contactor command
(0x2010, written over SDO) whose state (0x2011) follows it, and a cycle count (0x2020,
one more at every close) that a master polls over SDO. It boots as a CiA 301 slave does:
boot-up message, PRE-OPERATIONAL, heartbeat at 0x1017's default (1,000 ms) until a master
writes 0x1017, TPDOs only once a master sends NMT start.

Config (``[devices.NAME]``, type ``canopen``; the agent's table drives it too): ``node_id``
(16), ``interface`` and ``channel`` (``virtual``: the node sits on that in-process bus
channel; ``slcan`` (default): behind an emulated USB-CAN adapter whose pty is linked at
``channel``, see ``slcan_adapter.py``, so an agent in another process reaches it as it
would a real adapter; ``socketcan`` is refused: this host has none), ``seed`` (0),
``tpdo_period_ms`` (100). The agent's other keys (``bitrate``, ``eds``, ``tpdos``,
``objects`` ...) are ignored here.

Faults, switchable while running: ``heartbeat(False)`` (heartbeats stop, everything else
goes on), ``reboot()`` (boot-up message, PRE-OPERATIONAL, 0x1017 back to its default, TPDOs
stop until started again; values go on from where they were), ``emcy(code, register,
vendor)``, ``garbage()`` (frames of this node with wrong lengths and an unknown NMT state,
and a frame of nobody), ``silence(True)`` (the node neither sends nor hears anything: a
cut bus), ``sdo_abort(index, code)`` (SDO reads of that object are aborted with ``code``;
None clears). ``remap(tpdo, indexes)`` changes a TPDO's mapping away from the EDS.

Ground truth (``truth()``, ``DIR/NAME.jsonl``): every value the node put on the wire (in a
TPDO or an SDO answer) that differs from the last one it put there for that tag, kind
``canopen`` with ``tag``, ``index``, ``subindex``, ``via``; tags are the EDS names in
snake_case, as the agent's driver names unlisted objects. Every EMCY it sent, kind
``emcy`` (one event each). Faults, kind ``fault``, ``expect: false``. Values sent while
no master could hear them (``hearing()`` false: the adapter in front of the node is
unplugged or its channel closed) are logged with ``expect: false`` and ``unheard: true``.

Not modelled: bit timing and arbitration (the virtual bus delivers every frame at memory
speed, so bus load is modelled only by the rate the benchmark offers), error frames and
bus-off of the node itself, RPDOs, SYNC, SDO block transfer, stored parameters (0x1010).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import canopen
from canopen.sdo import SdoAbortedError

from midshift.simulator.devices import rounded
from midshift.simulator.ground_truth import GroundTruthLog

log = logging.getLogger(__name__)

EDS = Path(__file__).resolve().parent / "battery_module.eds"
CONFIG_KEYS = ("node_id", "interface", "channel", "seed", "tpdo_period_ms")
AGENT_ONLY_KEYS = ("bitrate", "eds", "tpdos", "pdo_mapping", "heartbeat_ms", "start_node",
                   "sdo_timeout_s", "objects")
OPERATIONAL = "OPERATIONAL"
# Start values and the largest step of each measurement per TPDO period.
MEASUREMENTS = {0x2001: (52_000, 40), 0x2002: (12_000, 300), 0x2003: (800, 1),
                0x2004: (250, 2)}
TPDOS = (1, 2)


def snake(name: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


class GatedBus(can.BusABC):
    """The node's own view of the bus: what it sends and hears passes a gate the faults
    close (silence: nothing either way; heartbeat off: its heartbeats only)."""

    def __init__(self, inner: can.BusABC, node_id: int) -> None:
        self.inner = inner
        self.node_id = node_id
        self.silent = False
        self.heartbeat_off = False
        self.sent = 0
        super().__init__(channel=getattr(inner, "channel_info", "gated"))

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self.silent:
            return
        if self.heartbeat_off and msg.arbitration_id == 0x700 + self.node_id and \
                bytes(msg.data) != b"\x00":
            return
        self.sent += 1
        self.inner.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        msg = self.inner.recv(timeout)
        if msg is None or self.silent:
            return None, False
        return msg, False

    def shutdown(self) -> None:
        super().shutdown()
        self.inner.shutdown()


class BatteryModule:
    """A battery module's CANopen node; see the module docstring."""

    kind = "canopen"

    def __init__(self, name: str, node_id: int = 16, channel: str = "midshift-can",
                 seed: int = 0, tpdo_period_ms: int = 100,
                 ground_truth: str | Path | None = None) -> None:
        self.name = name
        self.node_id = node_id
        self.channel = channel
        self.tpdo_period_ms = tpdo_period_ms
        self.rng = random.Random(seed)
        self.ground_truth = GroundTruthLog(ground_truth, name)
        self.values: dict[int, int] = {i: v for i, (v, _) in MEASUREMENTS.items()}
        self.values |= {0x2010: 0, 0x2011: 0, 0x2020: 0}
        self.tpdos_sent = 0
        self._aborts: dict[int, int] = {}
        self._last_sent: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.gate: GatedBus | None = None
        # Whether a master can hear this node now (an adapter in front of it says so):
        # values sent while it cannot are logged with expect false.
        self.hearing: Callable[[], bool] = lambda: True
        self.network: Any = None
        self.node: Any = None

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any],
                    ground_truth_dir: str | Path | None) -> Any:
        """The node on a virtual channel, or (``interface = "slcan"``) the adapter in
        front of it at ``channel``; not started."""
        cfg = {k: v for k, v in cfg.items() if k not in AGENT_ONLY_KEYS}
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"devices.{name}.{unknown[0]}: not a known key; "
                             f"allowed: {', '.join(CONFIG_KEYS)}")
        interface = cfg.get("interface", "slcan")
        if interface not in ("slcan", "virtual"):
            raise ValueError(f"devices.{name}.interface: {interface!r} cannot be emulated "
                             "here; allowed: slcan (a pty), virtual (in-process)")
        gt = None
        if ground_truth_dir is not None:
            Path(ground_truth_dir).mkdir(parents=True, exist_ok=True)
            gt = Path(ground_truth_dir) / f"{name}.jsonl"
        channel = str(cfg.get("channel", "midshift-can"))
        bus = channel if interface == "virtual" else f"slcan-{name}-{id(cfg):x}"
        node = cls(name, cfg.get("node_id", 16), bus, cfg.get("seed", 0),
                   cfg.get("tpdo_period_ms", 100), gt)
        if interface == "virtual":
            return node
        from midshift.simulator.devices.slcan_adapter import SlcanAdapter
        return SlcanAdapter(channel, node)

    # ---- life ------------------------------------------------------------------------

    def start(self) -> BatteryModule:
        if self._thread is not None:
            raise RuntimeError(f"canopen node {self.name}: already running")
        self.gate = GatedBus(can.Bus(interface="virtual", channel=self.channel),
                             self.node_id)
        self.network = canopen.Network(self.gate)
        self.network.NOTIFIER_CYCLE = 0.05
        self.node = canopen.LocalNode(self.node_id, canopen.import_od(str(EDS), self.node_id))
        self.network.add_node(self.node)
        self.node.add_read_callback(self._on_read)
        self.node.add_write_callback(self._on_write)
        for n in TPDOS:
            self.node.tpdo[n].read(from_od=True)
        self.network.connect()
        self._boot()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"canopen-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self.network is not None:
            self.node.nmt.stop_heartbeat()
            self.network.disconnect()
            self.network = None
        self.ground_truth.close()

    def __enter__(self) -> BatteryModule:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _boot(self) -> None:
        """CiA 301: INITIALISING (boot-up message), then PRE-OPERATIONAL with heartbeats."""
        nmt = self.node.nmt
        nmt.stop_heartbeat()
        self.node.data_store.pop(0x1017, None)
        nmt.state = "INITIALISING"
        nmt.state = "PRE-OPERATIONAL"

    def _run(self) -> None:
        period_s = self.tpdo_period_ms / 1000
        next_s = time.monotonic()
        while not self._stopping.is_set():
            next_s += period_s
            self._step()
            self.send_tpdos()
            self._stopping.wait(max(0.0, next_s - time.monotonic()))

    def _step(self) -> None:
        """Every measurement moves by up to its step (seeded), staying in its type."""
        with self._lock:
            for index, (_, step) in MEASUREMENTS.items():
                self.values[index] = max(0, min(65_000, self.values[index] + self.rng.randint(
                    -step, step)))

    def send_tpdos(self, tpdos: tuple[int, ...] = TPDOS) -> int:
        """Send the TPDOs once if OPERATIONAL (and the bus is not cut); the count sent."""
        sent = 0
        with self._lock:
            if self.node is None or self.node.nmt.state != OPERATIONAL or self.gate is None \
                    or self.gate.silent:
                return 0
            for n in tpdos:
                pdo = self.node.tpdo[n]
                for var in pdo.map:
                    var.raw = self.values[var.index]
                pdo.transmit()
                sent += 1
                for var in pdo.map:
                    self._served(var.od, self.values[var.index], "tpdo")
            self.tpdos_sent += sent
        return sent

    def _served(self, od: Any, value: Any, via: str) -> None:
        tag = snake(od.name)
        if self._last_sent.get(tag, object()) == value:
            return
        self._last_sent[tag] = value
        heard = self.hearing()
        self.ground_truth.record("canopen", value, expect=heard, tag=tag, index=od.index,
                                 subindex=od.subindex, via=via,
                                 **({} if heard else {"unheard": True}))

    # ---- the object dictionary's live values ------------------------------------------

    def _on_read(self, index: int, subindex: int, od: Any) -> Any:
        with self._lock:
            if index in self._aborts:
                raise SdoAbortedError(self._aborts[index])
            if index not in self.values:
                return None
            value = self.values[index]
            if self.gate is not None and not self.gate.silent:
                self._served(od, value, "sdo")
            return value

    def _on_write(self, index: int, subindex: int, od: Any, data: bytes) -> None:
        if index != 0x2010:
            return
        with self._lock:
            closed = 1 if data[0] else 0
            if closed and not self.values[0x2011]:
                self.values[0x2020] += 1
            self.values[0x2010] = self.values[0x2011] = closed

    def set_value(self, index: int, value: int) -> None:
        with self._lock:
            self.values[index] = value

    def command_contactor(self, closed: bool) -> None:
        """As a master's SDO write to 0x2010 would."""
        self._on_write(0x2010, 0, None, bytes([1 if closed else 0]))

    def remap(self, tpdo: int, indexes: tuple[int, ...]) -> None:
        """Map other objects into ``tpdo`` (as a maker's tool would, so the node's mapping
        no longer matches its EDS); kept across ``reboot()`` like a stored mapping."""
        with self._lock:
            pdo = self.node.tpdo[tpdo]
            pdo.clear()
            for index in indexes:
                pdo.add_variable(index)
            pdo.save()  # into the node's 0x1A00 + tpdo - 1, where an SDO read finds it

    # ---- faults ----------------------------------------------------------------------

    def _fault(self, fault: str, **extra: Any) -> None:
        self.ground_truth.record("fault", fault, expect=False, fault=fault, **extra)

    def heartbeat(self, on: bool) -> None:
        assert self.gate is not None
        self.gate.heartbeat_off = not on
        self._fault("heartbeat_on" if on else "heartbeat_off")

    def silence(self, on: bool) -> None:
        assert self.gate is not None
        self.gate.silent = on
        self._fault("silence_on" if on else "silence_off")

    def reboot(self) -> None:
        with self._lock:
            self._fault("reboot")
            self._boot()

    def emcy(self, code: int, register: int = 0, vendor: bytes = b"") -> None:
        with self._lock:
            if self.gate is None or self.gate.silent:
                return
            self.node.emcy.send(code, register, vendor)
            heard = self.hearing()
            self.ground_truth.record("emcy", code, expect=heard, error_register=register,
                                     **({} if heard else {"unheard": True}))

    def sdo_abort(self, index: int, code: int | None) -> None:
        with self._lock:
            if code is None:
                self._aborts.pop(index, None)
            else:
                self._aborts[index] = code
            self._fault("sdo_abort", index=index, code=code)

    def garbage(self) -> int:
        """Frames a noisy bus or a confused node puts out; the count sent."""
        assert self.gate is not None
        n = self.node_id
        frames = [(0x180 + n, b"\x01\x02\x03"), (0x280 + n, b"\x01\x02\x03\x04\x05\x06"),
                  (0x80 + n, b"\x10\x42"), (0x700 + n, b"\x05\x05"), (0x700 + n, b"\x42"),
                  (0x580 + n, b"\x43\x00"), (0x7FF, bytes(8))]
        for can_id, data in frames:
            self.gate.inner.send(can.Message(arbitration_id=can_id, data=data,
                                             is_extended_id=False))
        self._fault("garbage", frames=len(frames))
        return len(frames)

    # ---- reports ---------------------------------------------------------------------

    def truth(self) -> list[dict[str, Any]]:
        return list(self.ground_truth.entries)

    def nmt_state(self) -> str:
        return self.node.nmt.state if self.node is not None else "INITIALISING"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "node_id": self.node_id,
                "channel": self.channel, "eds": str(EDS), "running": self._thread is not None,
                "ground_truth": str(self.ground_truth.path) if self.ground_truth.path else None}


# ---- the device type ``canopen`` (midshift/simulator/devices/__init__.py says what each name is for)

TYPE = "canopen"
EMULATOR = BatteryModule
TRANSACTION = False
SERIAL = False
SCENARIO_KEYS = ("node_id", "tpdo_period_ms", "heartbeat_ms")
SCENARIO_NUMBERS: dict[str, tuple[float, float, float]] = {
    "node_id": (16, 1, 127), "tpdo_period_ms": (100, 10, 60_000),
    "heartbeat_ms": (200, 10, 65_535)}


def emulate(name: str, spec: dict[str, Any], directory: Path, seed: int, speed: float,
            ground_truth: Path) -> Any:
    """The node behind a USB-CAN adapter on a pty at ``directory/name``: the agent runs
    in a process of its own, and the slcan protocol is how it would reach a real bus."""
    from midshift.simulator.devices.slcan_adapter import SlcanAdapter
    period = max(10, int(spec.get("tpdo_period_ms", 100) / speed))
    node = BatteryModule(name, int(spec.get("node_id", 16)), f"sim-{name}-{seed}", seed,
                         period, ground_truth)
    return SlcanAdapter(directory / name, node).start()


def site_table(name: str, spec: dict[str, Any], device: Any) -> list[str]:
    d = device.describe()
    return ['interface = "slcan"', f'channel = "{d["port"]}"', f"node_id = {d['node_id']}",
            f'eds = "{d["eds"]}"', "tpdos = [1, 2]",
            f"heartbeat_ms = {int(spec.get('heartbeat_ms', 200))}"]


def truth_value(entry: dict[str, Any]) -> Any:
    if entry.get("kind") == "emcy":
        return ("emcy", entry.get("value"))
    return (entry.get("tag"), rounded(entry.get("value")))


def ledger_value(data: dict[str, Any]) -> Any:
    if "tag" not in data:
        return ("emcy", data.get("code"))
    return (data.get("tag"), rounded(data.get("value")))
