"""The node's main loop: devices -> pipeline -> journal -> forwarder -> umqtt -> ledger.

The MicroPython counterpart of ``midshift/firmware/agent.py`` and ``midshift/firmware/forwarding.py``,
single-threaded, around the same link session (``midshift/firmware/core/session.py``), which
decides what to send, what an ack commits, what a command does and when the status is
due; this loop carries out its actions. One ``step()``:

1. read every device (UART, non-blocking) and journal what they produced: pipeline
   (validate, redact, classify), HLC stamp, append, then one ``flush()`` for the step (the
   group commit: records are durable when it returns);
2. check Wi-Fi; when it is up and the uplink is down and due, one bounded connect; the
   session learns of every change (``uplink_changed``) and resends everything
   unacknowledged from the journal after a reconnect;
3. hand the session what the broker sent (acks, commands): each ack moves the window and,
   over a contiguous run, the journal's commit point (ring space is reclaimed only then);
4. publish what the session's ``poll`` hands out, reading the devices again between every
   two network calls, and the retained status when it is due.

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

from midshift.firmware.core import session as s
from midshift.firmware.core.errors import JournalFull, MidshiftError
from midshift.firmware.core.event import encode_body
from midshift.firmware.core.hlc import HybridLogicalClock
from midshift.firmware.core.pipeline import InvalidEvent
from midshift.firmware.core.record import TELEMETRY

UPLINK_NAME = "wifi"
NTP_RETRY_MS = 10000


class Node:
    def __init__(self, journal, devices, uplink, wifi, clock, session, pipeline, watch,
                 command_state=None, idle_ms=20):
        """Made by ``boot.new_node`` from the checked config: that translation runs once,
        so it lives in boot's code, which the running node drops from RAM."""
        self.journal = journal
        self.devices = devices
        self.uplink = uplink
        self.wifi = wifi
        self.clock = clock
        self.session = session
        self.pipeline = pipeline
        self.watch = watch
        self.hlc = HybridLogicalClock(clock.now_ms, journal.last_hlc)
        now = clock.monotonic_ms()
        self.command_state = command_state
        self.idle_ms = idle_ms
        self.counters = {"steps": 0, "journaled": 0, "journal_full": 0, "storage_errors": 0,
                         "incidents_dropped": 0,
                         "max_device_gap_ms": 0, "loop_errors": 0}
        self.last_loop_error = None
        self.invalid = self.pipeline.invalid  # reason -> count (bad_time, unknown_source...)
        self._last_device_ms = now
        self._ntp_due = now
        self._wifi_up = False

    @property
    def forwarder(self):
        return self.session.forwarder

    @property
    def gate(self):
        return self.session.gate

    @property
    def last_command(self):
        return self.session.last_command

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

    def _incident(self, a):
        """The gateway's own event (a link change) into the journal, for the ledger."""
        body = encode_body("agent", a.kind, self.clock.now_ms(), a.data)
        try:
            self.journal.append(body, TELEMETRY, self.hlc.now())
        except MidshiftError:
            self.counters["incidents_dropped"] += 1

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
            self._sync_uplink_state(self.clock.monotonic_ms())
            self._handle_messages(up.take_messages())
        self._poll_session()
        self.flush()

    def _sync_uplink_state(self, now):
        up = self.uplink.connected
        if up != bool(self.session.connected.get(UPLINK_NAME)):
            self.session.uplink_changed(UPLINK_NAME, up, now, "" if up else "disconnected")

    def _poll_session(self):
        self._carry_out(self.session.poll(self.clock.monotonic_ms(), self.clock.now_ms()))
        self._handle_messages(self.uplink.take_messages())  # acks that came while publishing

    def _handle_messages(self, messages):
        for topic, payload in messages:
            self._carry_out(self.session.message(UPLINK_NAME, topic, payload,
                                                 self.clock.monotonic_ms(),
                                                 self.clock.now_ms()))

    def _carry_out(self, actions):
        refused = False
        for a in actions:
            if isinstance(a, s.Publish):
                refused = refused or not self._publish(a)
            elif isinstance(a, s.StatusDue):
                local = self._local_status()
                msg = self.session.status_message(self.clock.now_ms(), local)
                if msg is not None and not refused:
                    self._publish(msg)
            elif isinstance(a, s.Commit):
                try:
                    self.journal.commit(a.seq, a.pos)  # reclaims ring space: one sync
                except MidshiftError:
                    self.counters["storage_errors"] += 1
            elif isinstance(a, s.Observe):
                self.hlc.observe(a.hlc)
            elif isinstance(a, s.SaveCommandId) and self.command_state is not None:
                self.command_state(a.cmd_id)  # a replay stays rejected after a reboot
            elif isinstance(a, s.Incident):
                self._incident(a)
        if refused:
            self._sync_uplink_state(self.clock.monotonic_ms())

    def _publish(self, msg):
        """One bounded network call, then the UARTs again. After a refusal the rest of
        this round waits: the session resends after its ack timeout."""
        up = self.uplink
        ok = up.connected and up.publish(msg.topic, msg.payload, self.clock.monotonic_ms(),
                                         qos=msg.qos, retain=msg.retain)
        self.read_devices()
        if not ok:
            self.session.publish_failed(msg.uplink)
        return ok

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
            t = self.session.next_deadline_ms(now)
            if t is not None:
                times.append(t)
        for dev in self.devices:
            t = dev.deadline_ms()
            if t is not None:
                times.append(t)
        return max(0, min(times) - now)

    def _local_status(self):
        """What only the node knows; judging the devices on the way (down: the alarm)."""
        devices = [d.status() for d in self.devices]
        down = self.watch.update(devices, self.clock.monotonic_ms())
        self.session.alarm("device_down", bool(down), ",".join(down) if down else None)
        out = {"devices": devices, "devices_down": down, "pipeline": self.pipeline.stats(),
               "counters": dict(self.counters), "last_loop_error": self.last_loop_error,
               "uplink_counters": {UPLINK_NAME: self.uplink.status()}}
        if self.wifi is not None:
            out["wifi"] = self.wifi.status()
        return out

    def status(self):
        """The status document, the same shape as the agent's (``docs/wire-format.md``)."""
        return self.session.status(self.clock.now_ms(), self._local_status())

    def close(self):
        self.flush()
        self._carry_out(self.session.close(self.clock.monotonic_ms()))
        for msg in self.session.goodbye(self.clock.now_ms()):  # a clean stop says offline
            self._publish(msg)
        for dev in self.devices:
            dev.close()
        self.uplink.close()
        self.journal.close()
