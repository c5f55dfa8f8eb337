"""Forwarding benchmark: device event to ledger commit, drain after an outage, failover.

All on loopback with a real mosquitto, the fault proxies and the SQLite reference ledger,
the journal on this machine's disk (durable: every event fsynced before it is sent).

- ``latency_p50_ms`` / ``latency_p99_ms``: open loop. Producer threads offer ``rate``
  events per second for ``duration_s`` on a fixed schedule (event i is due at
  ``start + i / rate``); latency runs from each event's *scheduled* time to the commit of
  the ledger transaction holding it, so a producer held up by a slow durable append does
  not hide the wait (no coordinated omission). ``rate_achieved_per_s`` is the rate the
  producers actually handed events over at, beside ``rate_per_s`` offered. Baseline in the
  same run: ``broker_rtt_p99_ms``, a bare QoS 1 publish round trip through the same broker.
- ``latency_p99_ms_10k`` / ``achieved_rate_per_s_10k``: the same at 10,000 events/s offered
  by eight producers (a plant gateway polling many PLCs), ``rate_offered_10k`` beside it:
  1,000 polls a second of ``block_10k`` (10) values each, a poll's values handed over
  together (``agent.emit_many``, one sync for them, as the Modbus driver does with a
  block) and each measured from its poll's scheduled time. Diagnostics beside them:
  ``journal_sync_p99_ms_10k`` / ``journal_sync_max_ms_10k`` (without the suffix: the
  1,000/s run), the agent's journal flushes (write and fsync), every one while events were
  offered (``journal_syncs``, ``journal_syncs_over_10ms``; before, only the journal's last
  4,096 were looked at, the last four seconds of the 1,000/s run): this machine's disk is
  shared, and a slow fsync holds up every event behind it (one producer catching up pays
  one sync per overdue event).
- ``drain_s_120k`` / ``drain_events_per_s``: ``drain_events`` events journaled while both
  uplinks refuse connections, then the time from restoring them until the ledger (a
  process of its own, as deployed) holds every one.
- ``blackhole_p99_ms``: events offered at ``rate`` per second from 2 s before to 10 s after
  the primary is blackholed (the secondary healthy), each measured from its scheduled time
  to its commit in the ledger: what hedged sends make of a dead primary.
  ``hedge_overhead_pct``: in the steady state before it (after a second of warm-up, whose
  figure is ``hedge_overhead_warmup_pct``), the bytes of hedged copies over the bytes of
  first sends, in percent (a healthy primary should cost almost nothing).
- ``failover_s``: the primary is blackholed (connection open, nothing flows); the time
  until the first batch is acknowledged through the secondary.
- ``rss_mb``: resident memory of an agent process (``python -m midshift.firmware run``) with a
  serial scanner, a Modbus PLC and two uplinks configured, after it has settled, with the
  metrics endpoint on and scraped once (``rss_mb_metrics_off``: the same without it).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware.core.percentile import percentile
from midshift.firmware.edges import paho_client
from midshift.simulator.lab import KEY, Lab, wait_for

ROOT = Path(__file__).resolve().parents[1]
BLOCK_10K = 10  # values per poll in the 10,000/s run: 1,000 polls a second from 8 PLCs


def _latency(tmp: Path, rate: int, duration_s: float, say: Callable[[str], None],
             producers: int = 1, block: int = 1) -> dict[str, Any]:
    """The ledger runs as its own process (``python -m midshift.host_tools ledger serve``), as it
    is deployed; latency is its commit time (``receipts.ledger_ms``, wall clock, 1 ms
    resolution) minus the wall time the event was *due* on the schedule."""
    lab = Lab(tmp, uplinks=1, direct=True)  # no fault proxy in the path: steady state
    ledger = _ledger_process(lab, tmp)
    try:
        agent = lab.start_agent()
        wait_for(lambda: agent.forwarding.active is not None, 10)
        n = int(rate * duration_s)
        say(f"forward: {n} events at {rate}/s offered by {producers} producer(s), "
            f"{block} per poll")
        flushes = _Flushes(agent.journal)
        due_ms, handed = _offer(lab, n, rate, producers, block)
        sync_ms = flushes.stop()  # every flush while it was offered
        wait_for(lambda: lab.ledger_count() >= n, 30 + duration_s * 3)
        committed = {}
        for first, last, ledger_ms in lab.store.query(
                "SELECT first, last, ledger_ms FROM receipts ORDER BY ledger_ms DESC"):
            for seq in range(first, last + 1):
                committed[seq] = ledger_ms  # earliest receipt wins (descending order)
        lat = [committed[s] - t for s, t in due_ms.items() if s in committed]
        rtt = _broker_rtt(lab)
        return {"latency_p50_ms": round(percentile(lat, 0.5), 2),
                "latency_p99_ms": round(percentile(lat, 0.99), 2),
                "latency_max_ms": round(max(lat), 2), "latency_events": len(lat),
                "latency_lost": n - len(lat), "rate_per_s": rate,
                "rate_achieved_per_s": round(n / handed, 1), "producers": producers,
                "block": block,
                "duration_s": duration_s,
                "broker_rtt_p99_ms": round(percentile(rtt, 0.99), 2),
                "journal_sync_p99_ms": round(percentile(sync_ms, 0.99), 2) if sync_ms else None,
                "journal_sync_max_ms": round(max(sync_ms), 2) if sync_ms else None,
                "journal_syncs": len(sync_ms),
                "journal_syncs_over_10ms": sum(1 for t in sync_ms if t > 10)}
    finally:
        ledger.terminate()
        ledger.wait(10)
        lab.close()


class _Flushes:
    """Every journal flush time (ms) from now until ``stop``. The journal keeps only its
    last ``SYNC_SAMPLES`` (4,096: the last four seconds of a 30-second run at 1,000/s),
    so they are collected as they come (by the flush count), every 0.2 s."""

    def __init__(self, journal: Any) -> None:
        self.journal = journal
        self.seen = journal.syncs
        self.times: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        now = self.journal.syncs
        new = now - self.seen
        if new > 0:
            self.times.extend(list(self.journal.sync_ms)[-new:])
        self.seen = now

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self._collect()

    def stop(self) -> list[float]:
        self._done.set()
        self._thread.join()
        self._collect()
        return self.times


def _ledger_process(lab: Lab, tmp: Path) -> subprocess.Popen[bytes]:
    """Replace the lab's in-process ledger by ``ledger serve`` on the same database, as it
    is deployed: a process of its own, not sharing the agent's interpreter lock."""
    lab.ledger.stop()
    keys = tmp / "keys.toml"
    keys.write_text(f'[gateways]\n"gw-t" = "{KEY.hex()}"\n')
    ledger = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db",
                               f"sqlite:///{tmp / 'ledger.db'}", "--broker", lab.broker.url,
                               "--keys", str(keys), "--log-level", "WARNING"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert ledger.stdout is not None
    ledger.stdout.readline()  # "ledger: serving ..." once subscribed
    return ledger


