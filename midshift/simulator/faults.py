"""The fault kinds a scenario's ``[[fault]]`` tables name: one class per kind.

A kind holds everything about itself: the keys its table may carry (besides ``at_s`` and
``kind``, and ``for_s`` and ``gateways`` where they apply), the check of those keys (an
error names the file, the key, the value and what was expected), the label the progress
lines and the report show, and how it starts on a running site and how it is undone
after ``for_s``. Defining a subclass of ``FaultKind`` with a ``name`` registers it: the
scenario loader and the timeline find it in ``KINDS``; nothing else lists kinds.

A kind's ``start`` runs on the timeline's one thread, in time order, so two faults never
race. It returns the undo (played ``for_s`` later) or None for a moment (a clock jump,
garbage from a scanner), which leaves a window with start == end.

Link modes are the fault proxy's own (``midshift.simulator.network.PARAMS``): the scenario's link
keys are the union of the modes' parameters, and the proxy checks a mode's values.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from midshift.simulator.network import PARAMS, check_mode
from midshift.simulator.power import tear_journal_tail

if TYPE_CHECKING:
    from midshift.simulator.scenario import Scenario, ScenarioError
    from midshift.simulator.site import Gateway, SimulatedSite

Undo = Callable[[], Any]


class TableCheck(Protocol):
    """What a kind's check is handed by the loader: errors that name file and key path."""

    def fail(self, key: str, problem: str) -> ScenarioError: ...
    def num(self, key: str, default: Any = None, lo: float = 0.0, hi: float = 1e9) -> float: ...


