"""Till API benchmark (issue 17): POST to a durable 201, a replayed key, the memory the
API adds, and the drain of a 30-minute outage's transactions.

All on loopback: a real agent process (``python -m midshift.firmware run``) with the till API and
one uplink to a real mosquitto and the SQLite reference ledger (this process), tills as
threads with stdlib ``http.client``, the journal on this machine's disk.

- ``till_post_p50_ms`` / ``till_post_p99_ms``: 8 tills offering 50 transactions/s in total,
  open loop: each POST has a scheduled time (till k's i-th at ``(8 i + k) / 50`` s) and
  its latency runs from that time to the 201, so a slow answer also delays the ones
  queued behind it, as a cashier would see. ``till_post_rate_achieved`` beside
  ``till_post_rate_offered``. Target p99 <= 10 ms.
- ``replay_p99_ms``: the same keys posted again (200, the stored answer).
- ``rss_added_mb``: RSS of that agent process after the load minus RSS of the same agent
  without ``[till_api]`` (a disabled scanner instead), same run. Target <= 10.
- ``offline_drain_s``: ``drain_txns`` transactions (90,000 = 30 min at 50/s; ``--quick``
  3,000) posted through the API while the uplink refuses connections, then the time
  from restoring it until the ledger holds every one. Beside it
  The agent and the ledger run as processes of their own, as deployed (the agent with its
  default forwarding settings); a first version ran both in this process, where they
  shared one interpreter lock. Beside it ``offline_drain_baseline_s``: the same number of
  plain scanner events drained by ``forward_bench``'s in-process lab (batches of 1,000,
  window 16), no booking. Target <= 2 s.
- ``offline_drain_ledger_cpu_s`` / ``offline_drain_agent_cpu_s``: CPU seconds each process
  spent during that drain (user + system, from /proc): on a shared 2-core machine the wall
  time moves with the neighbours' load, the CPU a process needs much less.
- ``offline_drain_first_s``: from restoring the uplink until the ledger holds the first
  transaction (the agent's reconnect and its first batches): the part of the drain that no
  ledger speed shortens.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.agent_rss import _rss_kb
from bench.till_site import sale, write_till_site
from midshift.firmware.core.percentile import percentile
from midshift.simulator.broker import Broker
from midshift.simulator.lab import KEY, Lab, wait_for
from midshift.simulator.network import FaultProxy
from tests.integration.till_client import TillClient

ROOT = Path(__file__).resolve().parents[1]
TILLS = [f"till-{i}" for i in range(1, 9)]
RATE = 50


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent_process(site: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config", str(site),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_up(port: int, token: str) -> None:
    def up() -> bool:
        try:
            return TillClient(port, token, timeout_s=1).request("GET", "/v1/status")[0] == 200
        except OSError:
            return False
    if not wait_for(up, 30, 0.05):
        raise RuntimeError("the agent's till API did not come up")


def _open_loop(port: int, tokens: dict[str, str], duration_s: float, tag: str,
               replay: dict[str, tuple[str, int]] | None = None,
               ) -> tuple[list[float], int, float, dict[str, tuple[str, int]]]:
    """8 till threads, open loop; returns (latencies ms, errors, seconds, {key: (till, n)})."""
    n_each = int(duration_s * RATE / len(TILLS))
    lat: list[float] = []
    errors = [0]
    keys: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.2
    replayed = sorted(replay.items()) if replay else []

    def till_loop(k: int, till: str) -> None:
        c = TillClient(port, tokens[till])
        mine = [x for x in replayed if x[1][0] == till]
        for i in range(n_each if not replay else len(mine)):
            due = t0 + (i * len(TILLS) + k) / RATE
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if replay:
                key, (_, n) = mine[i]
            else:
                n = i
                key = f"{tag}-{till}-{i}"
            status, _ = c.post(sale(till, n), key)
            took = (time.perf_counter() - due) * 1000
            with lock:
                if status in (200, 201):
                    lat.append(took)
                    keys[key] = (till, n)
                else:
                    errors[0] += 1
        c.close()

    threads = [threading.Thread(target=till_loop, args=(k, t)) for k, t in enumerate(TILLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    return lat, errors[0], time.perf_counter() - t0, keys


def _posts(tmp: Path, duration_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    lab = Lab(tmp, uplinks=1, direct=True)
    procs = []
    try:
        port = _free_port()
        site, tokens = write_till_site(tmp / "gw", TILLS, port=port,
                                       uplink_ports=(lab.broker.port,))
        base_site, _ = write_till_site(tmp / "gw-base", TILLS, uplink_ports=(lab.broker.port,),
                                       with_api=False)
        proc = _agent_process(site)
        base = _agent_process(base_site)
        procs += [proc, base]
        _wait_up(port, tokens["till-1"])
        say(f"till: 8 tills at {RATE}/s for {duration_s} s")
        lat, errors, took, keys = _open_loop(port, tokens, duration_s, "post")
        say(f"till: replaying {len(keys)} keys")
        rlat, rerrors, _, _ = _open_loop(port, tokens, duration_s, "post", replay=keys)
        time.sleep(1.0)  # both agents settled; the baseline has run as long
        rss_api, rss_base = _rss_kb(proc.pid) / 1024, _rss_kb(base.pid) / 1024
        return {"till_post_p50_ms": round(percentile(lat, 0.50), 2),
                "till_post_p99_ms": round(percentile(lat, 0.99), 2),
                "till_post_count": len(lat), "till_post_errors": errors,
                "till_post_rate_offered": RATE,
                "till_post_rate_achieved": round(len(lat) / took, 1),
                "replay_p99_ms": round(percentile(rlat, 0.99), 2), "replay_errors": rerrors,
                "rss_added_mb": round(rss_api - rss_base, 1),
                "rss_agent_with_api_mb": round(rss_api, 1),
                "rss_agent_without_api_mb": round(rss_base, 1)}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        lab.close()


def _fill(port: int, tokens: dict[str, str], count: int) -> int:
    """``count`` transactions as fast as 8 tills can post them; returns the 201s."""
    done = [0]
    lock = threading.Lock()

    def till_loop(k: int, till: str) -> None:
        c = TillClient(port, tokens[till])
        for i in range(k, count, len(TILLS)):
            if c.post(sale(till, i), f"fill-{i}")[0] == 201:
                with lock:
                    done[0] += 1
        c.close()

    threads = [threading.Thread(target=till_loop, args=(k, t)) for k, t in enumerate(TILLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return done[0]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _link_state(port: int, token: str) -> str:
    status, doc = TillClient(port, token, timeout_s=2).request("GET", "/v1/status")
    return str(doc.get("state")) if status == 200 and isinstance(doc, dict) else "?"


def _drain(tmp: Path, count: int, say: Callable[[str], None]) -> dict[str, Any]:
    """As deployed: the agent (``firmware run``, default forwarding settings) and the
    ledger (``ledger serve`` on SQLite) are processes of their own; between them mosquitto
    and a fault proxy in this process. Done when the ledger's transactions table holds
    every accepted sale (read-only, through its index, after each commit of the ledger)."""
    broker = Broker(tmp / "broker").start()
    proxy = FaultProxy(("127.0.0.1", broker.port)).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db = tmp / "ledger.db"
        keys = tmp / "keys.toml"
        keys.write_text(f'[gateways]\n"gw-t" = "{KEY.hex()}"\n')
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", f"sqlite:///{db}",
             "--broker", f"mqtt://127.0.0.1:{broker.port}", "--keys", str(keys),
             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        port = _free_port()
        segments = max(8, count * 700 // (1 << 20) + 8)
        site, tokens = write_till_site(tmp / "gw", TILLS, port=port, uplink_ports=(
            proxy.address[1],), segment_size=1 << 20, segment_count=segments)
        procs.append(_agent_process(site))
        _wait_up(port, tokens["till-1"])
        if not wait_for(lambda: _link_state(port, tokens["till-1"]) == "online", 30, 0.1):
            raise RuntimeError("the agent did not come online")
        proxy.set_mode("refuse")
        if not wait_for(lambda: _link_state(port, tokens["till-1"]) == "offline", 30, 0.1):
            raise RuntimeError("the agent did not notice the outage")
        say(f"till: posting {count} transactions with the uplink down")
        t_fill = time.perf_counter()
        accepted = _fill(port, tokens, count)
        fill_s = time.perf_counter() - t_fill
        ledger = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)

        counted: list[Any] = [None, 0]  # the ledger's data_version when last counted, count

        def in_ledger() -> int:
            # COUNT(*) reads every row: counted again only once the ledger has committed
            # since (data_version changes with each commit by another connection), so the
            # poll every 10 ms does not take a core's share from the two processes timed.
            try:
                version = ledger.execute("PRAGMA data_version").fetchone()[0]
                if version != counted[0]:
                    n = int(ledger.execute("SELECT COUNT(*) FROM transactions").fetchone()[0])
                    counted[:] = [version, n]
            except sqlite3.OperationalError:  # not migrated yet, or busy
                pass
            return int(counted[1])
        say("till: uplink back, draining")
        first: list[float] = []

        def drained() -> bool:
            n = in_ledger()
            if n and not first:
                first.append(time.perf_counter() - t0)
            return n >= accepted
        cpu0 = [_cpu_s(p.pid) for p in procs]  # the ledger, then the agent
        t0 = time.perf_counter()
        proxy.set_mode("pass")
        ok = wait_for(drained, 300, 0.01)
        took = time.perf_counter() - t0
        cpu = [round(_cpu_s(p.pid) - c, 2) for p, c in zip(procs, cpu0, strict=True)]
        ledger.close()
        return {"offline_drain_s": round(took, 2) if ok else None, "drain_txns": accepted,
                "drain_complete": ok, "offline_fill_txn_per_s": round(accepted / fill_s),
                "offline_drain_txn_per_s": round(accepted / took) if ok else 0,
                "offline_drain_ledger_cpu_s": cpu[0], "offline_drain_agent_cpu_s": cpu[1],
                "offline_drain_first_s": round(first[0], 2) if first else None}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        proxy.stop()
        broker.stop()


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from bench.forward_bench import _drain as plain_drain
    say = progress or (lambda msg: None)
    out: dict[str, Any] = {}
    count = 3000 if quick else 90000
    with tempfile.TemporaryDirectory(prefix="midshift-till-bench-") as d:
        root = Path(d)
        for name, part in (("posts", lambda p: _posts(p, 4 if quick else 30, say)),
                           ("drain", lambda p: _drain(p, count, say)),
                           ("baseline", lambda p: plain_drain(p, count, say))):
            sub = root / name
            sub.mkdir()
            got = part(sub)
            if name == "baseline":
                got = {"offline_drain_baseline_s": got["drain_s_120k"],
                       "offline_drain_baseline_events": got["drain_events"]}
            out.update(got)
    return out
