"""The node's main loop: devices -> pipeline -> journal -> forwarder -> umqtt -> ledger.

The MicroPython counterpart of ``firmware/agent.py`` and ``firmware/forwarding.py``,
single-threaded. One ``step()``:

1. read every device (UART, non-blocking) and journal what they produced: pipeline
   (validate, redact, classify), HLC stamp, append, then one ``flush()`` for the step (the
   group commit: records are durable when it returns);
2. check Wi-Fi; when it is up and the uplink is down and due, one bounded connect; the
   forwarder learns of every change (``set_uplink``) and resends everything
   unacknowledged from the journal after a reconnect;
3. read what the broker sent (acks, commands), each ack moving the forwarder's window and,
   over a contiguous run, the journal's commit point (ring space is reclaimed only then);
4. publish the batches the forwarder hands out, reading the devices again between every
   two network calls, and the retained status every ``status_period_s``.

Every network call is bounded by the uplink's ``timeout_s``, so a silent broker delays
the UART reads by at most that, and the UARTs' receive buffers hold the bytes meanwhile.
``run()`` repeats ``step()``, pausing only while nothing is due (``idle_ms`` at most).

The batches are the gateway's wire format (``docs/wire-format.md``), signed with the same
core signer, uncompressed (flags 0: ``deflate`` is missing on some ports and costs RAM
on all; the ledger takes both). Acks are taken only for this journal's epoch.

When the far end is gone: Wi-Fi down, broker down or silent, the ledger not answering:
records stay in the journal (durable, counted in ``backlog``), and go out again when the
uplink returns; the ledger drops the duplicates by (gateway, epoch, seq). A full journal
refuses new transactions (``journal_full``, counted); nothing acknowledged is lost.
Counters are in ``status()``, published on the ``status`` topic.
"""

import json

from firmware.core.commands import CommandRejected
from firmware.core.errors import JournalFull, MidshiftError
from firmware.core.forwarder import Forwarder
from firmware.core.hlc import HybridLogicalClock
from firmware.core.pipeline import InvalidEvent, Pipeline
from firmware.core.wire import WireError, decode_ack

TOPIC_ROOT = "midshift/v1"
UPLINK_NAME = "wifi"
NTP_RETRY_MS = 10000