class FaultKind:
    """One kind of fault. Subclasses set ``name`` and ``keys`` and override what they need."""

    name: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    lasting: ClassVar[bool] = True  # takes for_s
    per_gateway: ClassVar[bool] = True  # takes gateways
    # None: the fault may be a moment; else the error when for_s is missing.
    needs_duration: ClassVar[str | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            KINDS[cls.name] = cls

    @classmethod
    def allowed_keys(cls) -> tuple[str, ...]:
        return (("at_s", "kind") + ("for_s",) * cls.lasting + ("gateways",) * cls.per_gateway
                + cls.keys)

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        """Check ``params`` (the table without the common keys); fill in defaults."""

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return cls.name

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        raise NotImplementedError


KINDS: dict[str, type[FaultKind]] = {}


class Link(FaultKind):
    """A fault proxy's mode on one uplink (or "all") of the chosen gateways."""

    name = "link"
    keys = ("uplink", "mode", *sorted({k for p in PARAMS.values() for k in p}))
    needs_duration = "a link fault needs a duration"
    modes = tuple(m for m in PARAMS if m != "pass")

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        mode = params.get("mode")
        if mode not in cls.modes:
            raise t.fail("mode", f"must be one of {', '.join(cls.modes)}")
        up = params.setdefault("uplink", "all")
        if up != "all" and up not in sc.uplinks:
            raise t.fail("uplink", f"{up!r} is not \"all\" or one of {sc.uplinks}")
        given = {k: v for k, v in params.items() if k not in ("mode", "uplink")}
        for k in given:
            if k not in PARAMS[mode]:
                raise t.fail(k, f"not a parameter of mode {mode}; it takes: "
                             f"{', '.join(PARAMS[mode]) or 'none'}")
        try:
            check_mode(mode, given)
        except ValueError as exc:
            raise t.fail("mode", str(exc)) from None

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return f"{p['uplink']} {p['mode']}"

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        names = site.scenario.uplinks if p["uplink"] == "all" else [p["uplink"]]
        mode_params = {k: v for k, v in p.items() if k in PARAMS[p["mode"]]}
        for g in gws:
            for n in names:
                g.proxies[n].set_mode(p["mode"], **mode_params)
        return lambda: [g.proxies[n].set_mode("pass") for g in gws for n in names]


class BrokerFault(FaultKind):
    """Crash (SIGKILL) or stop (SIGTERM) the broker, back after for_s; ``keep_state =
    false`` brings it back without its persisted sessions and retained messages (a broker
    on tmpfs, or one replaced by a fresh instance)."""

    name = "broker"
    keys = ("action", "keep_state")
    per_gateway = False  # the site's one broker
    needs_duration = "how long the broker stays down is required"

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        if params.setdefault("action", "crash") not in ("crash", "stop"):
            raise t.fail("action", "must be crash or stop")
        if not isinstance(params.setdefault("keep_state", True), bool):
            raise t.fail("keep_state", "must be true or false")

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return f"broker {p['action']}" + ("" if p.get("keep_state", True) else " (state lost)")

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        broker = site.broker
        (broker.crash if p["action"] == "crash" else broker.stop)()
        if not p.get("keep_state", True):
            broker.db_path.unlink(missing_ok=True)  # back empty: no sessions, no retained
        return broker.start


class PowerCut(FaultKind):
    """SIGKILL the agent, optionally tear its journal tail; power back after for_s.
    A gateway with tills is cut while one of them waits for the answer to a POST (the
    cut waits up to ``MID_POST_WAIT_S`` for one), so a transaction is in flight when the
    power goes; ``mid_post`` in the fault's detail names the tills that were."""

    name = "power_cut"
    keys = ("torn_tail",)
    needs_duration = "how long the power stays off is required"
    MID_POST_WAIT_S = 3.0

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        params.setdefault("torn_tail", False)

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return "power cut" + (" (torn tail)" if p.get("torn_tail") else "")

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        for g in gws:
            if g.tills:
                deadline = time.monotonic() + cls.MID_POST_WAIT_S
                while time.monotonic() < deadline and not any(t.posting.is_set()
                                                              for t in g.tills):
                    time.sleep(0.002)  # polling the tills' flags, bounded by the deadline
                detail.setdefault("mid_post", []).extend(
                    f"{g.gw_id} {t.till}" for t in g.tills if t.posting.is_set())
            g.kill_agent()
            if p.get("torn_tail"):
                detail.setdefault("torn", {})[g.gw_id] = tear_journal_tail(g.journal_dir, rng)
        return lambda: [g.start_agent() for g in gws]


class Clock(FaultKind):
    """jump_s (a step) or skew_s (set the offset) or drift_ppm on the agent's clock."""

    name = "clock"
    keys = ("jump_s", "skew_s", "drift_ppm")
    lasting = False  # a step, an offset or a rate: it stays

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        given = [k for k in cls.keys if k in params]
        if len(given) != 1:
            raise t.fail("", "give exactly one of jump_s, skew_s, drift_ppm")
        t.num(given[0], lo=-1e8, hi=1e8)

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        k = next(k for k in cls.keys if k in p)
        return f"clock {k.removesuffix('_s').replace('_', ' ')} {p[k]:+g}"

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        for g in gws:
            assert g.clock is not None
            if "jump_s" in p:
                g.clock.jump(p["jump_s"] * 1000)
            elif "skew_s" in p:
                g.clock.skew(p["skew_s"] * 1000)
            else:
                g.clock.drift(p["drift_ppm"])
        return None


class BadInput(FaultKind):
    """Bad bytes from a device: garbage | overlong | partial | noise from a scanner (count
    times, a moment); overload | underload | unstable from a scale (for for_s)."""

    name = "bad_input"
    keys = ("device", "input", "count")
    # input -> (device type, what the emulator does once); a scale's states last until
    # its clear_faults(), so they are undone after for_s.
    INPUTS: ClassVar[dict[str, tuple[str, Callable[[Any], Any]]]] = {
        "garbage": ("scanner", lambda d: d.garbage(24, end_line=True)),  # noise between scans
        "overlong": ("scanner", lambda d: d.overlong(600)),
        "partial": ("scanner", lambda d: d.partial_then_silence(0.3)),
        "noise": ("scanner", lambda d: d.wrong_baud_noise(32)),
        "overload": ("scale", lambda d: d.overload()),
        "underload": ("scale", lambda d: d.underload()),
        "unstable": ("scale", lambda d: d.unstable_forever()),
    }
    LASTING = ("scale",)

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        dev = params.get("device")
        if dev not in sc.devices:
            raise t.fail("device", f"{dev!r} is not one of {', '.join(sc.devices)}")
        dtype = sc.devices[dev]["type"]
        allowed = [i for i, (d, _) in cls.INPUTS.items() if d == dtype]
        if params.get("input") not in allowed:
            raise t.fail("input", f"a {dtype} can send: {', '.join(allowed) or 'nothing bad here'}")
        params["count"] = int(t.num("count", 1, 1, 1000))

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return f"{p['device']} {p['input']}"

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        dtype, play = cls.INPUTS[p["input"]]
        devices = [g.devices[p["device"]] for g in gws]
        if dtype in cls.LASTING:
            for d in devices:
                play(d)
            return lambda: [d.clear_faults() for d in devices]
        for d in devices:
            for _ in range(p["count"]):
                play(d)
        return None


class CanNode(FaultKind):
    """A CANopen node's trouble: reboot | emcy | garbage (a moment, ``count`` times);
    heartbeat_stop | silence (its heartbeats, or everything it sends and hears, for for_s);
    unplug (the USB-CAN adapter pulled out, put back after for_s; without for_s, at once)."""

    name = "can_node"
    keys = ("device", "fault", "count", "code")
    MOMENTS: ClassVar[dict[str, Callable[[Any, dict[str, Any]], Any]]] = {
        "reboot": lambda a, p: a.node.reboot(),
        "emcy": lambda a, p: a.node.emcy(p["code"]),
        "garbage": lambda a, p: a.node.garbage(),
    }
    LASTING: ClassVar[dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]] = {
        "heartbeat_stop": (lambda a: a.node.heartbeat(False), lambda a: a.node.heartbeat(True)),
        "silence": (lambda a: a.node.silence(True), lambda a: a.node.silence(False)),
        "unplug": (lambda a: a.unplug(), lambda a: a.replug()),
    }

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        dev = params.get("device")
        if dev not in sc.devices or sc.devices[dev]["type"] != "canopen":
            names = [n for n, s in sc.devices.items() if s["type"] == "canopen"]
            raise t.fail("device", f"{dev!r} is not one of the canopen devices "
                         f"({', '.join(names) or 'none'})")
        if params.get("fault") not in (*cls.MOMENTS, *cls.LASTING):
            raise t.fail("fault", f"{params.get('fault')!r} is not one of "
                         f"{', '.join((*cls.MOMENTS, *cls.LASTING))}")
        params["count"] = int(t.num("count", 1, 1, 100))
        params["code"] = int(t.num("code", 0x1000, 0, 0xFFFF))

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return f"{p['device']} {p['fault']}"

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        adapters = [g.devices[p["device"]] for g in gws]
        if p["fault"] in cls.LASTING:
            begin, end = cls.LASTING[p["fault"]]
            for a in adapters:
                begin(a)
            return lambda: [end(a) for a in adapters]
        for a in adapters:
            for _ in range(p["count"]):
                cls.MOMENTS[p["fault"]](a, p)
        return None


