"""The link session: the gateway's whole conversation with the ledger, sans I/O.

One object owns everything the gateway says to and hears from the ledger: the forwarder
(journal records out as signed batches), the uplink selector (which link carries them),
the command gate (signed downlink commands), the ack rule (decode, epoch check, match,
commit decision), the clock policy (the ledger's time into the HLC, the offset estimate and
its alarm) and the status document. It is fed times and bytes through the protocol's verbs
and answers with actions for the runtime to carry out, in the shape of h11's Connection:

- ``uplink_changed(name, up, now_ms, reason)``: an edge connected or lost a link;
- ``message(uplink, topic, payload, now_ms, wall_ms)``: something arrived (ack, command);
- ``poll(now_ms, wall_ms)``: the timers (batches, resends, fail-back, commit, status);
- ``publish_failed(uplink)``: the edge could not hand a batch to its client;
- ``next_deadline_ms()``: when ``poll`` next has work by the clock alone;
- ``status(wall_ms, local)``: the status document (``docs/wire-format.md``);
- ``goodbye(wall_ms)``: the retained ``offline`` status a clean stop publishes itself
  (the broker's last will covers only an abnormal disconnect);
- ``close(now_ms)``: the last commit before the journal closes.

Actions are small classes: ``Publish``, ``Commit``, ``SaveCommandId``, ``Observe`` (the
ledger's time for the HLC), ``Note`` (a sync-log line) and ``StatusDue``, answered by
publishing ``status_message(...)``; a command adds those of ``core/commands.py``
(``SetLogLevel``, ``Reload``), where what a command does lives. The CPython agent
(``midshift/firmware/forwarding.py``) and the MicroPython node (``midshift/firmware/mpy/node.py``) are
thin loops around it, so both runtimes obey the same rules.

Hedged sends (``core/forwarder.py``; carried out by ``core/hedging.py``, loaded only with
more than one uplink): a batch unanswered past the hedge delay goes once more on the first
healthy standby that carries it (``hedge`` per uplink: every class, ``txn`` only, or none);
its ack is taken from that standby. When the active uplink's batches keep being answered
through their hedges (``DEMOTE_AFTER`` in a row, with nothing heard on it in between), it
is demoted before its keepalive notices: the traffic fails over, and it takes it back only
after the fail-back hold time.

When the far end is gone: no healthy uplink means no publishes; records wait in the
journal, in flight are only seq ranges, and everything unacknowledged goes again on the
next uplink. Records waiting with no ack for ``no_ack_ms`` (no uplink, or a ledger that
has stopped answering) raise the ``no_ack`` alarm until an ack comes. An ack that does not match this journal's epoch or a batch in flight is
counted and changes nothing; a command that fails its signature or id check likewise.
"""

import json

from midshift.firmware.core import topics
from midshift.firmware.core.forwarder import HEDGE_FACTOR, HEDGE_FLOOR_MS, Forwarder
from midshift.firmware.core.record import TELEMETRY
from midshift.firmware.core.uplink_selector import UplinkSelector
from midshift.firmware.core.wire import WireError, decode_ack

STATUS_VERSION = 1
OFFSET_ALARM_MS = 500
COMMIT_EVERY_MS = 500
NO_ACK_MS = 30000
HEDGE_ALL = "all"
HEDGE_TXN = "txn"
HEDGE_OFF = "off"


class Publish:
    def __init__(self, uplink, topic, payload, qos=1, retain=False):
        self.uplink = uplink
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain


class Commit:
    """Persist the commit point: ring space up to ``seq`` (ending at ``pos``) is free."""

    def __init__(self, seq, pos):
        self.seq = seq
        self.pos = pos


class SaveCommandId:
    """Persist the last accepted command id, so a replay stays rejected after a reboot."""

    def __init__(self, cmd_id):
        self.cmd_id = cmd_id


class Observe:
    """Merge the ledger's HLC timestamp into the gateway's clock."""

    def __init__(self, hlc):
        self.hlc = hlc


