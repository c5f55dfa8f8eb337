"""The ledger's store on PostgreSQL beside SQLite: migrations, errors, and one report.

A throwaway PostgreSQL cluster (``midshift/simulator/postgres.py``: initdb in a temporary
directory, a free loopback port, removed afterwards) serves the module; each test gets a
database of its own. The same batches go into both stores (resends, a gap, bodies that
need escaping, a body that is not JSON, a rejection) and the reconciliation report must
come out identical, from Python and from the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from midshift.firmware.core.wire import Batch
from midshift.host_tools.ledger.migrations import LATEST
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.store import LedgerStore, StoreError
from midshift.host_tools.reconcile import reconcile
from midshift.simulator.broker import free_port
from midshift.simulator.postgres import ThrowawayPostgres

ROOT = Path(__file__).resolve().parents[2]
PG_LATEST = LATEST["postgresql"]


def host_tools(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midshift.host_tools", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def body(src: str, seq: int, code: str) -> bytes:
    return json.dumps({"v": 1, "src": src, "k": "scan", "t": 1_700_000_000_000 + seq,
                       "d": {"code": code}}, separators=(",", ":")).encode()


def sample_batches() -> list[list[Batch]]:
    """Groups of batches as a worker would store them: fresh ones, resends, overlaps."""
    a = [Batch("gw-a", 0xFFFF_FFFF_FFFF_FFFF,
               [(s, 0, s << 16, body("scanner", s, f"A{s}")) for s in range(1, 101)], 5)]
    odd = [(101, 0, 1, body("scale", 101, 'tab\there "quoted" back\\slash\nnewline')),
           (102, 1, 2, b"not json {"),
           (103, 0, 3, b'\xff\xfe invalid utf-8 \x00'),
           # valid JSON with raw whitespace that COPY text must escape, and a backslash
           (104, 0, 5, b'{"v":1,\t"src":"scale",\r\n"k":"scan","t":9,"d":{"code":"a\\\\b"}}'),
           (107, 0, 4, body("scanner", 107, "after a gap"))]
    b = [Batch("gw-a", 0xFFFF_FFFF_FFFF_FFFF, odd, 6)]
    other = [Batch("gw-b", 7, [(s, 1, s, body("plc", s, "x")) for s in range(1, 51)], 9)]
    overlap = [Batch("gw-b", 7, [(s, 1, s, body("plc", s, "x")) for s in range(40, 61)], 10)]
    return [a, b + other, a, overlap + overlap, other]


def fill(store: LedgerStore) -> list[list[tuple[int, int]]]:
    out = [store.store_many(group, 1_700_000_100_000 + i)
           for i, group in enumerate(sample_batches())]
    store.reject("gw-x", "unknown_gateway", "gateway gw-x is not registered", 1)
    return out


def test_migrate_then_serve_and_reconcile_work_from_the_cli(pg: ThrowawayPostgres) -> None:
    url = pg.create_database("cli")
    keys = Path(pg.directory or ".") / "keys.toml"
    keys.write_text('[gateways]\n"gw-a" = "' + "11" * 32 + '"\n')
    refused = host_tools("ledger", "serve", "--db", url, "--broker", "mqtt://127.0.0.1:1",
                         "--keys", str(keys))
    assert refused.returncode == 2
    assert "schema version 0" in refused.stderr and "ledger migrate" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    first = host_tools("ledger", "migrate", "--db", url)
    assert first.returncode == 0 and f"schema version {PG_LATEST}" in first.stdout, first.stderr
    assert host_tools("ledger", "migrate", "--db", url).returncode == 0  # idempotent
    with open_store(url) as store:
        assert store.schema_version() == PG_LATEST
        fill(store)
    rec = host_tools("reconcile", "--db", url, "--json")
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout)["events"] == 163  # two bodies are not JSON


@pytest.mark.parametrize("db, expect", [
    ("mysql://root@127.0.0.1/ledger", "expected sqlite:///PATH or postgresql://"),
    ("postgresql://nobody@127.0.0.1:{closed}/x", "cannot connect"),
])
def test_a_bad_db_url_is_one_line(db: str, expect: str, tmp_path: Path) -> None:
    db = db.format(closed=free_port())
    for argv in (["ledger", "migrate", "--db", db], ["reconcile", "--db", db]):
        done = host_tools(*argv)
        assert done.returncode == 2
        assert expect in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    with pytest.raises((StoreError, ValueError)):
        open_store(db)


def test_both_stores_count_duplicates_alike_and_give_the_same_report(
        pg: ThrowawayPostgres, tmp_path: Path) -> None:
    url = pg.create_database("same_report")
    sqlite_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_store(url, migrate=True) as p, open_store(sqlite_url) as s:
        assert p.backend == "postgresql" and s.backend == "sqlite"
        counts_pg, counts_sqlite = fill(p), fill(s)
        assert counts_pg == counts_sqlite
        # the third group resends the first; the fourth holds one batch twice
        assert counts_pg[2] == [(0, 100)] and counts_pg[3] == [(10, 11), (0, 21)]
        assert p.keys() == s.keys() and p.count() == s.count() == 165
        report_pg, report_sqlite = reconcile(p), reconcile(s)
    assert report_pg == report_sqlite
    # 105-106 never came; 102 and 103 are stored but their bodies are not JSON, and the
    # report leaves them out, so they count as missing too
    assert report_pg["gaps"] == 4 and report_pg["rejected_batches"] == 1
    assert report_pg["duplicates_discarded"] == 100 + 11 + 21 + 50
    texts = [host_tools("reconcile", "--db", db).stdout for db in (url, sqlite_url)]
    assert texts[0] == texts[1] and "ledger: " in texts[0]


def test_a_worker_killed_mid_copy_leaves_nothing_behind(pg: ThrowawayPostgres) -> None:
    """The transaction never commits: the events are not there, and the resend stores them."""
    url = pg.create_database("mid_copy")
    big = [Batch("gw-k", 1, [(s, 0, s, body("s", s, "k")) for s in range(1, 5001)], 1)]
    with open_store(url, migrate=True) as store:
        text = __import__("midshift.host_tools.ledger.pg_store", fromlist=["copy_text"]).copy_text(
            big, 2)
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys, psycopg\n"
             "c = psycopg.connect(sys.argv[1])\n"
             "with c.cursor().copy('COPY events FROM STDIN') as cp:\n"
             "    cp.write(sys.stdin.read()[:100000])\n"
             "    print('copying', flush=True)\n"
             "    sys.stdin.read()\n", url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(text)
        child.stdin.flush()
        child.stdin.close()
        assert child.stdout.readline().strip() == "copying"
        child.kill()
        child.wait(10)
        assert store.count() == 0
        assert store.store_many(big, 3) == [(5000, 0)]


def test_after_a_server_crash_the_group_in_flight_fails_and_the_next_reconnects(
        pg: ThrowawayPostgres) -> None:
    """What was committed survives; the group that met the dead connection raises (so the
    worker does not acknowledge it) and the next group opens a new connection."""
    import psycopg

    url = pg.create_database("server_crash")
    first = [Batch("gw-c", 1, [(s, 0, s, body("s", s, "c")) for s in range(1, 101)], 1)]
    second = [Batch("gw-c", 1, [(s, 0, s, body("s", s, "c")) for s in range(101, 201)], 1)]
    with open_store(url, migrate=True) as store:
        assert store.store_many(first, 1) == [(100, 0)]
        pg.restart(immediate=True)
        with pytest.raises(psycopg.OperationalError):
            store.store_many(second, 2)
        assert store.store_many(second, 3) == [(100, 0)]
        assert store.store_many(first + second, 4) == [(0, 100), (0, 100)]
        assert store.count() == 200


def test_two_migrations_at_once_apply_each_version_once(pg: ThrowawayPostgres) -> None:
    url = pg.create_database("race")
    runs = [subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "migrate", "--db",
                              url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [r.communicate(timeout=60) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    with open_store(url) as store:
        assert store.query("SELECT version FROM schema_version ORDER BY version") == [
            (v,) for v in range(1, PG_LATEST + 1)]
