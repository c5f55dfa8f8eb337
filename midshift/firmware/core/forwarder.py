"""The forwarder: journal records into signed batches, in flight until the ledger acks.

Sans-I/O: it reads the journal (itself I/O-free over an injected storage), is told the
time, the active uplink and the acks, and returns what to publish and what to commit.
The agent's edge loop does the publishing (paho) and the journal commit.

Rules, each for a failure peers have shipped:

- A batch leaves the window only when the ledger acknowledges it on the ``ack`` topic; a
  broker PUBACK means nothing here. The commit point (and ring space) advances only over
  a contiguous run of acknowledged seqs.
- A batch not acknowledged within ``ack_timeout_ms`` is sent again (same records, new
  ``sent_ms``), as is everything in flight when the uplink changes: the resend starts at
  what the ledger has acknowledged, skipping ranges acked out of order, not at the head.
- Live first: when an uplink comes up with a backlog of more than one batch, the backlog
  becomes its own lane, drained beside the live one and capped by a token bucket (per
  uplink, records per second), while new events go out at once in the live lane.
- Bounded memory: in flight are (seq range, positions) only; records are re-read from
  the journal for a resend. A two-hour outage costs flash, not RAM.
- Hedged sends: a batch not acknowledged within the hedge delay goes once more on the
  first healthy alternate uplink (``core/hedging.py``), without waiting for the active
  one to be declared dead; the ledger's unique key makes the copy harmless and the first
  ack wins.
  The delay follows the measured round trip (``HEDGE_FACTOR`` times the 90th percentile
  of recent first-attempt acks, never under the floor, never past the ack timeout), so a
  slow but healthy uplink is not doubled. A metered alternate takes only batches of
  transactions unless told otherwise. Backlog batches are not hedged: in a drain their
  acks queue behind each other at the ledger, so a late one means a busy ledger, not a
  dead uplink, and a copy would double the drain's work on both ends (it did: a third of
  the agent's drain CPU was hedged copies); a dead uplink still costs them only the
  keepalive's failover or their ack timeout.
- Small bursts: ``burst`` caps the new batches one ``poll`` encodes (None: fill the
  window). A poll that fills a 16-batch window encodes all 16 before the first is
  published, so the ledger idles while the gateway encodes and the gateway idles while
  the ledger stores (in a drain the two took turns); one batch per poll lets the runtime
  publish each as soon as it is signed, and ``next_deadline_ms`` says "now" while more
  are ready.
- The window counts full batches: past ``window`` batches in flight, more may go (up to
  ``WINDOW_STRETCH`` times as many) while all in flight together hold fewer than
  ``max_events`` records. At 10,000 events/s a live batch lingers 2 ms and holds about
  twenty records: eight of them covered 16 ms of ledger round trip, and every ledger
  stall past that (a slow fsync on its disk) shut the window and held the gateway's
  records back after the ledger had recovered (measured: ~45 ms stalls, the p99 of the
  10k benchmark). A live batch that could not go for a full window counts its linger from
  when it was held, not from when the window opened.
"""

from midshift.firmware.core.percentile import percentile
from midshift.firmware.core.record import TXN
from midshift.firmware.core.wire import Batch, encode_batch