class StatusDue:
    """Time to publish the retained status: answer with ``status_message(...)``."""


class Incident:
    """Journal an event of the gateway's own (source ``agent``, class telemetry), so the
    ledger's morning report sees it: ``link`` when "some uplink is up" changes."""

    def __init__(self, kind, data):
        self.kind = kind
        self.data = data


class Note:
    """A line for the sync log: ``what`` happened, with ``fields``."""

    def __init__(self, what, fields):
        self.what = what
        self.fields = fields


def subscriptions(site, gateway, commands=True):
    """What every uplink subscribes to: this gateway's acks and (with a command key) its
    commands."""
    out = [topics.topic(site, gateway, topics.ACK)]
    if commands:
        out.append(topics.topic(site, gateway, topics.CMD))
    return out


def last_will(site, gateway, version="", boot_id=""):
    """(topic, payload) of the last will: the retained status says offline. It is set
    at connect and sent by the broker later, so it carries no time: the broker's
    retained copy is all a reader has (``reason``: ``connection_lost``)."""
    return (topics.topic(site, gateway, topics.STATUS),
            json.dumps({"v": STATUS_VERSION, "gateway": gateway, "site": site,
                        "state": "offline", "reason": "connection_lost", "version": version,
                        "boot_id": boot_id}).encode())


