"""A scenario file (``midshift/simulator/scenarios/<name>.toml``): gateways, their devices and
traffic, a timeline of faults, and what must hold afterwards.

Times are *scenario seconds*. ``--speed X`` plays them X times faster (waits shrink, device
rates grow by X, so a shift produces the same events in less wall time) up to the file's
``max_speed``; the agents themselves are never sped up, so their keepalives, failover and
reconnects run at real speed inside the compressed timeline. ``--short`` plays the file's
``[short]`` version: every time multiplied by ``time_scale`` (device rates unchanged, so
fewer events), which is what ``make test`` runs.

Layout (every key is checked; an unknown key or a bad value is one line naming it)::

    [scenario]  name, description, duration_s, max_speed, settle_s
    [short]     time_scale, gateways, virtual_gateways
    [broker]    persistence
    [gateways]  count, status_period_s, uplinks = ["primary", "secondary"],
                metered = ["secondary"]
    [devices.NAME]  type (a module in midshift/simulator/devices/) and its traffic: the keys are
                the type module's SCENARIO_KEYS
    [fleet]     virtual_gateways, backlog, at_s, jitter_s, rate_per_s, live_s: virtual
                gateways (midshift/simulator/fleet.py) that come back at at_s with a backlog each
    [[fault]]   at_s, kind, ...: one class per kind in midshift/simulator/faults.py holds its keys
    [ledger]    db = "sqlite" (default) | "postgresql" (a throwaway cluster for the run)
    [clock]     at_s, reads = "2026-10-25T03:00:00+02:00": every clock of the site (the
                agents', the ledger's, the tills') reads that instant at scenario second
                at_s (scaled with the rest by --speed and --short) and runs at real speed
                (midshift/simulator/clock.py); without it they read the host's time
    [expect]    metric = number (equal) or "OP number" (<=, <, >=, >, ==),
                alarms_raised = ["clock_offset", ...]
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midshift.simulator import devices as device_types
from midshift.simulator.faults import KINDS

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
METRICS = ("events", "lost", "duplicates", "corrupt", "recovery_s_max", "latency_p99_ms",
           "failovers", "unobserved", "rejected_lines", "torn_tails_repaired",
           "fleet_lost", "fleet_drain_s",
           # the tills (midshift/simulator/till_judge.py)
           "till_accepted", "till_accepted_missing", "till_accepted_twice", "till_altered",
           "till_refused", "till_refused_in_ledger", "till_unknown", "till_conflicts_unflagged",
           "till_unknown_originals_unflagged", "full_pans_found", "till_retries",
           "till_utc_offsets", "till_business_days",
           # both ways: the ERP and the reference data (midshift/simulator/both_ways_judge.py)
           "erp_transactions", "erp_accepted", "erp_missing", "erp_extra", "erp_altered",
           "erp_redeliveries", "erp_rate_limited", "ghost_units", "webshop_orders",
           "card_numbers_left_ledger", "feed_messages", "card_numbers_in_feed",
           "price_lookups", "price_lookups_unanswered", "prices_served_offline_old",
           "stale_prices_served_online", "price_versions_published")
LEDGER_DBS = ("sqlite", "postgresql")  # postgresql: a throwaway cluster (midshift/simulator/postgres.py)
_OPS = ("<=", ">=", "==", "<", ">")


class ScenarioError(ValueError):
    """A scenario file that cannot run: the message names the file, the key and the fix."""


@dataclass
class Fault:
    at_s: float
    kind: str
    for_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    gateways: list[int] | None = None  # indices; None: all

    @property
    def window(self) -> bool:
        """Whether the fault lasts (an outage to recover from) rather than being a moment."""
        return self.for_s > 0


@dataclass
class Expectation:
    metric: str
    op: str
    value: float | list[str]

    def holds(self, actual: Any) -> bool:
        if self.metric == "alarms_raised":
            return set(self.value) <= set(actual)  # type: ignore[arg-type]
        if actual is None:
            return False
        v = float(self.value)  # type: ignore[arg-type]
        return {"<=": actual <= v, ">=": actual >= v, "==": actual == v, "<": actual < v,
                ">": actual > v}[self.op]

    def text(self) -> str:
        if self.metric == "alarms_raised":
            return f"alarms raised include {', '.join(self.value)}"  # type: ignore[arg-type]
        return f"{self.metric} {self.op} {self.value:g}"  # type: ignore[str-format]


@dataclass
class Scenario:
    name: str
    path: Path
    description: str
    duration_s: float
    max_speed: float
    settle_s: float
    short_scale: float
    persistence: bool
    ledger_db: str
    gateway_count: int
    status_period_s: float
    uplinks: list[str]
    metered: list[str]
    fleet: dict[str, Any]
    tills: dict[str, Any]
    erp: dict[str, Any]
    refdata: dict[str, Any]
    short: dict[str, Any]
    clock: dict[str, Any]
    devices: dict[str, dict[str, Any]]
    faults: list[Fault]
    expect: list[Expectation]

    def shortened(self) -> Scenario:
        """The ``[short]`` version: every scenario time multiplied by ``time_scale``."""
        k = self.short_scale
        faults = [Fault(f.at_s * k, f.kind, f.for_s * k, dict(f.params), f.gateways)
                  for f in self.faults]
        tills = dict(self.tills)
        if tills:
            tills["busy"] = [tills["busy"][0] * k, tills["busy"][1] * k, tills["busy"][2]]
        clock = dict(self.clock)
        if clock:
            clock["at_s"] *= k
        fleet = dict(self.fleet)
        if fleet:
            fleet["at_s"] *= k
            fleet["virtual_gateways"] = self.short.get("virtual_gateways",
                                                       fleet["virtual_gateways"])
        return Scenario(**{**self.__dict__, "duration_s": self.duration_s * k,
                           "faults": faults, "name": self.name + " (short)", "fleet": fleet,
                           "tills": tills, "clock": clock,
                           "gateway_count": self.short.get("gateways", self.gateway_count)})


def _err(path: Path, key: str, problem: str) -> ScenarioError:
    return ScenarioError(f"{path.name}: {key}: {problem}")


def _num(path: Path, table: dict[str, Any], key: str, where: str, default: Any = None,
         lo: float = 0.0, hi: float = 1e9) -> float:
    v = table.get(key, default)
    if v is None:
        raise _err(path, f"{where}.{key}", "is required (a number)")
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise _err(path, f"{where}.{key}", f"{v!r} is not a number from {lo:g} to {hi:g}")
    return float(v)


def _only(path: Path, table: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _err(path, f"{where}.{unknown[0]}", f"not a known key; allowed: {', '.join(allowed)}")


def find(name_or_path: str) -> Path:
    """``shift`` or ``shift.toml`` (from ``midshift/simulator/scenarios/``) or a path to a file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = SCENARIO_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(q.stem for q in SCENARIO_DIR.glob("*.toml")))
    raise ScenarioError(f"scenario {name_or_path!r}: no such file; shipped scenarios: {known}")