class Erp(FaultKind):
    """The ERP (``[erp]``) answers 503 with Retry-After (``503``), refuses connections
    (``refuse``) or answers after 2 s (``slow``); back after for_s."""

    name = "erp"
    keys = ("mode",)
    per_gateway = False  # the site's one ERP
    needs_duration = "how long the ERP stays down is required"
    modes = ("503", "refuse", "slow")

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        if not sc.erp:
            raise t.fail("kind", "an erp fault needs an [erp] table")
        if params.setdefault("mode", "503") not in cls.modes:
            raise t.fail("mode", f"must be one of {', '.join(cls.modes)}")

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return f"ERP {'slow' if p['mode'] == 'slow' else 'down (' + p['mode'] + ')'}"

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        site.both_ways.erp_down(p["mode"])
        return site.both_ways.erp_back


class Refdata(FaultKind):
    """Not a fault of the site's: head office publishes new prices (``share`` of the SKUs
    change) to every gateway, whatever state their links are in."""

    name = "refdata"
    keys = ("share",)
    lasting = False
    per_gateway = False

    @classmethod
    def check(cls, params: dict[str, Any], sc: Scenario, t: TableCheck) -> None:
        if not sc.refdata:
            raise t.fail("kind", "a refdata change needs a [refdata] table")
        params["share"] = t.num("share", 0.5, 0.01, 1)

    @classmethod
    def label(cls, p: dict[str, Any]) -> str:
        return f"new prices ({p['share']:.0%} of SKUs)"

    @classmethod
    def start(cls, p: dict[str, Any], site: SimulatedSite, gws: list[Gateway],
              rng: random.Random, detail: dict[str, Any]) -> Undo | None:
        detail["version"] = site.both_ways.change_prices(p["share"])
        return None