class Node:
    def __init__(self, cfg, journal, devices, uplink, wifi, clock, signer, command_gate=None,
                 command_state=None, max_events=50, max_bytes=8192, window=2,
                 ack_timeout_ms=5000, idle_ms=20, status_period_ms=None):
        self.cfg = cfg
        self.journal = journal
        self.devices = devices
        self.uplink = uplink
        self.wifi = wifi
        self.clock = clock
        self.base = "%s/%s/%s" % (TOPIC_ROOT, cfg.site, cfg.gateway_id)
        self.pipeline = Pipeline(_classes(cfg), journal.max_body)
        self.hlc = HybridLogicalClock(clock.now_ms, journal.last_hlc)
        now = clock.monotonic_ms()
        self.forwarder = Forwarder(journal, cfg.gateway_id, signer, None,
                                   max_events=max_events, max_bytes=max_bytes, linger_ms=0,
                                   window=window, ack_timeout_ms=ack_timeout_ms, now_ms=now)
        self.gate = command_gate
        self.command_state = command_state
        self.idle_ms = idle_ms
        self.status_period_ms = (int(cfg.status_period_s * 1000) if status_period_ms is None
                                 else status_period_ms)
        self._status_due = now
        self.counters = {"steps": 0, "journaled": 0, "journal_full": 0, "storage_errors": 0,
                         "bad_acks": 0, "acks": 0, "commits": 0, "commands_rejected": 0,
                         "max_device_gap_ms": 0, "loop_errors": 0}
        self.last_loop_error = None
        self.invalid = self.pipeline.invalid  # reason -> count (bad_time, unknown_source...)
        self.last_command = None
        self._last_device_ms = now
        self._ntp_due = now
        self._wifi_up = False

    # ---- the input side ---------------------------------------------------------------------

    def read_devices(self):
        """Poll every device once and journal what they produced (queued, not yet synced)."""
        mono = self.clock.monotonic_ms()
        gap = mono - self._last_device_ms
        if gap > self.counters["max_device_gap_ms"]:
            self.counters["max_device_gap_ms"] = gap
        self._last_device_ms = mono
        wall = self.clock.now_ms()
        for dev in self.devices:
            for event in dev.poll(mono, wall):
                self._journal(event)

    def _journal(self, event):
        try:
            body, cls = self.pipeline.prepare(event)
        except InvalidEvent:
            return  # counted by reason in pipeline.invalid
        try:
            self.journal.append(body, cls, self.hlc.now())
        except JournalFull:
            self.counters["journal_full"] += 1
            return
        except MidshiftError:  # the storage failed under a telemetry drop
            self.counters["storage_errors"] += 1
            return
        self.counters["journaled"] += 1

    def flush(self):
        """The group commit: everything queued this step becomes durable (one sync)."""
        if not self.journal.pending():
            return
        try:
            self.journal.flush()
        except MidshiftError:
            self.counters["storage_errors"] += 1

    # ---- one step ----------------------------------------------------------------------------

    def step(self):
        self.counters["steps"] += 1
        self.read_devices()
        self.flush()
        now = self.clock.monotonic_ms()
        wifi_up = self.wifi.check(now) if self.wifi is not None else True
        self._wifi_up = wifi_up
        up = self.uplink
        if wifi_up and now >= self._ntp_due and not self.clock.synced():
            self._ntp_due = now + NTP_RETRY_MS
            self.clock.sync_ntp()  # bounded by ntptime's own 1 s timeout
            self.read_devices()
        if not wifi_up:
            up.drop(now, "wifi down")
        elif up.due(now):
            up.connect(now)
            self.read_devices()
        self._sync_uplink_state(now)
        if up.connected:
            up.service(now)
            self.read_devices()
            self._handle_messages(up.take_messages())
            self._sync_uplink_state(self.clock.monotonic_ms())
        if up.connected:
            self._publish_batches()
        if up.connected and now >= self._status_due:
            self._status_due = now + self.status_period_ms
            up.publish(self.base + "/status", json.dumps(self.status()).encode(),
                       self.clock.monotonic_ms(), qos=1, retain=True)
            self.read_devices()
        self.flush()

    def _sync_uplink_state(self, now):
        name = UPLINK_NAME if self.uplink.connected else None
        if name != self.forwarder.uplink:
            self.forwarder.set_uplink(name, now)
            if name is not None:
                self._status_due = now  # say we are back

    def _publish_batches(self):
        up = self.uplink
        topic = self.base + "/events"
        for _lane, _first, _last, data in self.forwarder.poll(self.clock.monotonic_ms(),
                                                               self.clock.now_ms()):
            ok = up.publish(topic, data, self.clock.monotonic_ms())
            self.read_devices()
            if not ok:
                self._sync_uplink_state(self.clock.monotonic_ms())
                return
        self._handle_messages(up.take_messages())  # acks that came while publishing

    def _handle_messages(self, messages):
        for topic, payload in messages:
            if topic.endswith("/ack"):
                self._on_ack(payload)
            elif topic.endswith("/cmd"):
                self._on_command(payload)

    def _on_ack(self, payload):
        try:
            epoch, first, last, ledger_ms, status = decode_ack(payload)
        except WireError:
            self.counters["bad_acks"] += 1
            return
        if epoch != self.journal.epoch:
            self.counters["bad_acks"] += 1
            return
        self.counters["acks"] += 1
        self.hlc.observe(ledger_ms << 16)
        commit = self.forwarder.on_ack(first, last, status, self.clock.monotonic_ms())
        if commit is not None:
            try:
                self.journal.commit(commit[0], commit[1])  # reclaims ring space: one sync
                self.counters["commits"] += 1
            except MidshiftError:
                self.counters["storage_errors"] += 1

    def _on_command(self, payload):
        if self.gate is None:
            self.counters["commands_rejected"] += 1
            return
        try:
            cmd_id, cmd, args = self.gate.check(payload)
        except CommandRejected:
            self.counters["commands_rejected"] += 1
            return
        if self.command_state is not None:
            self.command_state(cmd_id)  # a replay stays rejected after a reboot
        result = "ok"
        if cmd == "drain-now":
            self.forwarder.drain_now()
        elif cmd == "replay-from":
            result = {"from_seq": self.forwarder.replay_from(args["seq"])}
        elif cmd != "ping":
            result = "not supported on the node"
        self.last_command = {"id": cmd_id, "cmd": cmd, "result": result}
        self._status_due = 0

    # ---- run ---------------------------------------------------------------------------------

    def run(self, sleep_ms, should_stop=None):
        """Step until ``should_stop()`` says so; ``sleep_ms(n)`` pauses while nothing is due.
        An unexpected exception in a step is counted (``loop_errors``, ``last_loop_error``)
        and the loop goes on: a node that stops reading its scanner loses scans."""
        while should_stop is None or not should_stop():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - see docstring; the status shows it
                self.counters["loop_errors"] += 1
                self.last_loop_error = repr(exc)
            sleep_ms(self._idle_for())

    def _idle_for(self):
        """How long to pause: until the next thing due, at most ``idle_ms``. Network
        deadlines count only while the network can act on them (no spinning offline)."""
        now = self.clock.monotonic_ms()
        times = [now + self.idle_ms]
        up = self.uplink
        if self._wifi_up:
            times.append(up.deadline_ms())
        if up.connected:
            times.append(self._status_due)
            t = self.forwarder.next_deadline_ms()
            if t is not None:
                times.append(t)
        for dev in self.devices:
            t = dev.deadline_ms()
            if t is not None:
                times.append(t)
        return max(0, min(times) - now)

    def status(self):
        stats = self.journal.stats()
        out = {"gateway": self.cfg.gateway_id, "state": "online", "node": "micropython",
               "journal": stats, "backlog_records": stats["backlog_records"],
               "in_flight": len(self.forwarder.inflight),
               "forwarder": dict(self.forwarder.counters), "counters": dict(self.counters),
               "pipeline": self.pipeline.stats(), "uplink": self.uplink.status(),
               "devices": [d.status() for d in self.devices],
               "last_command": self.last_command, "last_loop_error": self.last_loop_error}
        if self.wifi is not None:
            out["wifi"] = self.wifi.status()
        return out

    def close(self):
        self.flush()
        for dev in self.devices:
            dev.close()
        self.uplink.close()
        self.journal.close()


def _classes(cfg):
    out = {}
    for d in cfg.devices:
        out[d.name] = d.cls
    return out