def load(name_or_path: str) -> Scenario:
    path = find(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from None
    _only(path, doc, "(top)", ("scenario", "short", "broker", "gateways", "devices", "fault",
                               "expect", "fleet", "ledger", "tills", "clock", "erp",
                               "refdata"))
    sc = doc.get("scenario", {})
    _only(path, sc, "scenario", ("name", "description", "duration_s", "max_speed", "settle_s"))
    short = doc.get("short", {})
    _only(path, short, "short", ("time_scale", "gateways", "virtual_gateways"))
    for key in ("gateways", "virtual_gateways"):
        if key in short:
            short[key] = int(_num(path, short, key, "short", lo=1, hi=100000))
    broker = doc.get("broker", {})
    _only(path, broker, "broker", ("persistence",))
    ledger = doc.get("ledger", {})
    _only(path, ledger, "ledger", ("db",))
    if ledger.get("db", "sqlite") not in LEDGER_DBS:
        raise _err(path, "ledger.db", f"{ledger['db']!r} is not one of {', '.join(LEDGER_DBS)}")
    gws = doc.get("gateways", {})
    _only(path, gws, "gateways", ("count", "status_period_s", "uplinks", "metered"))
    uplinks = gws.get("uplinks", ["primary", "secondary"])
    if not (isinstance(uplinks, list) and 1 <= len(uplinks) <= 4
            and all(isinstance(u, str) and re.fullmatch(r"[a-z][a-z0-9_]*", u) for u in uplinks)):
        raise _err(path, "gateways.uplinks", f"{uplinks!r} is not a list of 1 to 4 names")
    metered = gws.get("metered", [])
    if not isinstance(metered, list) or not set(metered) <= set(uplinks):
        raise _err(path, "gateways.metered", f"{metered!r} must name uplinks from {uplinks}")
    duration = _num(path, sc, "duration_s", "scenario", lo=1, hi=86400)
    scenario = Scenario(
        name=str(sc.get("name", path.stem)), path=path,
        description=str(sc.get("description", "")), duration_s=duration,
        max_speed=_num(path, sc, "max_speed", "scenario", 1, 1, 100),
        settle_s=_num(path, sc, "settle_s", "scenario", 30, 1, 3600),
        short_scale=_num(path, short, "time_scale", "short", 1.0, 0.001, 1),
        persistence=bool(broker.get("persistence", True)),
        ledger_db=ledger.get("db", "sqlite"),
        gateway_count=int(_num(path, gws, "count", "gateways", 1, 1, 500)),
        status_period_s=_num(path, gws, "status_period_s", "gateways", 1, 0.1, 60),
        uplinks=uplinks, metered=metered, fleet={}, tills={}, erp={}, refdata={}, short=short,
        clock=_clock(path, doc.get("clock", {}), duration),
        devices=_devices(path, doc.get("devices", {})),
        faults=[], expect=_expect(path, doc.get("expect", {})))
    scenario.tills = _tills(path, doc.get("tills", {}), duration, scenario.clock)
    scenario.erp = _erp(path, doc.get("erp", {}), scenario.tills)
    scenario.refdata = _refdata(path, doc.get("refdata", {}), scenario.tills)
    scenario.faults = [_fault(path, i, f, scenario) for i, f in enumerate(doc.get("fault", []))]
    scenario.fleet = _fleet(path, doc.get("fleet", {}), duration)
    return scenario


def _erp(path: Path, t: dict[str, Any], tills: dict[str, Any]) -> dict[str, Any]:
    """``[erp]``: the ERP emulator (midshift/simulator/erp.py) the ledger delivers to. ``rate_per_s``
    is the ERP's own limit (429 beyond), ``ledger_rate_per_s`` and ``batch`` the ledger's
    ``--erp-rate`` and ``--erp-batch``; ``stock_units`` per SKU at the ERP; the web shop
    sells from it at ``webshop_orders_per_s``; ``feed``: the plain-JSON feed on."""
    if not t:
        return {}
    if not tills:
        raise _err(path, "erp", "needs [tills]: the ERP receives the tills' transactions")
    _only(path, t, "erp", ("rate_per_s", "ledger_rate_per_s", "batch", "stock_units",
                           "webshop_orders_per_s", "feed"))
    if not isinstance(t.get("feed", True), bool):
        raise _err(path, "erp.feed", "must be true or false")
    return {"rate_per_s": _num(path, t, "rate_per_s", "erp", 50, 0.1, 10000),
            "ledger_rate_per_s": _num(path, t, "ledger_rate_per_s", "erp", 50, 0.1, 10000),
            "batch": int(_num(path, t, "batch", "erp", 100, 1, 500)),
            "stock_units": int(_num(path, t, "stock_units", "erp", 1000, 0, 1e7)),
            "webshop_orders_per_s": _num(path, t, "webshop_orders_per_s", "erp", 0, 0, 100),
            "feed": t.get("feed", True)}


def _refdata(path: Path, t: dict[str, Any], tills: dict[str, Any]) -> dict[str, Any]:
    """``[refdata]``: the store's prices (the tills' list, version 1 before the agents
    start) and ``stock_units`` per SKU, published to every gateway; the tills look their
    prices up on the gateway. ``grace_s``: host seconds a published version may take to
    reach an online gateway before the judge calls an older answer stale."""
    if not t:
        return {}
    if not tills:
        raise _err(path, "refdata", "needs [tills]: they read the prices")
    _only(path, t, "refdata", ("stock_units", "grace_s"))
    return {"stock_units": int(_num(path, t, "stock_units", "refdata", 0, 0, 1e7)),
            "grace_s": _num(path, t, "grace_s", "refdata", 3, 0, 600)}


def _clock(path: Path, t: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """``[clock]``: the instant (``reads``, ISO 8601 with its UTC offset: an instant, so a
    repeated local hour is not ambiguous) every clock of the site reads at ``at_s``."""
    if not t:
        return {}
    _only(path, t, "clock", ("at_s", "reads"))
    import datetime as dt
    reads = t.get("reads")
    try:
        when = dt.datetime.fromisoformat(reads) if isinstance(reads, str) else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None:
        raise _err(path, "clock.reads", f"{reads!r} is not ISO 8601 with a UTC offset "
                   "(2026-10-25T03:00:00+02:00)")
    return {"at_s": _num(path, t, "at_s", "clock", hi=duration_s), "reads": reads,
            "reads_ms": round(when.timestamp() * 1000)}


TILL_KEYS = ("count", "store", "tz", "business_day", "rate_per_s", "busy", "double_submit",
             "wrong_clock_till", "clock_offset_s", "full_pan_every", "unknown_refund_every",
             "split_brain_till", "rules")


def _tills(path: Path, t: dict[str, Any], duration_s: float,
           clock: dict[str, Any]) -> dict[str, Any]:
    """``[tills]``: till emulators (midshift/simulator/devices/till.py) posting to each gateway's
    till API; ``busy = [from_s, to_s, factor]`` multiplies their rate (the busiest hour);
    ``split_brain_till``: a second till posting under that till's id and numbers;
    ``rules``: the gateway's ``[sell_rules]``. ``business_day = "today"``: the store's
    date at the start of the run (by the ``[clock]`` when there is one, at speed 1)."""
    if not t:
        return {}
    _only(path, t, "tills", TILL_KEYS)
    busy = t.get("busy", [0, 0, 1])
    if not (isinstance(busy, list) and len(busy) == 3
            and all(isinstance(x, int | float) and x >= 0 for x in busy)
            and busy[0] <= busy[1] <= duration_s):
        raise _err(path, "tills.busy", f"{busy!r} is not [from_s, to_s, factor] inside the run")
    day = str(t.get("business_day", "today"))
    if day == "today":  # the run's own day in the store's zone: the report's hours fit it
        import datetime as dt
        from zoneinfo import ZoneInfo
        start = (dt.datetime.fromtimestamp(clock["reads_ms"] / 1000 - clock["at_s"], dt.UTC)
                 if clock else dt.datetime.now(dt.UTC))
        day = start.astimezone(ZoneInfo(str(t.get("tz", "Europe/Berlin")))).date().isoformat()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise _err(path, "tills.business_day", f"{day!r} is not YYYY-MM-DD")
    count = int(_num(path, t, "count", "tills", 4, 1, 64))
    names = [f"till-{i + 1}" for i in range(count)]
    for key in ("wrong_clock_till", "split_brain_till"):
        if key in t and t[key] not in names:
            raise _err(path, f"tills.{key}", f"{t[key]!r} is not one of {', '.join(names)}")
    rules = t.get("rules", {"offline_tenders": ["cash", "card"]})
    if not isinstance(rules, dict):
        raise _err(path, "tills.rules", "must be a table (the gateway's [sell_rules])")
    return {"names": names, "store": str(t.get("store", "store-1")),
            "tz": str(t.get("tz", "Europe/Berlin")), "business_day": day,
            "rate_per_s": _num(path, t, "rate_per_s", "tills", 1, 0.01, 100),
            "busy": [float(x) for x in busy],
            "double_submit": _num(path, t, "double_submit", "tills", 0, 0, 1),
            "wrong_clock_till": t.get("wrong_clock_till"),
            "clock_offset_s": _num(path, t, "clock_offset_s", "tills", 0, -1e7, 1e7),
            "full_pan_every": int(_num(path, t, "full_pan_every", "tills", 0, 0, 1e6)),
            "unknown_refund_every": int(_num(path, t, "unknown_refund_every", "tills", 0, 0, 1e6)),
            "split_brain_till": t.get("split_brain_till"), "rules": rules}


def _fleet(path: Path, t: dict[str, Any], duration_s: float) -> dict[str, Any]:
    if not t:
        return {}
    _only(path, t, "fleet", ("virtual_gateways", "backlog", "at_s", "jitter_s", "rate_per_s",
                             "live_s"))
    return {"virtual_gateways": int(_num(path, t, "virtual_gateways", "fleet", lo=1, hi=100000)),
            "backlog": int(_num(path, t, "backlog", "fleet", 100, 0, 100000)),
            "at_s": _num(path, t, "at_s", "fleet", 0, 0, duration_s),
            "jitter_s": _num(path, t, "jitter_s", "fleet", 2, 0, 600),
            "rate_per_s": _num(path, t, "rate_per_s", "fleet", 0, 0, 1e6),
            "live_s": _num(path, t, "live_s", "fleet", 0, 0, 86400)}


def _devices(path: Path, tables: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(tables, dict) or not tables:
        raise _err(path, "devices", "at least one [devices.NAME] table is required")
    out = {}
    for name, t in tables.items():
        where = f"devices.{name}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise _err(path, where, "a device name is 1-32 lower-case letters, digits, '_'")
        kind = device_types.find(t.get("type")) if isinstance(t, dict) else None
        if kind is None:
            raise _err(path, f"{where}.type", f"must be one of {', '.join(device_types.known())}")
        _only(path, t, where, ("type", *kind.SCENARIO_KEYS))
        for key, (default, lo, hi) in kind.SCENARIO_NUMBERS.items():
            _num(path, t, key, where, default, lo, hi)
        out[name] = dict(t)
    return out


def _gateway_list(path: Path, where: str, v: Any, count: int) -> list[int] | None:
    if v is None or v == "all":
        return None
    if isinstance(v, list) and v and all(isinstance(i, int) and 1 <= i <= count for i in v):
        return [i - 1 for i in v]
    raise _err(path, f"{where}.gateways", f"{v!r} is not \"all\" or a list of gateway numbers "
               f"from 1 to {count}")


@dataclass
class _Table:
    """One table of the file, for a fault kind's check: errors name the file and key path."""

    path: Path
    where: str
    table: dict[str, Any]

    def fail(self, key: str, problem: str) -> ScenarioError:
        return _err(self.path, f"{self.where}.{key}" if key else self.where, problem)

    def num(self, key: str, default: Any = None, lo: float = 0.0, hi: float = 1e9) -> float:
        return _num(self.path, self.table, key, self.where, default, lo, hi)


def _fault(path: Path, i: int, t: Any, sc: Scenario) -> Fault:
    where = f"fault[{i}]"
    if not isinstance(t, dict) or t.get("kind") not in KINDS:
        raise _err(path, f"{where}.kind", f"must be one of {', '.join(KINDS)}")
    kind = KINDS[t["kind"]]
    _only(path, t, where, kind.allowed_keys())
    at = _num(path, t, "at_s", where, hi=sc.duration_s)
    for_s = _num(path, t, "for_s", where, 0.0, 0, 86400)
    if at + for_s > sc.duration_s:
        raise _err(path, where, f"at_s {at:g} + for_s {for_s:g} ends after the scenario's "
                   f"duration_s {sc.duration_s:g}")
    params = {k: v for k, v in t.items() if k not in ("at_s", "kind", "for_s", "gateways")}
    kind.check(params, sc, _Table(path, where, params))
    if kind.needs_duration and not for_s:
        raise _err(path, f"{where}.for_s", kind.needs_duration)
    return Fault(at, kind.name, for_s, params, _gateway_list(path, where, t.get("gateways"),
                                                             sc.gateway_count))


def _expect(path: Path, t: dict[str, Any]) -> list[Expectation]:
    out = []
    for metric, v in t.items():
        where = f"expect.{metric}"
        if metric == "alarms_raised":
            if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
                raise _err(path, where, "must be a list of alarm names")
            out.append(Expectation(metric, "includes", v))
            continue
        if metric not in METRICS:
            raise _err(path, where, f"not a known metric; known: {', '.join(METRICS)}, "
                       "alarms_raised")
        if isinstance(v, int | float) and not isinstance(v, bool):
            out.append(Expectation(metric, "==", float(v)))
            continue
        m = re.fullmatch(r"\s*(<=|>=|==|<|>)\s*(-?[0-9.]+)\s*", str(v))
        if not m:
            raise _err(path, where, f"{v!r} is not a number or \"OP number\" with OP one of "
                       f"{' '.join(_OPS)}")
        out.append(Expectation(metric, m.group(1), float(m.group(2))))
    return out
