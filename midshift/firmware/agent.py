"""The agent's runtime: wires the edges to the core from a validated config.

Input side (issue 5): drivers read devices and hand Events to ``emit``, which runs the
pipeline (validate, redact, classify), appends to the journal with an HLC stamp under the
journal's lock, and returns only once the record is durable, so a driver (and the POS
behind it) is told OK only then. A refused ``txn`` record (journal full) comes back to the
driver as an error and lights the red LED until the journal takes transactions again.

The status loop refreshes the LEDs and logs a status line on change; the forwarder and
uplinks (issue 6) plug in here too. This is the only module that knows both core and
edges.

Both loops run under a supervisor (``midshift/firmware/supervisor.py``): a crash is alarmed and
the loop restarted; when restarts cannot help, ``failed`` is set and ``python -m midshift.firmware
run`` exits non-zero. Every status period the loop also checks that the journal's files
are still the open ones (``journal_lost``), whether a full filesystem holds the journal
(``journal_no_space``), and feeds the systemd watchdog only while the forwarder comes
round. A write outside the journal that fails (sync log, epoch mark, last command id)
raises an alarm and nothing else stops. A device not ``ok`` for longer than its
``stale_s`` (else ``[status] device_down_s``) is down (``core/health.py``): the
``device_down`` alarm names it and the fault LED calls a person. Alarms: the status
document's ``alarms``, with ``alarm_detail``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware import __version__
from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import ConfigError, JournalFull, MidshiftError, StorageError
from midshift.firmware.core.event import Event, encode_body
from midshift.firmware.core.health import DeviceWatch
from midshift.firmware.core.hlc import HybridLogicalClock
from midshift.firmware.core.pipeline import Pipeline
from midshift.firmware.core.session import faulty_devices
from midshift.firmware.core.site_config import SiteConfig
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.device_types import driver_class
from midshift.firmware.edges.driver import Clock, Driver
from midshift.firmware.edges.flash import EpochMark, open_gateway_journal
from midshift.firmware.edges.group_commit import GroupCommitJournal
from midshift.firmware.edges.sync_log import close_sync_log, open_sync_log
from midshift.firmware.edges.watchdog import SystemdNotifier
from midshift.firmware.supervisor import Supervisor

log = logging.getLogger(__name__)


def read_key(path: str | None, key_name: str = "gateway.key_file") -> bytes:
    """An HMAC key from a file holding it as hex (0600, never logged)."""
    if path is None:
        raise ConfigError(key_name, "is required when uplinks are configured")
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except OSError as exc:
        raise ConfigError(key_name, f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(key_name, f"{path} does not hold a hex key") from None
    if len(key) < 16:
        raise ConfigError(key_name, f"{path}: key of {len(key)} bytes is too short",
                          "at least 16 bytes (32 recommended)")
    return key


class Agent:
    def __init__(self, cfg: SiteConfig, clock: Clock | None = None,
                 pin_factory: Any = None, durable_timeout_s: float = 5.0,
                 new_epoch: bool = False) -> None:
        """``new_epoch``: start a fresh journal even though this gateway's epoch mark says
        it had one that is now gone (``python -m midshift.firmware run --new-epoch``)."""
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self._pin_factory = pin_factory  # tests pass a gpiozero MockFactory
        self.durable_timeout_s = durable_timeout_s
        self.journal: GroupCommitJournal | None = None
        self.pipeline = Pipeline({d.name: d.cls for d in cfg.devices}, cfg.journal.max_body)
        self.drivers: list[Driver] = []
        self.lights: Any = None
        self._refusing_need = 0        # bytes the last refused txn needed; 0: not refusing
        self._lock = threading.Lock()
        self.incidents_dropped = 0     # link/device incidents the journal refused
        self._stopping = threading.Event()
        self._status_thread: threading.Thread | None = None
        self._last_status: dict[str, Any] | None = None  # states of the last status line
        self._last_status_line = ""
        self._last_status_ms = 0
        self.forwarding: Any = None
        self.reload_requested = threading.Event()  # a valid config waits in next_cfg
        self.config_loader: Callable[[], SiteConfig] | None = None  # reads the files again
        self.next_cfg: SiteConfig | None = None
        self.notifier = SystemdNotifier()
        self._sync_handler: Any = None
        self.forwarding_options: dict[str, Any] = {}  # tests shorten timers here
        self.new_epoch = new_epoch
        self.mark: EpochMark | None = None
        self.alarms: set[str] = set()
        self.alarm_detail: dict[str, str] = {}
        # device -> outcome (journaled, an invalid reason, a refusal code) -> count
        self.events_by_device: dict[str, dict[str, int]] = {}
        self.last_value_ms: dict[str, int] = {}  # device -> read time of its last journaled value
        self.boot_id = os.urandom(4).hex()  # the status's boot id (and uplink client ids)
        self.started_ms = self.clock.monotonic_ms()
        self.watch = DeviceWatch(
            {d.name: int(d.settings["stale_s"] * 1000) for d in cfg.devices
             if isinstance(d.settings.get("stale_s"), (int, float))},
            int(cfg.device_down_s * 1000), self.started_ms)
        self.metrics: Any = None  # the OpenMetrics endpoint (edges/metrics.py) when bound
        self.page: Any = None     # the status page (edges/status_page.py) when bound
        self.supervisor = Supervisor(on_alarm=self.alarm)
        self.tills: Any = None  # the till API (edges/till_api.py) when [till_api] is set
        self.refdata: Any = None  # reference data down (edges/refdata_sync.py), with the API

    # ---- life ---------------------------------------------------------------------------

    def start(self) -> Agent:
        if self.cfg.metrics_bind is not None:
            # First, so a port already taken stops the start before any thread runs;
            # prometheus-client is imported only when bound.
            from midshift.firmware.edges.metrics import AgentCollector, MetricsEndpoint
            self.metrics = MetricsEndpoint(AgentCollector(self.snapshot),
                                           self.cfg.metrics_bind).start()
        if self.cfg.status_page is not None:  # bound first too; it answers once all runs
            from midshift.firmware.edges.status_page import StatusPage
            self.page = StatusPage(self.cfg.status_page, self.snapshot, self.cfg.store).start()
        jc = self.cfg.journal
        self._sync_handler = open_sync_log(
            self.cfg.sync_log or Path(jc.path).parent / "sync.log", self.cfg.sync_log_max_bytes,
            self.cfg.sync_log_backups, on_error=lambda on: self.alarm("sync_log_write", on))
        journal, self.mark, abandoned = open_gateway_journal(
            jc.path, jc.segment_size, jc.segment_count, self.cfg.gateway_id,
            wall_ms=self.clock.now_ms, max_body=jc.max_body, new_epoch=self.new_epoch)
        hlc = HybridLogicalClock(self.clock.now_ms, journal.last_hlc)
        self.journal = GroupCommitJournal(journal, jc.window_ms, hlc=hlc)
        self.journal.on_commit = self._mark_acked
        if self.mark.failed:
            self.alarm("epoch_mark_write", True)
        if abandoned is not None:  # the ledger hears of the gap like any other event
            self.journal.append_durable(encode_body("agent", "epoch_abandoned",
                                                    self.clock.now_ms(), abandoned), rec.TXN)
        self.lights = self._open_lights()
        if self.cfg.till_api is not None:
            # The till keys index is rebuilt from the journal before forwarding starts: an
            # ack arriving during the rebuild would reclaim a sale whose key the index lost
            # in a power cut, and the till's retry would be taken twice.
            from midshift.firmware.edges.till_api import (
                TillApi,  # cheroot only when tills post here
            )
            self.tills = TillApi(self).rebuild()
            self.refdata = self._open_refdata()
        if self.cfg.uplinks:
            from midshift.firmware.forwarding import (
                ForwardingLoop,  # paho only when uplinks are set
            )
            command_key = (read_key(self.cfg.command_key_file, "gateway.command_key_file")
                           if self.cfg.command_key_file else None)
            self.forwarding = ForwardingLoop(self.cfg, self.journal, self.clock,
                                             read_key(self.cfg.key_file), self.local_status,
                                             command_key=command_key, boot_id=self.boot_id,
                                             **self.forwarding_options)
            self.forwarding.on_reload = lambda: self.request_reload("reload-config command")
            self.forwarding.on_incident = self.incident
            self.forwarding.start(self.supervisor)
            for name in sorted(self.alarms):  # raised before the session existed
                self.forwarding.alarm(name, True, self.alarm_detail.get(name))
        for d in self.cfg.devices:
            if d.settings.get("enabled", True):
                settings = {k: v for k, v in d.settings.items() if k != "enabled"}
                drv = driver_class(d.type)(d.name, settings, self.emit, self.clock)
                drv.emit_many_fn = self.emit_many
                drv.on_state = self._device_incident
                self.drivers.append(drv)
        for drv in self.drivers:
            drv.start()
            self.supervisor.watch(f"driver-{drv.name}", drv.alive, self._restarter(drv))
        if self.tills is not None:
            self.tills.start()
        self._status_thread = self.supervisor.spawn("status", self._status_loop, self._stopping)
        if self.page is not None:
            self.page.serve()
        self.notifier.ready(f"{len(self.drivers)} devices, {len(self.cfg.uplinks)} uplinks")
        log.info("agent %s started: %d devices, journal %s (epoch %016x, next seq %d)",
                 self.cfg.gateway_id, len(self.drivers), jc.path, journal.epoch, journal.next_seq)
        return self

    def stop(self) -> None:
        self.notifier.stopping()
        self._stopping.set()
        if self.metrics is not None:
            self.metrics.stop()
        if self.page is not None:
            self.page.stop()
        if self.tills is not None:
            self.tills.stop()
        if self.refdata is not None:
            self.refdata.stop()
            self.refdata.store.close()
        for drv in self.drivers:
            drv.stop()
        if self.forwarding is not None:
            self.forwarding.stop()
        if self._status_thread is not None:
            self._status_thread.join(5)
        if self.lights is not None:
            self.lights.close()
        if self.journal is not None:
            self.journal.close()
        if self._sync_handler is not None:
            close_sync_log(self._sync_handler)
        log.info("agent %s stopped", self.cfg.gateway_id)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_refdata(self) -> Any:
        """The store of prices, stock, ... beside the journal; kept in step with the ledger
        side over the first uplink when the gateway has one and a command key (which signs
        reference data as it signs commands)."""
        from midshift.firmware.edges.refdata_store import FILE, RefdataStore
        from midshift.firmware.edges.refdata_sync import RefdataSync
        store = RefdataStore(Path(self.cfg.journal.path) / FILE)
        if not self.cfg.uplinks or not self.cfg.command_key_file:
            log.warning("reference data: no uplink or no command key; the tills read what "
                        "%s holds and it never changes", FILE)
            return RefdataSync.offline(store).start()
        first = min(self.cfg.uplinks, key=lambda u: u.priority)
        key = read_key(self.cfg.command_key_file, "gateway.command_key_file")
        return RefdataSync(store, key, self.cfg.site, self.cfg.gateway_id, first,
                           self.clock.now_ms).start()

    def _open_lights(self) -> Any:
        if not self.cfg.pins:
            return None
        from midshift.firmware.edges.gpio import (
            StatusLights,  # gpiozero only when pins are configured
        )
        factory = self._pin_factory or self.cfg.board.get("pin_factory", "mock")
        return StatusLights(self.cfg.pins, factory)

    # ---- the input side ---------------------------------------------------------------------

    def emit(self, event: Event) -> int:
        """Pipeline, journal, durable: returns the seq. Raises InvalidEvent, JournalFull,
        StorageError; the driver counts them and goes on."""
        if self.journal is None:
            raise RuntimeError("agent not started")
        source = event.source if event.source in self.pipeline.classes else "(unknown)"
        try:
            body, cls = self.pipeline.prepare(event)
            seq = self.append_txn(body, cls)
        except MidshiftError as exc:
            self._count_event(source, getattr(exc, "reason", None) or exc.code)
            raise
        self._count_event(source, "journaled")
        with self._lock:
            self.last_value_ms[source] = int(event.read_ms)
        return seq

    def emit_many(self, events: list[Event]) -> list[int | MidshiftError]:
        """``emit`` for values read together (a Modbus block, a burst of CAN frames): one
        journal hand-over, one wait for the sync they share, instead of one each. Per event
        its seq or the error that refused it; the others go on. Raises StorageError (the
        flash failed or nothing became durable in time): none of them was accepted."""
        if self.journal is None:
            raise RuntimeError("agent not started")
        out: list[int | MidshiftError | None] = [None] * len(events)
        ready: list[tuple[int, bytes, int]] = []
        for i, event in enumerate(events):
            try:
                body, cls = self.pipeline.prepare(event)
            except MidshiftError as exc:
                out[i] = exc
                continue
            ready.append((i, body, cls))
        appended = self.journal.append_many([(body, cls) for _, body, cls in ready])
        last = 0
        for (i, _, cls), got in zip(ready, appended, strict=True):
            out[i] = got
            if isinstance(got, int):
                last = max(last, got)
            elif cls == rec.TXN:
                self._refusing_txns(got)
        if last and not self.journal.wait_durable(last, self.durable_timeout_s):
            raise StorageError(f"records up to {last} not durable within "
                               f"{self.durable_timeout_s} s")
        if last and self.forwarding is not None:
            self.forwarding.wake()
        if self._refusing_need and any(isinstance(got, int) and cls == rec.TXN
                                       for (_, _, cls), got in zip(ready, appended, strict=True)):
            self._taking_txns()
        with self._lock:
            for event, got in zip(events, out, strict=True):
                source = event.source if event.source in self.pipeline.classes else "(unknown)"
                by = self.events_by_device.setdefault(source, {})
                outcome = ("journaled" if isinstance(got, int)
                           else getattr(got, "reason", None) or got.code)  # type: ignore[union-attr]
                by[outcome] = by.get(outcome, 0) + 1
                if isinstance(got, int):
                    self.last_value_ms[source] = int(event.read_ms)
        return out  # type: ignore[return-value]

    def _count_event(self, source: str, outcome: str) -> None:
        with self._lock:
            by = self.events_by_device.setdefault(source, {})
            by[outcome] = by.get(outcome, 0) + 1

    def append_txn(self, body: bytes, cls: int = rec.TXN) -> int:
        """Journal a prepared body, durable: returns the seq (the till API's way in)."""
        if self.journal is None:
            raise RuntimeError("agent not started")
        try:
            seq = self.journal.append_durable(body, cls, timeout_s=self.durable_timeout_s)
        except JournalFull as exc:
            if cls == rec.TXN:
                self._refusing_txns(exc)
            raise
        if self.forwarding is not None:
            self.forwarding.wake()
        if cls == rec.TXN and self._refusing_need:
            self._taking_txns()
        return seq

    def _refusing_txns(self, exc: JournalFull) -> None:
        with self._lock:
            first = not self._refusing_need
            self._refusing_need = exc.need_bytes
        if first:
            log.error("journal refuses transactions: %s", exc)
            self._refresh_lights()

    def _taking_txns(self) -> None:
        with self._lock:
            self._refusing_need = 0
        log.warning("journal takes transactions again")
        self._refresh_lights()

    # ---- state ------------------------------------------------------------------------------

    @property
    def failed(self) -> threading.Event:
        """Set when a loop cannot be kept running: the process must exit non-zero."""
        return self.supervisor.failed

    def alarm(self, name: str, on: bool = True, detail: str | None = None) -> None:
        """Raise (or clear) an alarm in the status, with ``detail`` (e.g. the device
        names); safe from any thread. A changed detail is passed on too."""
        with self._lock:
            if on == (name in self.alarms) and (not on or detail == self.alarm_detail.get(name)):
                return
            if on:
                self.alarms.add(name)
                if detail is None:
                    self.alarm_detail.pop(name, None)
                else:
                    self.alarm_detail[name] = detail
            else:
                self.alarms.discard(name)
                self.alarm_detail.pop(name, None)
        if on:
            log.error("alarm %s%s", name, f": {detail}" if detail else "")
        else:
            log.warning("alarm %s cleared", name)
        if self.forwarding is not None:
            self.forwarding.alarm(name, on, detail)

    def request_reload(self, how: str) -> str:
        """Read the config files again (a ``reload-config`` command or SIGHUP, one path):
        valid, it waits in ``next_cfg`` and ``reload_requested`` asks ``python -m midshift.firmware
        run`` to restart the agent with it; invalid, the running config stays and the alarm
        ``config_rejected`` carries the error. Returns the command's result."""
        if self.config_loader is None:
            return "not supported here"
        try:
            cfg = self.config_loader()
        except MidshiftError as exc:
            log.error("reload (%s) refused, keeping the running config: %s", how, exc)
            self.alarm("config_rejected", True, str(exc))
            return f"rejected: {exc}"
        log.warning("reload (%s): the config is valid, restarting with it", how)
        self.alarm("config_rejected", False)
        self.next_cfg = cfg
        self.reload_requested.set()
        return "ok"

    def incident(self, kind: str, data: dict[str, Any]) -> None:
        """Journal an event of the gateway's own (source ``agent``, telemetry) for the
        ledger's report: a link or device state change. Never blocks, never raises: a
        refused one is counted and logged."""
        if self.journal is None:
            return
        if kind == "link" and self.tills is not None:
            self.tills.link_changed(data["state"] == "online", data["since_ms"])
        try:
            self.journal.append(encode_body("agent", kind, self.clock.now_ms(), data),
                                rec.TELEMETRY)
        except MidshiftError as exc:
            with self._lock:
                self.incidents_dropped += 1
            log.warning("incident %s not journaled: %s", kind, exc)

    def _device_incident(self, name: str, state: str, error: str | None) -> None:
        self.incident("device", {"device": name, "state": state, "error": error})

    def _restarter(self, drv: Driver) -> Any:
        def restart() -> None:
            if not self._stopping.is_set():
                drv.stop()
                drv.start()
        return restart

    def _mark_acked(self, seq: int) -> None:
        """Commit: the epoch mark beside the journal learns the acknowledged seq."""
        if self.mark is None:
            return
        try:
            self.mark.update(seq)
        except OSError as exc:
            if "epoch_mark_write" not in self.alarms:
                log.error("cannot update the epoch mark %s: %s", self.mark.path, exc)
            self.alarm("epoch_mark_write", True)
            return
        if "epoch_mark_write" in self.alarms:
            self.alarm("epoch_mark_write", False)

    def refusing_txn(self) -> bool:
        """True while the journal refuses transactions: until one is taken again, or the
        ledger's acknowledgements free the room the refused one needed."""
        with self._lock:
            need = self._refusing_need
        if need and self.journal is not None and self.journal.free_bytes() >= need:
            with self._lock:
                self._refusing_need = 0
            return False
        return bool(need)

    def _events_by_device(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {d: dict(by) for d, by in self.events_by_device.items()}

    def local_status(self) -> dict[str, Any]:
        """The parts of the status document only the agent knows (the link session
        writes the rest)."""
        with self._lock:
            last = dict(self.last_value_ms)
        doc = {"devices": [d.status.as_dict() | {"last_value_ms": last.get(d.name)}
                           for d in self.drivers],
               "devices_down": list(self.watch.down),
               "events_by_device": self._events_by_device(),
               "pipeline": self.pipeline.stats(),
               "journal_refusing_txn": self.refusing_txn(),
               "thread_crashes": self.supervisor.stats(),
               "incidents_dropped": self.incidents_dropped}
        if self.tills is not None:
            doc["tills"] = self.tills.status()
        if self.refdata is not None:
            doc["refdata"] = self.refdata.status(self.clock.now_ms())
        return doc

    def snapshot(self) -> dict[str, Any]:
        """The status document (``docs/wire-format.md``); without uplinks, its local part."""
        if self.forwarding is not None:
            return self.forwarding.status()
        doc = self.local_status()
        stats = self.journal.stats() if self.journal is not None else {}
        with self._lock:
            alarms = sorted(self.alarms)
            detail = dict(self.alarm_detail)
        now = self.clock.now_ms()
        doc.update(gateway=self.cfg.gateway_id, site=self.cfg.site, state="online", alarms=alarms,
                   alarm_detail=detail, runtime="cpython", uplink="none", journal=stats,
                   ts_ms=now, at_ms=now, version=__version__, boot_id=self.boot_id,
                   uptime_s=(self.clock.monotonic_ms() - self.started_ms) // 1000,
                   backlog_records=stats.get("backlog_records", 0),
                   backlog_bytes=stats.get("backlog_bytes", 0))
        doc["devices_in_error"] = len(faulty_devices(doc))
        return doc

    def _refresh_lights(self) -> None:
        if self.lights is not None:
            self.lights.update(self.snapshot())

    def alive(self) -> bool:
        """What the systemd watchdog vouches for: the loops that must never stop; the
        forwarder must have come round lately (it does once a second, idle or not)."""
        fwd = self.forwarding
        return (self.journal is not None and not self.failed.is_set()
                and (fwd is None or fwd.alive()))

    def _status_loop(self) -> None:
        period = min(self.cfg.status_period_s, 1.0)
        if self.notifier.watchdog_interval_s:
            period = min(period, self.notifier.watchdog_interval_s)
        while not self._stopping.wait(period):
            self._status_once()

    def _check_journal(self) -> None:
        j = self.journal
        if j is None:
            return
        if j.lost is None:
            problem = j.check_storage()
            if problem is not None:
                log.critical("journal lost: %s; new events are refused (restart with "
                             "--new-epoch once the cause is understood)", problem)
                self.alarm("journal_lost", True)
        self.alarm("journal_no_space", j.no_space())

    def _check_devices(self) -> None:
        down = self.watch.update([d.status.as_dict() for d in self.drivers],
                                 self.clock.monotonic_ms())
        self.alarm("device_down", bool(down), ",".join(down) if down else None)

    def _status_once(self) -> None:
        self.supervisor.tick()
        self._check_journal()
        self._check_devices()
        if self.alive():
            self.notifier.watchdog()
        snap = self.snapshot()
        if self.lights is not None:
            self.lights.update(snap)
        state = {k: snap[k] for k in ("journal_refusing_txn", "devices_in_error")} | {
            "devices": {d["name"]: d["state"] for d in snap["devices"]}}
        # A state change is logged at once; a backlog that only grows or drains is logged
        # at most every [log] status_interval_s (a line a second would fill an SD card).
        now_ms = self.clock.monotonic_ms()
        due = now_ms - self._last_status_ms >= self.cfg.log["status_interval_s"] * 1000
        line = json.dumps(state | {"backlog_records": snap["backlog_records"]}, sort_keys=True)
        if state != self._last_status or (due and line != self._last_status_line):
            log.info("status %s", line)
            self._last_status, self._last_status_line = state, line
            self._last_status_ms = now_ms