def _offer(lab: Lab, n: int, rate: int, producers: int,
           block: int = 1) -> tuple[dict[int, float], float]:
    """Hand ``n`` events to the agent on a fixed schedule: polls of ``block`` values each,
    poll j due at start + j * block / rate, producer k taking every k-th poll, each poll's
    values handed over together (``block`` 1: one event at a time, ``agent.emit``). A late
    producer does not wait (it makes the next overdue poll at once), so the schedule, not
    the producer, sets each event's due time: its poll's. Returns {seq: due wall ms} and
    the seconds from start to the last hand-over."""
    due_ms: dict[int, float] = {}
    lock = threading.Lock()
    start_wall = time.time() + 0.05
    start = time.perf_counter() + 0.05
    polls = -(-n // block)

    def produce(k: int) -> None:
        mine: list[tuple[int, float]] = []
        for j in range(k, polls, producers):  # bounded: n events in all
            due = start + j * block / rate
            while (d := due - time.perf_counter()) > 0:
                time.sleep(d)
            count = min(block, n - j * block)
            seqs = lab.emit(1) if block == 1 else lab.emit_block(count)
            mine.extend((seq, (start_wall + j * block / rate) * 1000) for seq in seqs)
        with lock:
            due_ms.update(mine)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return due_ms, time.perf_counter() - start


def _broker_rtt(lab: Lab, n: int = 300) -> list[float]:
    got = threading.Event()
    c = paho_client.new_client()
    c.on_message = lambda *a: got.set()
    c.connect("127.0.0.1", lab.broker.port)
    c.subscribe("bench/rtt", qos=1)
    c.loop_start()
    time.sleep(0.2)
    out = []
    for _ in range(n):
        got.clear()
        t = time.perf_counter()
        c.publish("bench/rtt", b"x" * 200, qos=1)
        if got.wait(2):
            out.append((time.perf_counter() - t) * 1000)
    c.loop_stop()
    c.disconnect()
    return out


def _drain(tmp: Path, events: int, say: Callable[[str], None]) -> dict[str, Any]:
    """The ledger is a process of its own, as deployed; done when it holds every event.
    Polled cheaply (is the last event in? then count them all), so the poll does not
    take the agent's interpreter lock from the drain it measures."""
    lab = Lab(tmp, uplinks=2, journal_segments=256, max_events=1000, window=16)
    ledger = _ledger_process(lab, tmp)
    try:
        agent = lab.start_agent()
        wait_for(lambda: agent.forwarding.active is not None, 10)
        for p in lab.proxies:
            p.set_mode("refuse")
        wait_for(lambda: agent.forwarding.active is None, 10)
        say(f"forward: journaling {events} events with both uplinks down")
        last = max(lab.emit(events))
        epoch = f"{agent.journal.epoch:016x}"  # as the ledger keys it: a primary-key lookup

        def all_in() -> bool:
            if not lab.store.query("SELECT 1 FROM events WHERE gateway='gw-t' AND epoch=? "
                                   "AND seq=?", (epoch, last)):
                return False
            return lab.ledger_count() >= events

        t0 = time.perf_counter()
        for p in lab.proxies:
            p.set_mode("pass")
        ok = wait_for(all_in, 120, 0.005)
        took = time.perf_counter() - t0
        return {"drain_s_120k": round(took, 2) if ok else None, "drain_events": events,
                "drain_events_per_s": round(events / took) if ok else 0,
                "drain_complete": ok}
    finally:
        ledger.terminate()
        ledger.wait(10)
        lab.close()


def _failover(tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    lab = Lab(tmp, uplinks=2)
    try:
        agent = lab.start_agent()
        wait_for(lambda: agent.forwarding.active == "up0", 10)
        lab.emit(10)
        wait_for(lambda: lab.ledger_count() == 10, 10)
        say("forward: blackholing the primary")
        lab.proxies[0].set_mode("blackhole")
        t0 = time.perf_counter()
        lab.emit(1)
        ok = wait_for(lambda: lab.ledger_count() == 11, 30, 0.005)
        return {"failover_s": round(time.perf_counter() - t0, 2) if ok else None}
    finally:
        lab.close()


def _ten_k(tmp: Path, duration_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    r = _latency(tmp, 10_000, duration_s, say, producers=8, block=BLOCK_10K)
    return {"latency_p99_ms_10k": r["latency_p99_ms"], "latency_p50_ms_10k": r["latency_p50_ms"],
            "achieved_rate_per_s_10k": r["rate_achieved_per_s"], "rate_offered_10k": 10_000,
            "latency_lost_10k": r["latency_lost"], "block_10k": BLOCK_10K,
            "producers_10k": 8, "journal_sync_p99_ms_10k": r["journal_sync_p99_ms"],
            "journal_sync_max_ms_10k": r["journal_sync_max_ms"],
            "journal_syncs_10k": r["journal_syncs"],
            "journal_syncs_over_10ms_10k": r["journal_syncs_over_10ms"]}


def _blackhole(tmp: Path, before_s: float, after_s: float, rate: int,
               say: Callable[[str], None], warm_s: float = 1.0) -> dict[str, Any]:
    """``warm_s`` of flow first (connections, the ledger's first commits, the first round
    trips the hedge delay learns from), not counted; then ``before_s`` of steady state, whose
    hedged bytes make ``hedge_overhead_pct``; then the primary blackholed for ``after_s``.
    ``blackhole_p99_ms`` is over the events due from ``before_s`` before it to the end."""
    lab = Lab(tmp, uplinks=2)
    ledger = _ledger_process(lab, tmp)  # as deployed: not sharing the agent's interpreter
    try:
        agent = lab.start_agent()
        wait_for(lambda: agent.forwarding.active == "up0"
                 and agent.forwarding.session.connected.get("up1"), 10)
        say(f"forward: steady state, {before_s:.0f} s at {rate}/s after {warm_s:.0f} s of "
            "warm-up, then the primary blackholed")
        fwd = agent.forwarding.forwarder
        warm: dict[str, int] = {}
        steady: dict[str, int] = {}

        def blackhole() -> None:
            steady.update(fwd.counters)  # what the healthy steady state cost
            lab.proxies[0].set_mode("blackhole")

        n = int((warm_s + before_s + after_s) * rate)
        timers = [threading.Timer(warm_s, lambda: warm.update(fwd.counters)),
                  threading.Timer(warm_s + before_s, blackhole)]
        for t in timers:
            t.start()
        due_ms, handed = _offer(lab, n, rate, 1)
        for t in timers:
            t.join()
        wait_for(lambda: lab.ledger_count() >= n, 30)
        committed = {}
        for first, last, ledger_ms in lab.store.query(
                "SELECT first, last, ledger_ms FROM receipts ORDER BY ledger_ms DESC"):
            for seq in range(first, last + 1):
                committed[seq] = ledger_ms
        from_ms = min(due_ms.values()) + warm_s * 1000
        window = {s: t for s, t in due_ms.items() if t >= from_ms}
        lat = [committed[s] - t for s, t in window.items() if s in committed]
        c = fwd.counters
        return {"blackhole_p99_ms": round(percentile(lat, 0.99), 1),
                "blackhole_max_ms": round(max(lat), 1), "blackhole_lost": n - sum(
                    1 for s in due_ms if s in committed),
                "blackhole_rate_achieved_per_s": round(n / handed, 1),
                "blackhole_demotions": agent.forwarding.selector.demotions,
                "blackhole_hedged": c["hedged"], "blackhole_hedges_won": c["hedges_won"],
                "hedge_overhead_pct": round(100.0 * (steady["hedge_bytes"] - warm["hedge_bytes"])
                                            / max(1, steady["sent_bytes"] - warm["sent_bytes"]),
                                            2),
                "hedge_overhead_warmup_pct": round(100.0 * warm["hedge_bytes"]
                                                   / max(1, warm["sent_bytes"]), 2)}
    finally:
        ledger.terminate()
        ledger.wait(10)
        lab.close()


def _rss(tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from bench.agent_rss import measure_rss_mb
    say("forward: agent resident memory")
    return measure_rss_mb(tmp)


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="midshift-bench-") as d:
        root = Path(d)
        for name, part in (("latency", lambda p: _latency(p, 1000, 3 if quick else 30, say)),
                           ("latency_10k", lambda p: _ten_k(p, 2 if quick else 10, say)),
                           ("drain", lambda p: _drain(p, 12000 if quick else 120000, say)),
                           ("failover", lambda p: _failover(p, say)),
                           ("blackhole", lambda p: _blackhole(p, 2, 3 if quick else 10, 1000,
                                                              say)),
                           ("rss", lambda p: _rss(p, say))):
            sub = root / name
            sub.mkdir()
            out.update(part(sub))
    return out
