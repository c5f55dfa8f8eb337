"""Ledger benchmark: ingest end to end on SQLite and PostgreSQL, and a reconnect storm.

Everything on this machine over loopback: a real mosquitto, a throwaway PostgreSQL
cluster (``midshift/simulator/postgres.py``: fsync, full_page_writes and ``synchronous_commit`` on,
as shipped), ledger workers as their own processes (``python -m midshift.host_tools ledger serve``,
on the shared subscription when there are two), and the virtual gateway fleet
(``midshift/simulator/fleet.py``) in this process. Each PostgreSQL measurement runs on a fresh
cluster (``shared_buffers`` 1 GB; durability as shipped). The machine is shared, so each
throughput figure is the median of 3 runs, and ``<figure>_samples`` lists all 3. Every
drain checks that the ledger holds exactly the events the fleet sent.

- ``ingest_events_per_s_sqlite`` / ``_pg_1`` / ``_pg_2``: ``ingest_gateways`` gateways
  each with ``ingest_backlog`` events journaled (encoded and signed before the clock
  starts), window 8 batches of 500 (the agent's defaults); the figure is events divided
  by the time from the first publish until the last ack has reached its gateway. It
  includes MQTT in and out, HMAC verification, decoding, the insert, the commit and the
  ack; a batch is acked only after its transaction has committed.
- ``row_insert_events_per_s_pg``: the naive baseline, same run, same server, same path
  end to end with 2 workers and ack after commit, but the store runs one
  ``INSERT ... ON CONFLICT DO NOTHING`` per event, each its own transaction (what a first
  ledger does; ``RowInsertStore`` below). ``pg_2_vs_row_insert`` is the ratio the issue
  asks for. ``row_insert_grouped_events_per_s_pg``: the same per-event INSERTs inside the
  group's one transaction (group commit kept, only the statements naive), a stricter
  baseline reported beside it with ``pg_2_vs_row_insert_grouped``.
  ``row_insert_direct_events_per_s_pg``: one INSERT per event called directly on one
  connection (no MQTT, no acks), for reference; ``pg_2_vs_row_insert_direct`` against it.
- ``storm_*``: ``storm_gateways`` gateways come back from a shared outage at once, each
  with ``storm_backlog`` events, each reconnecting after a random delay in
  [0, ``storm_jitter_s``), at most 4 batches of 250 in flight each (the drain cap);
  2 PostgreSQL workers. ``storm_drain_s`` runs from the outage ending until the whole
  fleet is acknowledged; the jitter is inside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware.core.percentile import percentile
from midshift.firmware.core.wire import Batch
from midshift.simulator.broker import Broker
from midshift.simulator.fleet import Fleet
from midshift.simulator.postgres import ThrowawayPostgres

ROOT = Path(__file__).resolve().parents[1]


class RowInsertStore:
    """The naive baselines' store: the PostgreSQL store with one INSERT per event, either
    each in its own transaction (autocommit: what a first ledger does, and the baseline the
    issue's ratio is taken against) or, ``grouped``, all in the group's one transaction."""

    @staticmethod
    def make(url: str, grouped: bool = False) -> Any:
        from contextlib import nullcontext

        from midshift.host_tools.ledger.pg_store import PgStore

        class _RowInsert(PgStore):
            def store_many(self, batches: list[Batch], ledger_ms: int) -> list[tuple[int, int]]:
                out = []
                conn = self.conn
                with self._lock, (conn.transaction() if grouped else nullcontext()), \
                        conn.cursor() as cur:
                    for b in batches:
                        epoch, new = f"{b.epoch:016x}", 0
                        for seq, cls, hlc, body in b.records:
                            with nullcontext() if grouped else conn.transaction():
                                cur.execute("INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s,"
                                            "%s) ON CONFLICT DO NOTHING",
                                            (b.gateway, epoch, seq, cls, hlc,
                                             bytes(body).decode(), b.sent_ms, ledger_ms))
                                new += cur.rowcount
                        out.append((new, len(b.records) - new))
                    with nullcontext() if grouped else conn.transaction():
                        self._copy_receipts(cur, [(b, len(b.records), d) for b, (_, d) in
                                                  zip(batches, out, strict=True)], ledger_ms)
                return out
        return _RowInsert(url)


def naive_worker(db: str, broker: str, keys: str, mode: str = "row") -> None:
    """``python -m bench.ledger_bench DB BROKER KEYS [row|grouped]``: a worker on a naive
    store (``row``: a commit per event; ``grouped``: per-event INSERTs, a commit per group)."""
    import signal
    import threading

    from midshift.host_tools.ledger.service import LedgerService, load_keys

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    store = RowInsertStore.make(db, grouped=mode == "grouped")
    service = LedgerService(store, load_keys(keys), broker, "ledger").start()
    print("ledger: serving (naive row inserts)", flush=True)
    done.wait()
    service.stop()
    store.close()


def _workers(db: str, broker: str, keys: Path, n: int,
             naive: str | None = None) -> list[subprocess.Popen[str]]:
    extra = ["--shared", "ledger"] if n > 1 else []
    argv = [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", db, "--broker",
            broker, "--keys", str(keys), "--log-level", "WARNING", *extra]
    if naive:
        argv = [sys.executable, "-m", "bench.ledger_bench", db, broker, str(keys), naive]
    procs = []
    for _ in range(n):
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        if not p.stdout.readline().startswith("ledger: serving"):
            raise RuntimeError(f"ledger worker did not start ({p.wait(10)})")
        procs.append(p)
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def _drain(db: str, workers: int, tmp: Path, timeout_s: float = 300, naive: str | None = None,
           **fleet_args: Any) -> dict[str, Any]:
    from midshift.host_tools.ledger.opener import open_store

    with Broker(tmp / f"broker-{time.monotonic_ns()}") as broker:
        fleet = Fleet(broker.url, **fleet_args).prepare()
        keys = tmp / f"keys-{time.monotonic_ns()}.toml"
        keys.write_text(fleet.keys_toml())
        procs = _workers(db, broker.url, keys, workers, naive)
        try:
            result = fleet.run(timeout_s)
        finally:
            _stop(procs)
    if not result["drained"]:
        raise RuntimeError(f"the fleet did not drain within {timeout_s} s: {result}")
    with open_store(db) as store:  # the figure counts only what is really there, once
        stored = store.count()
    if stored != result["events"]:
        raise RuntimeError(f"the ledger holds {stored} events, the fleet sent {result['events']}")
    return result


def _fresh(pg: ThrowawayPostgres, name: str) -> str:
    from midshift.host_tools.ledger.opener import open_store

    db = pg.create_database(name)
    open_store(db, migrate=True).close()
    return db


def _naive_rows(url: str, batches: list[Batch]) -> float:
    """One INSERT per event, one commit per batch, straight into the database."""
    import psycopg

    sql = "INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING"
    n = 0
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for b in batches:
            epoch = f"{b.epoch:016x}"
            with conn.transaction():
                for seq, cls, hlc, body in b.records:
                    conn.execute(sql, (b.gateway, epoch, seq, cls, hlc, body.decode(),
                                       b.sent_ms, 1))
            n += len(b.records)
        return n / (time.perf_counter() - t0)


def _sample_batches(gateways: int, events: int) -> list[Batch]:
    fleet = Fleet("mqtt://127.0.0.1:1", gateways=gateways, backlog=0, site="naive")
    out = []
    now_ms = int(time.time() * 1000)
    for g in fleet.gateways:
        for _ in range(events // 500):
            out.append(Batch(g.name, g.epoch, fleet._records(g, 500, now_ms), now_ms))
    return out


# Sizes only; durability stays as shipped (see midshift/simulator/postgres.py). Each measurement
# gets a fresh cluster, so one run's dirty pages and WAL do not slow the next.
PG_SETTINGS = {"shared_buffers": "1GB"}
REPEAT = 3  # the machine is shared: each ingest figure is the median of 3 runs, all shown


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    gws, backlog = (20, 1000) if quick else (100, 5000)
    storm_gws, storm_backlog = (100, 200) if quick else (1000, 1000)
    naive_gws, naive_backlog = (10, 500) if quick else (20, 1500)
    repeat = 1 if quick else REPEAT
    ingest = {"gateways": gws, "backlog": backlog, "batch_events": 500, "window": 8}
    out: dict[str, Any] = {"ingest_gateways": gws, "ingest_backlog": backlog,
                           "ingest_events": gws * backlog, "runs_per_figure": repeat}

    def measure(key: str, once: Callable[[Path], float]) -> None:
        samples = []
        for i in range(repeat):
            say(f"{key} ({i + 1}/{repeat})")
            with tempfile.TemporaryDirectory(prefix="midshift-bench-ledger-") as d:
                samples.append(once(Path(d)))
        out[key] = percentile(samples, 0.5)  # the median of an odd count
        out[f"{key}_samples"] = samples

    def pg_drain(name: str, workers: int, naive: str | None = None, **args: Any) -> Callable:
        def once(tmp: Path) -> float:
            with ThrowawayPostgres(settings=PG_SETTINGS) as pg:
                return _drain(_fresh(pg, name), workers, tmp, naive=naive, **args)["events_per_s"]
        return once

    measure("ingest_events_per_s_sqlite",
            lambda tmp: _drain(f"sqlite:///{tmp / 'ledger.db'}", 1, tmp, **ingest)["events_per_s"])
    measure("ingest_events_per_s_pg_1", pg_drain("ingest", 1, **ingest))
    measure("ingest_events_per_s_pg_2", pg_drain("ingest", 2, **ingest))
    # Acks of a naive store come late by design: no resend timer may fire meanwhile and
    # add work the fast store never had to do.
    naive_args = {"gateways": naive_gws, "backlog": naive_backlog, "batch_events": 500,
                  "window": 8, "ack_timeout_s": 600}
    measure("row_insert_events_per_s_pg", pg_drain("naive", 2, naive="row", **naive_args))
    measure("row_insert_grouped_events_per_s_pg",
            pg_drain("naive", 2, naive="grouped", **naive_args))
    out["row_insert_events"] = naive_gws * naive_backlog

    def direct(tmp: Path) -> float:
        with ThrowawayPostgres(settings=PG_SETTINGS) as pg:
            return round(_naive_rows(_fresh(pg, "direct"),
                                     _sample_batches(4, 1000 if quick else 5000)), 1)
    measure("row_insert_direct_events_per_s_pg", direct)
    for key in ("row_insert", "row_insert_grouped", "row_insert_direct"):
        out[f"pg_2_vs_{key}"] = round(out["ingest_events_per_s_pg_2"]
                                      / out[f"{key}_events_per_s_pg"], 1)
    say(f"storm: {storm_gws} gateways x {storm_backlog} events, 2 workers")
    with tempfile.TemporaryDirectory(prefix="midshift-bench-ledger-") as d, \
            ThrowawayPostgres(settings=PG_SETTINGS) as pg:
        r = _drain(_fresh(pg, "storm"), 2, Path(d), gateways=storm_gws, backlog=storm_backlog,
                   batch_events=250, window=4, jitter_s=2.0, connections=100, site="storm")
    out.update({"storm_gateways": storm_gws, "storm_events": r["events"],
                "storm_drain_s": r["drain_s"], "storm_jitter_s": 2.0,
                "storm_resends": r["resends"], "storm_connections": r["connections"]})
    out["cores"] = os.cpu_count()
    return out


if __name__ == "__main__":
    naive_worker(*sys.argv[1:5])
