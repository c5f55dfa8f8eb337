"""The output side at run time: one thread between the journal and the uplinks.

It owns the forwarder (core), the uplink selector (core) and the MQTT uplinks (edges),
and is woken by: a record becoming durable (``wake()``), anything an uplink heard (up,
down, an ack, a command), and the forwarder's own deadlines (linger, ack timeout). It
publishes batches on the active uplink, turns the ledger's acks into journal commits,
estimates the clock offset from the acks, and publishes the retained status.

Every sync event (batch sent, acked, resent, failover, fail-back, rejected ack) is a line
in the sync log (logger ``midshift.sync``, JSON).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware.core.commands import CommandGate, CommandRejected
from firmware.core.forwarder import Forwarder
from firmware.core.signing import Signer
from firmware.core.site_config import SiteConfig
from firmware.core.uplink_selector import UplinkSelector
from firmware.core.wire import WireError, decode_ack
from firmware.edges.driver import Clock
from firmware.edges.group_commit import GroupCommitJournal
from firmware.edges.mqtt import MqttUplink
from firmware.edges.sync_log import sync_event

log = logging.getLogger(__name__)
TOPIC_ROOT = "midshift/v1"
OFFSET_ALARM_MS = 500


class _JournalView:
    """The journal as the forwarder sees it: reads under the group-commit lock."""

    def __init__(self, gcj: GroupCommitJournal) -> None:
        self._gcj = gcj

    def read(self, pos: Any = None, seq: Any = None, max_records: int = 256,
             max_bytes: int = 1 << 20) -> Any:
        return self._gcj.read(pos, seq, max_records, max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gcj.journal, name)


class ForwardingLoop:
    def __init__(self, cfg: SiteConfig, journal: GroupCommitJournal, clock: Clock, key: bytes,
                 status: Callable[[], dict[str, Any]], hold_ms: int = 30000,
                 ack_timeout_ms: int = 3000, keepalive_s: int = 1, max_events: int = 500,
                 linger_ms: int = 2, window: int = 8, drain_rate: int = 0,
                 command_key: bytes | None = None, commit_every_ms: int = 500) -> None:
        self.cfg = cfg
        self.journal = journal
        self.clock = clock
        self.status = status
        self.base = f"{TOPIC_ROOT}/{cfg.site}/{cfg.gateway_id}"
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        will = (f"{self.base}/status", json.dumps({"gateway": cfg.gateway_id,
                                                   "state": "offline"}).encode())
        self.uplinks = {u.name: MqttUplink(u, f"{cfg.gateway_id}-{u.name}", self.events,
                                           [f"{self.base}/ack", f"{self.base}/cmd"], will,
                                           keepalive_s=keepalive_s)
                        for u in cfg.uplinks}
        self.selector = UplinkSelector([u.name for u in cfg.uplinks], hold_ms,
                                       [u.name for u in cfg.uplinks if u.metered])
        now = clock.monotonic_ms()
        self.forwarder = Forwarder(_JournalView(journal), cfg.gateway_id, Signer(key),
                                   zlib.compress, max_events=max_events, linger_ms=linger_ms,
                                   window=window, ack_timeout_ms=ack_timeout_ms,
                                   drain_rate=drain_rate, now_ms=now)
        self.default_drain_rate = drain_rate
        self.commit_every_ms = commit_every_ms
        self._pending_commit: tuple[int, int] | None = None
        self._last_commit_ms = 0
        self.clock_offset_ms: float | None = None
        self.alarms: set[str] = set()
        self.counters = {"bad_acks": 0, "publish_refused": 0, "commands_rejected": 0,
                         "ignored_inactive": 0}
        self.on_reload: Callable[[], None] | None = None
        self.last_command: dict[str, Any] | None = None
        self.command_state = Path(cfg.journal.path) / "last-command-id"
        self.gate: CommandGate | None = None
        if command_key is not None:
            last = 0
            if self.command_state.exists():
                last = int(self.command_state.read_text().strip() or 0)
            self.gate = CommandGate(Signer(command_key), last)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._status_due = 0
        self._last_status: bytes | None = None

    # ---- life ------------------------------------------------------------------------------

    def start(self) -> ForwardingLoop:
        for u in self.uplinks.values():
            u.start()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.events.put(("wake",))
        if self._thread is not None:
            self._thread.join(5)
        self._commit_if_due(self.clock.monotonic_ms(), force=True)
        for u in self.uplinks.values():
            u.stop()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self.events.put(("wake",))

    @property
    def active(self) -> str | None:
        return self.selector.active

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = self.clock.monotonic_ms()
            deadline = self.forwarder.next_deadline_ms()
            fb = self.selector.next_failback_ms(now)
            commit_due = (self._last_commit_ms + self.commit_every_ms
                          if self._pending_commit is not None else None)
            times = [t for t in (deadline, fb, self._status_due, commit_due) if t is not None]
            wait_ms = max(0, min(times) - now) if times else 1000
            try:
                item = self.events.get(timeout=min(wait_ms, 1000) / 1000.0)
                self._handle(item)
                while True:  # drain whatever else is queued before sending
                    self._handle(self.events.get_nowait())
            except queue.Empty:
                pass
            self._step()

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        now = self.clock.monotonic_ms()
        if kind == "up":
            self.selector.report(item[1], True, now)
            sync_event("uplink_up", uplink=item[1])
        elif kind == "down":
            self.selector.report(item[1], False, now)
            sync_event("uplink_down", uplink=item[1], reason=item[2])
        elif kind == "message":
            # Every connected uplink subscribes, and they usually reach the same broker: take
            # acks and commands from the active one only, or each would arrive twice.
            if item[1] == self.selector.active:
                self._on_message(item[2], item[3])
            else:
                self.counters["ignored_inactive"] += 1

    def _step(self) -> None:
        now = self.clock.monotonic_ms()
        self._commit_if_due(now)
        active, change = self.selector.select(now)
        if change is not None:
            what, old, new = change
            log.warning("uplink %s: %s -> %s", what, old, new)
            sync_event(what, **{"from": old, "to": new})
            self.forwarder.set_uplink(active, now, txn_only=active is not None and
                                      not self.selector.carries(active, 1))
            if active is not None:
                rate = self.uplinks[active].cfg.drain_rate or self.default_drain_rate
                self.forwarder.bucket.rate = rate
            self._status_due = now
        if active is not None:
            uplink = self.uplinks[active]
            for lane, first, last, data in self.forwarder.poll(now, self.clock.now_ms()):
                if not uplink.publish(f"{self.base}/events", data):
                    self.counters["publish_refused"] += 1  # resent after the ack timeout
                sync_event("resent" if lane == "resend" else "sent", lane=lane, first=first, last=last, bytes=len(data),
                           uplink=active)
        if now >= self._status_due:
            self._publish_status(active)
            self._status_due = now + int(self.cfg.status_period_s * 1000)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/cmd"):
            self._on_command(payload)
            return
        if topic.endswith("/ack"):
            try:
                epoch, first, last, ledger_ms, status = decode_ack(payload)
            except WireError as exc:
                self.counters["bad_acks"] += 1
                log.warning("bad ack: %s", exc)
                return
            if epoch != self.journal.journal.epoch:
                self.counters["bad_acks"] += 1
                return
            now = self.clock.monotonic_ms()
            sent = next((f.sent_ms for f in self.forwarder.inflight
                         if f.first == first and f.last == last), None)
            commit = self.forwarder.on_ack(first, last, status, now)
            if sent is not None:
                self._estimate_offset(ledger_ms, now - sent)
            sync_event("acked" if status == "ok" else "rejected", first=first, last=last)
            if commit is not None:
                self._pending_commit = commit
                self._commit_if_due(now)

    def _commit_if_due(self, now: int, force: bool = False) -> None:
        """Persist the commit point (a sync under the journal's lock) at most every
        ``commit_every_ms``, sooner when the ring runs short of room: a commit per ack
        would put one more fsync beside every batch. A crash before it costs only a
        resend of acknowledged batches, which the ledger discards as duplicates."""
        if self._pending_commit is None:
            return
        j = self.journal.journal
        tight = j.free_bytes() < j.data_size // 4
        if force or tight or now - self._last_commit_ms >= self.commit_every_ms:
            self.journal.commit(*self._pending_commit)
            self._pending_commit = None
            self._last_commit_ms = now

    def _on_command(self, payload: bytes) -> None:
        if self.gate is None:
            self.counters["commands_rejected"] += 1
            log.warning("command ignored: no command key configured (gateway.command_key_file)")
            return
        try:
            cmd_id, cmd, args = self.gate.check(payload)
        except CommandRejected as exc:
            self.counters["commands_rejected"] += 1
            log.warning("command rejected (%s): %s", exc.reason, exc)
            sync_event("command_rejected", reason=exc.reason)
            return
        self._save_last_command_id(cmd_id)
        result: Any = "ok"
        if cmd == "drain-now":
            self.forwarder.drain_now()
        elif cmd == "replay-from":
            result = {"from_seq": self.forwarder.replay_from(args["seq"])}
        elif cmd == "set-log-level":
            logging.getLogger("firmware").setLevel(args["level"])
        elif cmd == "reload-config":
            if self.on_reload is None:
                result = "not supported here"
            else:
                self.on_reload()
        self.last_command = {"id": cmd_id, "cmd": cmd, "result": result}
        log.info("command %d %s: %s", cmd_id, cmd, result)
        sync_event("command", id=cmd_id, cmd=cmd)
        self._status_due = 0  # answer (ping included) with a fresh status at once

    def _save_last_command_id(self, cmd_id: int) -> None:
        if self.command_state is None:
            return
        tmp = self.command_state.with_suffix(".tmp")
        tmp.write_text(str(cmd_id))
        os.replace(tmp, self.command_state)  # a replay stays rejected after a restart

    def _estimate_offset(self, ledger_ms: int, rtt_ms: int) -> None:
        # The ledger stamped between send and receipt: assume the middle of the round trip.
        offset = ledger_ms - (self.clock.now_ms() - rtt_ms / 2)
        self.clock_offset_ms = offset if self.clock_offset_ms is None else (
            0.8 * self.clock_offset_ms + 0.2 * offset)
        if abs(self.clock_offset_ms) > OFFSET_ALARM_MS:
            if "clock_offset" not in self.alarms:
                log.error("clock offset %.0f ms against the ledger (threshold %d ms)",
                          self.clock_offset_ms, OFFSET_ALARM_MS)
            self.alarms.add("clock_offset")
        else:
            self.alarms.discard("clock_offset")

    def snapshot(self) -> dict[str, Any]:
        records, nbytes = self.journal.journal.backlog()
        return {"active_uplink": self.selector.active,
                "uplinks": {n: u.connected for n, u in self.uplinks.items()},
                "backlog_records": records, "backlog_bytes": nbytes,
                "in_flight": len(self.forwarder.inflight),
                "counters": dict(self.forwarder.counters) | self.counters,
                "failovers": self.selector.failovers, "failbacks": self.selector.failbacks,
                "clock_offset_ms": None if self.clock_offset_ms is None else round(
                    self.clock_offset_ms), "alarms": sorted(self.alarms),
                "last_command": self.last_command,
                "commands": {"accepted": self.gate.accepted if self.gate else 0,
                             "rejected": dict(self.gate.rejected) if self.gate else {}}}

    def _publish_status(self, active: str | None) -> None:
        if active is None:
            return
        doc = self.status()
        doc["state"] = "online"
        payload = json.dumps(doc, sort_keys=True, default=str).encode()
        self.uplinks[active].publish(f"{self.base}/status", payload, qos=1, retain=True)
