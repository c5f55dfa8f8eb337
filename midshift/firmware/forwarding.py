"""The output side at run time: one thread around the link session (``core/session.py``).

The session decides everything (what to send, which uplink, what an ack commits, what a
command does, when the status is due); this loop carries its actions out with paho
(``edges/mqtt.py``), the group-commit journal and the sync log. It is woken by a record
becoming durable (``wake()``), anything an uplink heard (``LinkUp``, ``LinkDown``,
``Received``), and the session's own deadline (linger, ack timeout, fail-back, commit,
status).

Every sync event (batch sent, acked, resent, failover, fail-back, rejected ack, command)
is a line in the sync log (logger ``midshift.sync``, JSON).

When the far end is gone the session simply has nothing to publish; records wait in the
journal and go out on whichever uplink comes back first.

The loop runs under the agent's supervisor (``midshift/firmware/supervisor.py``): a crash is
alarmed and the loop restarted with the session as it was. A failing write outside the
journal (the last command id) raises an alarm and forwarding goes on. ``alive()`` is what
the watchdog vouches for: the loop has come round within ``STALE_MS`` (it comes round at
least once a second, idle or not).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware import __version__
from midshift.firmware.core import commands
from midshift.firmware.core import session as s
from midshift.firmware.core.forwarder import HEDGE_FLOOR_MS
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.site_config import SiteConfig
from midshift.firmware.edges.driver import Clock
from midshift.firmware.edges.group_commit import GroupCommitJournal
from midshift.firmware.edges.mqtt import LinkDown, LinkUp, MqttUplink, Received
from midshift.firmware.edges.sync_log import sync_event
from midshift.firmware.supervisor import Supervisor

log = logging.getLogger(__name__)

STALE_MS = 5000  # a loop that has not come round for this long is hung
# zlib level 1: measured on 90,000 till transactions (50 MB of records), level 1 packs them
# to 7.3 MB in 0.36 s of CPU, level 6 to 6.0 MB in 0.68 s; in a drain the agent's CPU is
# the limit, and the ledger inflates either at the same cost (any level is one format).
ZLIB_LEVEL = 1
# New batches per session poll: each is published as soon as it is signed, and acks heard
# meanwhile are taken between two, so the ledger stores one batch while the next is
# encoded (a window-sized burst made the two take turns: a drain ran at their sum).
BURST = 1

GOODBYE_S = 2.0  # how long a clean stop waits for the broker to take the offline status


def _compress(data: bytes) -> bytes:
    return zlib.compress(data, ZLIB_LEVEL)


class Alarm:
    """Raise (or clear) an alarm from another thread: the session is the loop's alone."""

    def __init__(self, name: str, on: bool, detail: str | None = None) -> None:
        self.name = name
        self.on = on
        self.detail = detail


class Wake:
    """A record became durable: there may be a batch to send."""