class LinkSession:
    def __init__(self, journal, site, gateway, signer, uplinks, now_ms, compress=None,
                 metered=(), hold_ms=30000, gate=None, drain_rates=None, drain_rate=0,
                 status_period_ms=10000, commit_every_ms=COMMIT_EVERY_MS,
                 offset_alarm_ms=OFFSET_ALARM_MS, runtime="cpython", supports=(),
                 max_events=500, max_bytes=256 * 1024, linger_ms=5, window=8,
                 ack_timeout_ms=5000, no_ack_ms=NO_ACK_MS, version="", boot_id="",
                 hedge=None, hedge_floor_ms=HEDGE_FLOOR_MS, hedge_factor=HEDGE_FACTOR,
                 burst=None):
        """``journal``: the core Journal or anything with its read-only verbs (``read``,
        ``tail``, ``durable``, ``durable_seq``, ``backlog``, ``stats``, ``free_bytes``,
        ``data_size``, ``epoch``). ``uplinks``: names, preferred first. ``supports``: the
        optional commands this runtime can carry out (``set-log-level``,
        ``reload-config``). ``version``: the firmware's (``midshift.firmware.__version__``);
        ``boot_id``: random per start, so a reader tells a restart from a long silence.
        ``hedge``: {uplink: "all" | "txn" | "off"}, what hedged copies that uplink may
        carry (default: "txn" on a metered uplink, "all" on the others);
        ``hedge_floor_ms`` 0: no hedging at all. ``burst``: new batches per ``poll`` at
        most (None: as many as the window takes; see ``core/forwarder.py``)."""
        self.journal = journal
        self.site = site
        self.gateway = gateway
        self.uplinks = list(uplinks)
        self.selector = UplinkSelector(self.uplinks, hold_ms, metered)
        self.forwarder = Forwarder(journal, gateway, signer, compress, max_events=max_events,
                                   max_bytes=max_bytes, linger_ms=linger_ms, window=window,
                                   ack_timeout_ms=ack_timeout_ms, drain_rate=drain_rate,
                                   now_ms=now_ms, hedge_floor_ms=hedge_floor_ms,
                                   hedge_factor=hedge_factor, burst=burst)
        metered = set(metered)
        self.hedge = dict((n, HEDGE_TXN if n in metered else HEDGE_ALL) for n in self.uplinks)
        self.hedge.update(hedge or {})
        self._hedge_streak = 0  # hedges in a row answered on their standby
        # Hedged copies need a standby: a single uplink (a MicroPython node) never hedges,
        # and never loads the code that would (its bytecode is RAM on a board).
        self._hedging = None
        if len(self.uplinks) > 1:
            from midshift.firmware.core import hedging
            self._hedging = hedging
        self.gate = gate
        self.drain_rates = drain_rates or {}
        self.default_drain_rate = drain_rate
        self.status_period_ms = status_period_ms
        self.commit_every_ms = commit_every_ms
        self.offset_alarm_ms = offset_alarm_ms
        self.runtime = runtime
        self.supports = supports
        self.no_ack_ms = no_ack_ms
        self.version = version
        self.boot_id = boot_id
        self.started_ms = now_ms
        self.now_ms = now_ms            # the latest monotonic time heard (for uptime)
        self.alarm_detail = {}          # alarm name -> what it is about (device names)
        self._waiting_since = None      # records wait for an ack since (monotonic)
        self._oldest = None             # (tail seq, its wall ms): the oldest unacked record
        self.own = {topics.topic(site, gateway, topics.ACK): topics.ACK,
                    topics.topic(site, gateway, topics.CMD): topics.CMD}
        self.connected = {}
        self.clock_offset_ms = None
        self.alarms = set()
        self.last_command = None
        self.link_since_ms = None       # wall ms "some uplink is up" last changed (None: never)
        self.counters = {"acks": 0, "bad_acks": 0, "commits": 0, "publish_refused": 0,
                         "commands_rejected": 0, "ignored_inactive": 0, "foreign_topic": 0,
                         "resend_asked": 0}
        self._pending_commit = None
        self._last_commit_ms = now_ms - commit_every_ms  # the first commit is not held
        self._status_due = now_ms

    # ---- verbs -------------------------------------------------------------------------

    @property
    def active(self):
        return self.selector.active

    def subscriptions(self):
        return subscriptions(self.site, self.gateway)

    def will(self):
        return last_will(self.site, self.gateway)

    def uplink_changed(self, name, up, now_ms, reason=""):
        self.connected[name] = up
        self.selector.report(name, up, now_ms)
        if up:
            return [Note("uplink_up", {"uplink": name})]
        return [Note("uplink_down", {"uplink": name, "reason": reason})]

    def alarm(self, name, on=True, detail=None):
        """Raise (or clear) an alarm the runtime found (a failed write, a dead thread, a
        device down): it shows in the status (with ``detail``, e.g. the device names) and,
        when it or its detail changes, in a sync-log note."""
        if on == (name in self.alarms) and (not on or detail == self.alarm_detail.get(name)):
            return []
        if on:
            self.alarms.add(name)
            if detail is None:
                self.alarm_detail.pop(name, None)
            else:
                self.alarm_detail[name] = detail
        else:
            self.alarms.discard(name)
            self.alarm_detail.pop(name, None)
        self._status_due = 0  # say so at once
        fields = {"alarm": name}
        if on and detail is not None:
            fields["detail"] = detail
        return [Note("alarm" if on else "alarm_cleared", fields)]

    def publish_failed(self, uplink):
        """The edge refused a batch (not connected, queue full): it goes again after the
        ack timeout, so this only counts."""
        self.counters["publish_refused"] += 1

    def message(self, uplink, topic, payload, now_ms, wall_ms):
        # Every connected uplink subscribes, and they usually reach the same broker: take
        # acks and commands from the active one only, or each would arrive twice.
        # A hedged batch's ack is taken from the standby its copy went on: with the active
        # uplink blackholed, it is the only way the answer comes back.
        leaf = self.own.get(topic)
        if uplink == self.selector.active:
            # The active uplink still delivers: a hedge's answer that came first on the
            # standby won a race between two live paths (every uplink hears every ack
            # when they reach one broker), not a rescue; only a silent one is demoted.
            self._hedge_streak = 0
        else:
            if leaf == topics.ACK and self._hedging is not None \
                    and self._hedging.answers_a_hedge(self, uplink, payload):
                return self._on_ack(payload, now_ms, wall_ms, uplink)
            self.counters["ignored_inactive"] += 1
            return []
        if leaf == topics.ACK:
            return self._on_ack(payload, now_ms, wall_ms, uplink)
        if leaf == topics.CMD:
            return self._on_command(payload, now_ms)
        self.counters["foreign_topic"] += 1
        return []

    def poll(self, now_ms, wall_ms):
        self.now_ms = now_ms
        out = self._commit_if_due(now_ms)
        out.extend(self._check_acks(now_ms))
        active, change = self.selector.select(now_ms)
        if change is not None:
            out.extend(self._switch(active, change, now_ms, wall_ms))
        if active is None:
            return out
        events = topics.topic(self.site, self.gateway, topics.EVENTS)
        for lane, first, last, data in self.forwarder.poll(now_ms, wall_ms):
            out.append(Publish(active, events, data))
            out.append(Note("resent" if lane == "resend" else "sent",
                            {"lane": lane, "first": first, "last": last, "bytes": len(data),
                             "uplink": active}))
        if self._hedging is not None:
            out.extend(self._hedging.poll(self, active, events, now_ms))
        if now_ms >= self._status_due:
            self._status_due = now_ms + self.status_period_ms
            out.append(StatusDue())
        return out

    def _switch(self, active, change, now_ms, wall_ms):
        """The selector changed the active uplink: resend from the acknowledged point."""
        what, old, new = change
        out = [Note(what, {"from": old, "to": new})]
        if what in ("up", "down"):
            self.link_since_ms = wall_ms
            out.append(Incident("link", {"state": "online" if new else "offline",
                                         "uplink": new, "since_ms": wall_ms}))
        self.forwarder.set_uplink(active, now_ms, txn_only=active is not None and
                                  not self.selector.carries(active, TELEMETRY))
        if active is not None:
            self.forwarder.bucket.rate = self.drain_rates.get(active) or \
                self.default_drain_rate
        self._hedge_streak = 0
        self._status_due = now_ms
        return out

    def next_deadline_ms(self, now_ms=0):
        now_times = [self.forwarder.next_deadline_ms(), self.selector.next_failback_ms(now_ms)]
        if self.selector.active is not None:
            now_times.append(self._status_due)
            if self._waiting_since is not None and "no_ack" not in self.alarms:
                now_times.append(self._waiting_since + self.no_ack_ms)
        if self._pending_commit is not None:
            now_times.append(self._last_commit_ms + self.commit_every_ms)
        times = [t for t in now_times if t is not None]
        return min(times) if times else None

    def close(self, now_ms):
        """The commit still pending, to carry out before the journal closes."""
        return self._commit_if_due(now_ms, force=True)

    def goodbye(self, wall_ms):
        """A clean stop: the retained ``offline`` status for every connected uplink, to
        publish before disconnecting (a clean DISCONNECT discards the last will)."""
        payload = json.dumps({"v": STATUS_VERSION, "gateway": self.gateway, "site": self.site,
                              "state": "offline", "reason": "stopped", "ts_ms": wall_ms,
                              "version": self.version, "boot_id": self.boot_id,
                              "uptime_s": self._uptime_s(),
                              "last_command": self.last_command}).encode()
        topic = topics.topic(self.site, self.gateway, topics.STATUS)
        return [Publish(n, topic, payload, qos=1, retain=True) for n in self.uplinks
                if self.connected.get(n)]

    # ---- acks --------------------------------------------------------------------------

    def _check_acks(self, now_ms):
        """``no_ack``: records have waited ``no_ack_ms`` with no ack (the clock restarts at
        every ack, and when the wait starts)."""
        waiting = self.journal.durable_seq > self.forwarder.commit_seq
        if not waiting:
            self._waiting_since = None
            return self.alarm("no_ack", False) if "no_ack" in self.alarms else []
        if self._waiting_since is None:
            self._waiting_since = now_ms
        if now_ms - self._waiting_since >= self.no_ack_ms and "no_ack" not in self.alarms:
            return self.alarm("no_ack", True, "no ack for %d s while %d records wait" % (
                (now_ms - self._waiting_since) // 1000,
                self.journal.durable_seq - self.forwarder.commit_seq))
        return []

    def _on_ack(self, payload, now_ms, wall_ms, uplink=None):
        try:
            epoch, first, last, ledger_ms, status = decode_ack(payload, self.forwarder.signer)
        except WireError as exc:
            self.counters["bad_acks"] += 1
            return [Note("bad_ack", {"reason": exc.reason})]
        if status == "resend":  # of no batch and no epoch: the ledger lost what we sent
            self.counters["resend_asked"] += 1
            self.forwarder.resend_now(now_ms)
            return [Note("resend_asked", {"in_flight": len(self.forwarder.inflight)})]
        if epoch != self.journal.epoch:
            self.counters["bad_acks"] += 1
            return [Note("bad_ack", {"reason": "epoch"})]
        self.counters["acks"] += 1
        commit = self.forwarder.on_ack(first, last, status, now_ms, uplink)
        sent = self.forwarder.ack_sent_ms
        out = [Note("acked" if status == "ok" else "rejected", {"first": first, "last": last})]
        if self._hedging is not None:
            out.extend(self._hedging.learn(self, now_ms))
        if sent is not None:  # the ledger answered a batch of ours: it is there
            self._waiting_since = now_ms
            out.extend(self.alarm("no_ack", False))
        if status != "ok" and sent is not None:
            out.extend(self.alarm("ledger_rejected"))
        elif not self.forwarder.rejected:  # a replay the ledger took this time
            out.extend(self.alarm("ledger_rejected", False))
        if sent is not None:  # a batch of ours, in flight: its round trip dates the ledger
            out.append(Observe(ledger_ms << 16))
            out.extend(self._estimate_offset(ledger_ms, wall_ms, now_ms - sent))
        if commit is not None:
            self._pending_commit = commit
            out.extend(self._commit_if_due(now_ms))
        return out

    def _commit_if_due(self, now_ms, force=False):
        """The commit point moves at most every ``commit_every_ms`` (one sync each), sooner
        when the ring runs short of room: a commit per ack would put one more sync beside
        every batch. A crash before it costs only a resend of acknowledged batches, which
        the ledger discards as duplicates."""
        if self._pending_commit is None:
            return []
        tight = self.journal.free_bytes() < self.journal.data_size // 4
        if not (force or tight or now_ms - self._last_commit_ms >= self.commit_every_ms):
            return []
        seq, pos = self._pending_commit
        self._pending_commit = None
        self._last_commit_ms = now_ms
        self.counters["commits"] += 1
        return [Commit(seq, pos)]

    def _estimate_offset(self, ledger_ms, wall_ms, rtt_ms):
        # The ledger stamped between send and receipt: assume the middle of the round trip.
        offset = ledger_ms - (wall_ms - rtt_ms / 2)
        if self.clock_offset_ms is None:
            self.clock_offset_ms = offset
        else:
            self.clock_offset_ms = 0.8 * self.clock_offset_ms + 0.2 * offset
        if abs(self.clock_offset_ms) > self.offset_alarm_ms:
            if "clock_offset" not in self.alarms:
                self.alarms.add("clock_offset")
                return [Note("alarm", {"alarm": "clock_offset",
                                       "offset_ms": round(self.clock_offset_ms),
                                       "threshold_ms": self.offset_alarm_ms})]
        else:
            self.alarms.discard("clock_offset")
        return []

    # ---- commands ----------------------------------------------------------------------

    def _on_command(self, payload, now_ms):
        if self.gate is None:
            self.counters["commands_rejected"] += 1
            return [Note("command_rejected", {"reason": "no_command_key"})]
        # Imported here: a node without a command key never loads the command code, nor
        # what a command does (``commands.carry_out``: its bytecode is RAM on a board).
        from midshift.firmware.core.commands import carry_out

        return carry_out(self, payload, now_ms)

    # ---- status ------------------------------------------------------------------------

    def _uptime_s(self):
        return (self.now_ms - self.started_ms) // 1000

    def oldest_unacked_age_s(self, wall_ms):
        """Age of the oldest record the ledger has not acknowledged, from its HLC stamp
        (wall ms in the top 48 bits), so it survives a restart; None with none waiting.
        The record is read once per tail position."""
        tail_pos, tail_seq = self.journal.tail()
        if self.journal.durable_seq < tail_seq:
            return None
        if self._oldest is None or self._oldest[0] != tail_seq:
            recs = self.journal.read(tail_pos, tail_seq, 1)[0]
            if not recs:
                return None
            self._oldest = (tail_seq, recs[0].hlc >> 16)
        return max(0, wall_ms - self._oldest[1]) // 100 / 10

    def status(self, wall_ms, local=None, now_ms=None):
        """The status document, one shape for both runtimes (``docs/wire-format.md``).
        ``local``: what only the runtime knows (``devices``, ``devices_down``,
        ``pipeline``, ``journal_refusing_txn``, runtime counters), merged in at the top
        level. ``now_ms``: the monotonic time (default: the latest ``poll``'s)."""
        if now_ms is not None:
            self.now_ms = now_ms
        records, nbytes = self.journal.backlog()
        active = self.selector.active
        if active is None:
            role = "none"
        elif active == self.uplinks[0]:
            role = "primary"
        else:
            role = "secondary"
        gate = self.gate
        doc = {"v": STATUS_VERSION, "gateway": self.gateway, "site": self.site,
               "state": "online", "runtime": self.runtime, "at_ms": wall_ms,
               "ts_ms": wall_ms, "version": self.version, "boot_id": self.boot_id,
               "uptime_s": self._uptime_s(),
               "oldest_unacked_age_s": self.oldest_unacked_age_s(wall_ms),
               "alarms": sorted(self.alarms), "alarm_detail": dict(self.alarm_detail),
               "devices_down": [], "uplink": role, "backlog_records": records, "backlog_bytes": nbytes,
               "journal": self.journal.stats(), "journal_refusing_txn": False,
               "devices": [], "pipeline": {}, "counters": {},
               "forwarding": {
                   "active_uplink": active,
                   "uplinks": dict((n, bool(self.connected.get(n))) for n in self.uplinks),
                   "backlog_records": records, "backlog_bytes": nbytes,
                   "in_flight": len(self.forwarder.inflight),
                   "counters": _merged(self.forwarder.counters, self.counters),
                   "failovers": self.selector.failovers,
                   "failbacks": self.selector.failbacks,
                   "demotions": self.selector.demotions,
                   "hedge_delay_ms": self.forwarder.hedge_delay_ms(),
                   "clock_offset_ms": None if self.clock_offset_ms is None
                   else round(self.clock_offset_ms),
                   "alarms": sorted(self.alarms),
                   "rejected": [[f.first, f.last] for f in self.forwarder.rejected],
                   "last_command": self.last_command,
                   "link_since_ms": self.link_since_ms,
                   "commands": {"accepted": gate.accepted if gate else 0,
                                "rejected": dict(gate.rejected) if gate else {}}}}
        if local:
            doc.update(local)
        doc["devices_in_error"] = len(faulty_devices(doc))
        return doc

    def status_message(self, wall_ms, local=None):
        """The retained status as a ``Publish`` on the active uplink (None: no uplink)."""
        if self.selector.active is None:
            return None
        payload = json.dumps(self.status(wall_ms, local)).encode()
        return Publish(self.selector.active, topics.topic(self.site, self.gateway,
                                                          topics.STATUS),
                       payload, qos=1, retain=True)


def faulty_devices(doc):
    """Names of the devices in ``error`` or down (not ok for longer than their stale
    time): what ``devices_in_error`` counts and the fault LED shows."""
    names = set(str(n) for n in doc.get("devices_down") or ())
    for d in doc.get("devices") or ():
        if isinstance(d, dict) and d.get("state") == "error":
            names.add(str(d.get("name")))
    return sorted(names)


def _merged(a, b):
    out = dict(a)
    out.update(b)
    return out