LIVE = "live"
BACKLOG = "backlog"
HEDGE_FLOOR_MS = 50   # never hedge sooner: below this a copy is mostly wasted bytes
HEDGE_FACTOR = 2      # times the recent round trip's 90th percentile
RTT_SAMPLES = 64
WINDOW_STRETCH = 4    # small batches in flight: up to this many windows' worth


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; rate 0 or less: unlimited."""

    def __init__(self, rate, burst, now_ms):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at_ms = now_ms

    def available(self, now_ms):
        if self.rate <= 0:
            return 1 << 30
        self.tokens = min(self.burst, self.tokens + (now_ms - self.at_ms) * self.rate / 1000.0)
        self.at_ms = now_ms
        return int(self.tokens)

    def take(self, n):
        if self.rate > 0:
            self.tokens -= n


class InFlight:
    def __init__(self, lane, first, last, pos, end_pos, count, sent_ms, uplink):
        self.lane = lane
        self.first = first
        self.last = last
        self.pos = pos          # where its first record starts (to re-read it)
        self.end_pos = end_pos  # just past its last record (the commit position)
        self.count = count
        self.sent_ms = sent_ms
        self.uplink = uplink
        self.attempts = 1
        self.runs = None        # [(first, last, end_pos)] when the batch skipped records
        self.all_txn = False    # only transactions: a metered alternate may carry a hedge
        self.hedged_on = None   # the alternate uplink a copy went on, once


class Lane:
    def __init__(self, name, pos, seq, end_seq=None):
        self.name = name
        self.pos = pos
        self.seq = seq
        self.end_seq = end_seq  # last seq this lane carries; None: follows the head

    def done(self):
        return self.end_seq is not None and self.seq > self.end_seq


class Forwarder:
    def __init__(self, journal, gateway, signer, compress=None, max_events=500,
                 max_bytes=256 * 1024, linger_ms=5, window=8, ack_timeout_ms=5000,
                 drain_rate=0, now_ms=0, hedge_floor_ms=HEDGE_FLOOR_MS,
                 hedge_factor=HEDGE_FACTOR, burst=None):
        self.journal = journal
        self.gateway = gateway
        self.signer = signer
        self.compress = compress
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.linger_ms = linger_ms
        self.window = window
        self.burst = burst
        self._more_at = None  # a poll stopped at its burst: the next is due from then
        self.ack_timeout_ms = ack_timeout_ms
        self.bucket = TokenBucket(drain_rate, max(drain_rate, max_events), now_ms)
        self.inflight = []
        self.acked = []   # [(first, last, end_pos)] acknowledged beyond the commit point
        self.rejected = []  # batches the ledger refused for good, not yet settled
        tail_pos, tail_seq = journal.tail()
        self.commit_seq = tail_seq - 1
        self.lanes = [Lane(LIVE, tail_pos, tail_seq)]
        self.uplink = None
        self._waiting_since = None
        self._wall_ms = now_ms
        self.txn_only = False
        self.ack_sent_ms = None
        self.ack_hedge_won = None  # after on_ack: True when a hedged copy's path answered
        self.hedge_floor_ms = hedge_floor_ms  # 0 or None: no hedging
        self.hedge_factor = hedge_factor
        self.alternates = []  # [(uplink, carries telemetry)]: healthy, not active
        self._rtts = []
        self._hedge_delay = None  # cached until the next round trip is measured
        self.counters = {"batches": 0, "sent": 0, "acked": 0, "resent": 0, "stale_acks": 0,
                         "rejected": 0, "hedged": 0, "hedge_bytes": 0, "hedges_won": 0,
                         "sent_bytes": 0}

    # ---- events from the edge ------------------------------------------------------------

    def set_uplink(self, name, now_ms, txn_only=False):
        """The active uplink changed (None: none is up). What was in flight is resent from
        the ledger's acknowledged point, and a backlog gets its own lane. ``txn_only``: a
        metered uplink; telemetry waits in the journal for an unmetered one."""
        if name == self.uplink:
            return
        self.uplink = name
        self.txn_only = txn_only
        if name is None:
            return
        self.inflight = []
        start_pos, start_seq = self.journal.tail()
        durable_pos, durable_seq = self.journal.durable()
        self.lanes = [Lane(LIVE, start_pos, start_seq)]
        if durable_seq - start_seq + 1 > self.max_events:
            # Everything durable now is the backlog; what comes after is live.
            self.lanes = [Lane(LIVE, durable_pos, durable_seq + 1),
                          Lane(BACKLOG, start_pos, start_seq, durable_seq)]
        self._waiting_since = None

    def resend_now(self, now_ms):
        """The ledger says batches sent before it subscribed may have reached no one:
        what is in flight goes again at the next poll, not at its ack timeout."""
        for f in self.inflight:
            f.sent_ms = min(f.sent_ms, now_ms - self.ack_timeout_ms)

    def drain_now(self):
        """Lift the backlog's rate cap (an operator's order to catch up now)."""
        self.bucket.rate = 0

    def in_flight(self, first, last):
        for f in self.inflight:
            if f.first == first and f.last == last:
                return f
        return None

    def on_ack(self, first, last, status, now_ms, via=None):
        """The ledger acknowledged ``first..last`` (heard on uplink ``via``): returns
        (seq, pos) to commit, or None. ``ack_sent_ms`` is then when the matching batch was
        last sent (None: no match), for the round trip; ``ack_hedge_won`` says whether a
        hedged batch was answered on its hedge's uplink (None: not a hedged batch)."""
        self.ack_sent_ms = None
        self.ack_hedge_won = None
        match = self.in_flight(first, last)
        if match is None:
            self.counters["stale_acks"] += 1  # a resent batch acked twice, or an old life's
            return None
        self.inflight.remove(match)
        self.ack_sent_ms = match.sent_ms
        if match.hedged_on is None:
            if match.attempts == 1:  # a clean round trip: what the hedge delay follows
                self._rtts.append(now_ms - match.sent_ms)
                if len(self._rtts) > RTT_SAMPLES:
                    self._rtts.pop(0)
                self._hedge_delay = None
        else:
            self.ack_hedge_won = via == match.hedged_on
            if self.ack_hedge_won:
                self.counters["hedges_won"] += 1
        if status != "ok":
            # The ledger's final word: sending it again gets the same answer. Its records
            # stay unreclaimed (the commit point stops before them) until an operator
            # settles the range (``commands.settle_rejected``); later batches go on.
            self.counters["rejected"] += 1
            known = [f for f in self.rejected if f.first == first and f.last == last]
            if match.last > self.commit_seq and not known:  # a resend is refused again
                self.rejected.append(match)
            return None
        self.counters["acked"] += 1
        if match.runs is not None:
            self.acked.extend(match.runs)
        else:
            self.acked.append((first, last, match.end_pos))
        return self._advance_commit()

    def _advance_commit(self):
        self.acked.sort()
        seq, pos = self.commit_seq, None
        while self.acked and self.acked[0][0] <= seq + 1:
            f, last, end = self.acked.pop(0)
            if last > seq:
                seq, pos = last, end
        if pos is None:
            return None
        self.commit_seq = seq
        return seq, pos

    # ---- what to send ------------------------------------------------------------------

    def poll(self, now_ms, wall_ms=None):
        """Batches to publish now: [(lane, first, last, bytes)]; lane is "live", "backlog"
        or "resend". ``now_ms`` runs the timers
        (monotonic); ``wall_ms`` (default ``now_ms``) is the send time the batches carry."""
        self._wall_ms = now_ms if wall_ms is None else wall_ms
        out = []
        if self.uplink is None:
            return out
        for f in list(self.inflight):
            if now_ms - f.sent_ms >= self.ack_timeout_ms:
                data = self._reencode(f, now_ms)
                if data is None:
                    self.inflight.remove(f)
                    continue
                f.sent_ms = now_ms
                f.attempts += 1
                self.counters["resent"] += 1
                out.append(("resend", f.first, f.last, data))
        self._more_at = None
        room = self.window if self.burst is None else self.burst
        for lane in list(self.lanes):
            while self._window_open():
                if room <= 0:
                    self._more_at = now_ms  # more may be ready: come back at once
                    break
                b = self._next_batch(lane, now_ms)
                if b is None:
                    break
                out.append(b)
                room -= 1
            if lane.done():
                self.lanes.remove(lane)
        if self._waiting_since is None and not self._window_open():
            for lane in self.lanes:  # held by the window: the linger runs from now
                if lane.name == LIVE and lane.seq <= self.journal.durable_seq:
                    self._waiting_since = now_ms
        return out

    def _window_open(self):
        """Room for one more new batch: fewer than ``window`` in flight, or small ones
        only (fewer than ``max_events`` records in all) up to ``WINDOW_STRETCH`` times."""
        n = len(self.inflight)
        if n < self.window:
            return True
        if n >= self.window * WINDOW_STRETCH:
            return False
        held = 0
        for f in self.inflight:
            held += f.count
        return held < self.max_events

    def hedge_delay_ms(self):
        """How long a batch waits for its ack before a copy goes on an alternate."""
        if self._hedge_delay is None:
            rtt = percentile(self._rtts, 0.9) if self._rtts else 0
            self._hedge_delay = int(min(self.ack_timeout_ms,
                                        max(self.hedge_floor_ms, self.hedge_factor * rtt)))
        return self._hedge_delay

    def next_deadline_ms(self):
        """The earliest time ``poll`` has something to do by the clock alone, or None.
        With no uplink nothing can go, whatever is overdue: None, or a silent outage
        would spin the loop that waits on this."""
        if self.uplink is None:
            return None
        times = [f.sent_ms + self.ack_timeout_ms for f in self.inflight]
        if self.hedge_floor_ms and self.alternates:
            delay = self.hedge_delay_ms()
            times.extend(f.sent_ms + delay for f in self.inflight
                         if f.hedged_on is None and f.uplink == self.uplink
                         and f.lane != BACKLOG)
        # A lingering batch is only due when the window has room for it; with a full
        # window its past deadline would spin the loop until an ack arrived (it did, at
        # more than a million polls per drain, starving the ledger in the same process).
        if self._window_open():
            if self._waiting_since is not None:
                times.append(self._waiting_since + self.linger_ms)
            if self._more_at is not None:
                times.append(self._more_at)
        return min(times) if times else None

    def _next_batch(self, lane, now_ms):
        j = self.journal
        if lane.done() or lane.seq > j.durable_seq:
            return None
        limit = self.max_events
        if lane.name == BACKLOG:
            limit = min(limit, self.bucket.available(now_ms))
            if limit <= 0:
                return None
        elif lane.seq + limit - 1 > j.durable_seq:  # not a full batch yet: linger
            if self._waiting_since is None:
                self._waiting_since = now_ms
            if now_ms - self._waiting_since < self.linger_ms:
                return None
        while True:  # skip stretches the ledger already acknowledged (out of order)
            n = limit if lane.end_seq is None else min(limit, lane.end_seq - lane.seq + 1)
            if n <= 0 or lane.seq > j.durable_seq:
                return None
            first, start_pos = lane.seq, lane.pos
            records, pos, seq = j.read(lane.pos, lane.seq, n, self.max_bytes)
            lane.pos, lane.seq = pos, seq
            if lane.name == LIVE:
                self._waiting_since = None
            if records and not self.txn_only and not self._any_acked(records[0].seq,
                                                                    records[-1].seq):
                recs = records  # the common case: no record-by-record look (a drain's)
            else:
                recs = [r for r in records if not self._is_acked(r.seq)
                        and not (self.txn_only and r.cls != TXN)]
            if recs:
                break
            if not records and seq == first:
                return None  # nothing readable here yet
        last = recs[-1].seq
        # Seqs the read skipped just before the first record were lost to flash damage:
        # the batch accounts for them, so the ledger's ack covers (and records) the gap.
        bfirst = first if first < recs[0].seq and not self._is_acked(first) else recs[0].seq
        if self.txn_only:
            bfirst = recs[0].seq
        data = self._encode(bfirst, recs, now_ms)
        f = InFlight(lane.name, bfirst, last, start_pos, recs[-1].end_pos, len(recs), now_ms,
                     self.uplink)
        if lane.name != BACKLOG:  # backlog batches are never hedged: no need to know
            f.all_txn = all(r.cls == TXN for r in recs)
        if len(recs) != recs[-1].seq - recs[0].seq + 1:  # records skipped: ack runs only
            f.runs = _runs(recs)
            f.first = bfirst = recs[0].seq
        if f.first != first:  # acknowledged records skipped before it: a resend reads from
            f.pos = recs[0].pos  # its own first record, or the journal sees a bad frame
        self.inflight.append(f)
        if lane.name == BACKLOG:
            self.bucket.take(len(recs))
        self.counters["batches"] += 1
        self.counters["sent"] += len(recs)
        self.counters["sent_bytes"] += len(data)
        return (lane.name, bfirst, last, data)

    def _any_acked(self, first, last):
        """Whether any seq in ``first..last`` is acknowledged already."""
        if first <= self.commit_seq:
            return True
        for f, la, _ in self.acked:
            if f <= last and first <= la:
                return True
        return False

    def _is_acked(self, seq):
        if seq <= self.commit_seq:
            return True
        for f, last, _ in self.acked:
            if f <= seq <= last:
                return True
        return False

    def _encode(self, first, recs, now_ms):
        batch = Batch(self.gateway, self.journal.epoch,
                      [(r.seq, r.cls, r.hlc, r.body) for r in recs], self._wall_ms, first)
        return encode_batch(self.signer, batch, self.compress)

    def _reencode(self, f, now_ms):
        # Exactly the seqs the batch spans: it may have skipped acknowledged stretches.
        records, _, _ = self.journal.read(f.pos, f.first, f.last - f.first + 1,
                                          self.max_bytes * 2)
        recs = [r for r in records if f.first <= r.seq <= f.last
                and (f.runs is None or any(a <= r.seq <= b for a, b, _ in f.runs))]
        if not recs:
            return None
        return self._encode(f.first, recs, now_ms)

    def backlog(self):
        """(records, bytes) durable and not yet acknowledged."""
        return self.journal.backlog()

    def oldest_unacked_seq(self):
        return self.commit_seq + 1


def _runs(recs):
    """[(first, last, end_pos)] of the consecutive seqs among ``recs``."""
    runs = []
    for r in recs:
        if runs and runs[-1][1] == r.seq - 1:
            runs[-1] = (runs[-1][0], r.seq, r.end_pos)
        else:
            runs.append((r.seq, r.seq, r.end_pos))
    return runs