class ForwardingLoop:
    def __init__(self, cfg: SiteConfig, journal: GroupCommitJournal, clock: Clock, key: bytes,
                 local_status: Callable[[], dict[str, Any]], hold_ms: int = 30000,
                 ack_timeout_ms: int = 3000, keepalive_s: int = 1, max_events: int = 500,
                 linger_ms: int = 2, window: int = 8, drain_rate: int = 0,
                 command_key: bytes | None = None,
                 commit_every_ms: int = s.COMMIT_EVERY_MS, boot_id: str | None = None,
                 hedge_floor_ms: int = HEDGE_FLOOR_MS) -> None:
        self.cfg = cfg
        self.journal = journal
        self.clock = clock
        self.local_status = local_status  # what only the agent knows: devices, pipeline
        self.events: queue.Queue[Any] = queue.Queue()
        self.command_state = Path(cfg.journal.path) / "last-command-id"
        gate = None
        if command_key is not None:
            last = 0
            if self.command_state.exists():
                last = int(self.command_state.read_text().strip() or 0)
            gate = commands.CommandGate(Signer(command_key), cfg.gateway_id, last)
        # A fresh suffix per start: another gateway cannot guess the client id to take it
        # over; it is the boot id too, so a reader tells a restart from a long silence.
        self.boot_id = boot_id or os.urandom(4).hex()
        self.session = s.LinkSession(
            journal, cfg.site, cfg.gateway_id, Signer(key), [u.name for u in cfg.uplinks],
            clock.monotonic_ms(), compress=_compress,
            metered=[u.name for u in cfg.uplinks if u.metered], hold_ms=hold_ms, gate=gate,
            drain_rates={u.name: u.drain_rate for u in cfg.uplinks if u.drain_rate},
            drain_rate=drain_rate, status_period_ms=int(cfg.status_period_s * 1000),
            commit_every_ms=commit_every_ms, runtime="cpython",
            supports=("set-log-level", "reload-config"), max_events=max_events,
            linger_ms=linger_ms, window=window, ack_timeout_ms=ack_timeout_ms,
            no_ack_ms=int(cfg.no_ack_s * 1000), version=__version__, boot_id=self.boot_id,
            hedge={u.name: u.hedge for u in cfg.uplinks if u.hedge},
            hedge_floor_ms=hedge_floor_ms, burst=BURST)
        will = s.last_will(cfg.site, cfg.gateway_id, __version__, self.boot_id)
        self.uplinks = {u.name: MqttUplink(u, f"{cfg.gateway_id}-{u.name}-{self.boot_id}",
                                           self.events, self.session.subscriptions(), will,
                                           keepalive_s=keepalive_s, preferred=i == 0)
                        for i, u in enumerate(cfg.uplinks)}
        self._pinging: str | None = None  # the uplink told it is active (pings every second)
        self.on_reload: Callable[[], str] | None = None
        self.on_incident: Callable[[str, dict[str, Any]], None] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_ms: int | None = None  # when the loop last came round

    # ---- life ------------------------------------------------------------------------------

    def start(self, supervisor: Supervisor | None = None) -> ForwardingLoop:
        for u in self.uplinks.values():
            u.start()
        self._beat_ms = self.clock.monotonic_ms()
        sup = supervisor or Supervisor(on_alarm=self.alarm)
        self._thread = sup.spawn("forwarder", self._run, self._stopping)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.events.put(Wake())
        if self._thread is not None:
            self._thread.join(5)
        self._carry_out(self.session.close(self.clock.monotonic_ms()))
        # A clean DISCONNECT discards the last will: say offline ourselves, retained.
        for msg in self.session.goodbye(self.clock.now_ms()):
            if not self.uplinks[msg.uplink].publish_wait(msg.topic, msg.payload, GOODBYE_S,
                                                         msg.qos, msg.retain):
                log.warning("uplink %s: the offline status was not taken before stopping",
                            msg.uplink)
        for u in self.uplinks.values():
            u.stop()

    def alive(self) -> bool:
        """The loop runs and came round lately (not dead, not hung, not in a restart)."""
        beat = self._beat_ms
        return (self._thread is not None and self._thread.is_alive() and beat is not None
                and self.clock.monotonic_ms() - beat < STALE_MS)

    def wake(self) -> None:
        self.events.put(Wake())

    def alarm(self, name: str, on: bool = True, detail: str | None = None) -> None:
        """Raise or clear an alarm in the status; safe from any thread."""
        self.events.put(Alarm(name, on, detail))

    @property
    def active(self) -> str | None:
        return self.session.active

    @property
    def forwarder(self) -> Any:
        return self.session.forwarder

    @property
    def selector(self) -> Any:
        return self.session.selector

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = self.clock.monotonic_ms()
            self._beat_ms = now
            deadline = self.session.next_deadline_ms(now)
            wait_ms = 1000 if deadline is None else min(1000, max(0, deadline - now))
            try:
                self._handle(self.events.get(timeout=wait_ms / 1000.0))
                while True:  # drain whatever else is queued before sending
                    self._handle(self.events.get_nowait())
            except queue.Empty:
                pass
            self._carry_out(self.session.poll(self.clock.monotonic_ms(), self.clock.now_ms()))
            self._follow_active()

    def _follow_active(self) -> None:
        """The active uplink pings every second, the standbys at their standby keepalive."""
        active = self.session.active
        if active == self._pinging:
            return
        for name, uplink in self.uplinks.items():
            uplink.set_active(name == active)
        self._pinging = active

    def _handle(self, item: Any) -> None:
        now = self.clock.monotonic_ms()
        if isinstance(item, Received):
            self._carry_out(self.session.message(item.uplink, item.topic, item.payload, now,
                                                 self.clock.now_ms()))
        elif isinstance(item, LinkUp):
            self._carry_out(self.session.uplink_changed(item.uplink, True, now))
        elif isinstance(item, LinkDown):
            self._carry_out(self.session.uplink_changed(item.uplink, False, now, item.reason))
        elif isinstance(item, Alarm):
            self._carry_out(self.session.alarm(item.name, item.on, item.detail))

    def _carry_out(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, s.Publish):
                if not self.uplinks[a.uplink].publish(a.topic, a.payload, a.qos, a.retain):
                    self.session.publish_failed(a.uplink)
            elif isinstance(a, s.Note):
                self._note(a)
            elif isinstance(a, s.Commit):
                self._commit(a)
            elif isinstance(a, s.Observe):
                self.journal.observe(a.hlc)
            elif isinstance(a, s.StatusDue):
                msg = self.session.status_message(self.clock.now_ms(), self.status_parts())
                if msg is not None:
                    self.uplinks[msg.uplink].publish(msg.topic, msg.payload, msg.qos,
                                                     msg.retain)
            elif isinstance(a, s.SaveCommandId):
                self._save_last_command_id(a.cmd_id)
            elif isinstance(a, commands.SetLogLevel):
                logging.getLogger("midshift.firmware").setLevel(a.level)
            elif isinstance(a, commands.Reload) and self.on_reload is not None:
                self._carry_out(commands.command_done(self.session, a.cmd_id,
                                                       self.on_reload()))
            elif isinstance(a, s.Incident) and self.on_incident is not None:
                self.on_incident(a.kind, a.data)

    def _note(self, note: s.Note) -> None:
        what = note.what
        if what in ("failover", "failback", "up", "down"):
            log.warning("uplink %s: %s -> %s", what, note.fields["from"], note.fields["to"])
        elif what == "alarm":
            log.error("alarm %s: %s", note.fields["alarm"], note.fields)
        elif what in ("bad_ack", "command_rejected"):
            log.warning("%s: %s", what, note.fields["reason"])
        elif what == "command":
            log.info("command %d %s: %s", note.fields["id"], note.fields["cmd"],
                     note.fields["result"])
        sync_event(what, **note.fields)

    def _commit(self, a: s.Commit) -> None:
        try:
            self.journal.commit(a.seq, a.pos)
        except OSError as exc:  # nothing moved: the next commit point covers this one
            log.error("cannot persist the commit point %d: %s", a.seq, exc)
            self._carry_out(self.session.alarm("journal_commit_write", True))
            return
        if "journal_commit_write" in self.session.alarms:
            self._carry_out(self.session.alarm("journal_commit_write", False))

    def _save_last_command_id(self, cmd_id: int) -> None:
        tmp = self.command_state.with_suffix(".tmp")
        try:
            tmp.write_text(str(cmd_id))
            os.replace(tmp, self.command_state)  # a replay stays rejected after a restart
        except OSError as exc:  # a full disk: the id lives on in memory, forwarding goes on
            log.error("cannot save the last command id %d to %s: %s", cmd_id,
                      self.command_state, exc)
            self._carry_out(self.session.alarm("command_id_write", True))
            return
        if "command_id_write" in self.session.alarms:
            self._carry_out(self.session.alarm("command_id_write", False))

    # ---- status -----------------------------------------------------------------------------

    def status_parts(self) -> dict[str, Any]:
        parts = self.local_status()
        parts["uplink_counters"] = {n: dict(u.counters) for n, u in self.uplinks.items()}
        return parts

    def status(self) -> dict[str, Any]:
        return self.session.status(self.clock.now_ms(), self.status_parts(),
                                   self.clock.monotonic_ms())
