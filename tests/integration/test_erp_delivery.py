"""Out to the ERP (issue 20): the outbox, the delivery worker and the feed against real peers.

The ledger's real stores (SQLite, and PostgreSQL via ``midshift/simulator/postgres.py``) book till
transactions as the ledger does (``store_many``); the delivery worker posts them over
real HTTP on loopback to the ERP emulator (``midshift/simulator/erp.py``), which records what it
accepted by idempotency key and counts duplicates. The judge is always the same: every
booked transaction accepted exactly once by key with the same amounts, or parked for
review; duplicates only as retries of a key, counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from midshift.firmware.core import topics
from midshift.host_tools.ledger.erp_delivery import ErpConfig, ErpDelivery
from midshift.host_tools.ledger.ledger_feed import LedgerFeed
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.outbox import Outbox
from midshift.simulator.broker import Broker
from midshift.simulator.erp import ErpEmulator
from midshift.simulator.lab import wait_for
from midshift.simulator.postgres import ThrowawayPostgres
from midshift.simulator.webshop import WebShop
from tests import till_txns

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 0x1234


def book(db: str, n: int, till: str = "till-1", first_seq: int = 1, gateway: str = "gw-1",
         sku: str = "SKU-1") -> dict[str, int]:
    """``n`` sales booked into the ledger at ``db``; {idempotency key: total}."""
    bodies = []
    for i in range(first_seq, first_seq + n):
        txn = till_txns.sale(till, i, amount=100 + i, tender="card" if i % 2 else "cash")
        txn["lines"][0]["sku"] = sku
        bodies.append(till_txns.body(txn, f"{till}-{i}", 1_774_000_000_000 + i))
    with open_store(db) as store:
        store.store_many([till_txns.batch(gateway, EPOCH, bodies, first_seq)], 1_774_000_000_000)
    return {f"{gateway}/{EPOCH:016x}/{i}": 100 + i for i in range(first_seq, first_seq + n)}


def config(erp: ErpEmulator, **kw: Any) -> ErpConfig:
    base: dict[str, Any] = {"rate_per_s": 500.0, "batch": 5, "backoff_s": 0.05,
                            "backoff_cap_s": 0.2, "poll_s": 0.05, "lease_s": 5.0,
                            "timeout_s": 2.0}
    return ErpConfig(erp.url, **(base | kw))


def assert_exactly_once(erp: ErpEmulator, want: dict[str, int]) -> None:
    assert sorted(erp.accepted) == sorted(want)
    assert {k: d["total"] for k, d in erp.accepted.items()} == want
    assert sum(erp.duplicates.values()) == 0


@pytest.mark.parametrize("how", ["503", "refuse"])
def test_erp_down_then_back_loses_nothing_and_sends_nothing_twice(tmp_path: Path,
                                                                  how: str) -> None:
    """About 1 s: the ERP is down (503 + Retry-After, or nothing listening) while 20
    transactions wait; when it is back every one arrives once."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 20)
    with ErpEmulator(retry_after_s=0) as erp:
        erp.go_down(how)
        worker = ErpDelivery(db, config(erp)).start()
        try:
            assert wait_for(lambda: worker.snapshot()["erp_retries"] >= 3, 5)
            assert erp.accepted == {}
            erp.come_back()
            assert wait_for(lambda: len(erp.accepted) == 20, 10), erp.snapshot()
            box = Outbox(db, "erp")
            assert wait_for(lambda: box.due() == 0, 5)
            box.close()
        finally:
            assert worker.stop()
        assert_exactly_once(erp, want)
        counted = "erp_throttled" if how == "503" else "erp_unreachable"
        assert worker.snapshot()[counted] >= 3


def test_429_retry_after_is_honoured(tmp_path: Path) -> None:
    """About 1.1 s: a 429 with ``Retry-After: 1``; the next request comes a second later."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 3)
    with ErpEmulator() as erp:
        erp.fail_next(429, 1, retry_after_s=1)
        worker = ErpDelivery(db, config(erp, batch=10)).start()
        try:
            assert wait_for(lambda: len(erp.accepted) == 3, 10), erp.snapshot()
        finally:
            assert worker.stop()
        first, second = erp.requests[0], erp.requests[1]
        assert first["status"] == 429 and second["status"] == 201
        assert second["t"] - first["t"] >= 1.0  # the ERP asked for a second; not sooner
        assert_exactly_once(erp, want)


def test_a_refused_transaction_is_parked_for_review(tmp_path: Path) -> None:
    """About 1 s: one of five is refused (422) every time; after ``refuse_limit`` it is
    parked: an open ``erp_refused`` flag in `review` and in the morning report; the four
    others reach the ERP, once each."""
    from midshift.host_tools.morning_report.figures import build

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 5)
    bad = f"gw-1/{EPOCH:016x}/3"
    with ErpEmulator(reject=lambda item: "unknown SKU" if item["idempotency_key"] == bad
                     else None) as erp:
        worker = ErpDelivery(db, config(erp, refuse_limit=2)).start()
        try:
            box = Outbox(db, "erp")
            assert wait_for(lambda: box.due() == 0, 10), erp.snapshot()
            box.close()
        finally:
            assert worker.stop()
        del want[bad]
        assert_exactly_once(erp, want)
    assert worker.snapshot()["erp_parked"] == 1
    with open_store(db) as store:
        flags = [f for f in store.flags(open_only=True) if f["kind"] == "erp_refused"]
        assert [(f["gateway"], f["seq"]) for f in flags] == [("gw-1", 3)]
        assert "422" in flags[0]["detail"] and "unknown SKU" in flags[0]["detail"]
        report = build(store, till_txns.DAY)
    review = report["stores"][0]["review"]
    assert [(r["kind"], r["till_seq"], r["open"]) for r in review] == [("erp_refused", 3, True)]
    assert not report["verdict"]["ok"]
    out = subprocess.run([sys.executable, "-m", "midshift.host_tools", "review", "--db", db, "--open"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "erp_refused" in out.stdout and "unknown SKU" in out.stdout


def test_two_workers_share_one_postgresql_outbox(pg: ThrowawayPostgres) -> None:
    """About 1 s: two workers, each with its own connection, on one PostgreSQL outbox
    (``FOR UPDATE SKIP LOCKED``): 60 transactions, each accepted once, both worked."""
    db = pg.create_database("erp_two_workers")
    open_store(db, migrate=True).close()
    want = book(db, 60)
    with ErpEmulator(delay_s=0.02) as erp:
        a = ErpDelivery(db, config(erp, batch=4)).start()
        b = ErpDelivery(db, config(erp, batch=4)).start()
        try:
            assert wait_for(lambda: len(erp.accepted) == 60, 15), erp.snapshot()
        finally:
            assert a.stop() and b.stop()
        assert_exactly_once(erp, want)
    done = (a.snapshot()["erp_delivered"], b.snapshot()["erp_delivered"])
    assert sum(done) == 60 and min(done) > 0
    box = Outbox(db, "erp")
    assert box.due() == 0
    box.close()


def _keys_file(tmp_path: Path) -> Path:
    keys = tmp_path / "keys.toml"
    keys.write_text('[gateways]\ngw-1 = "' + "11" * 32 + '"\n')
    return keys


def _serve(db: str, broker: str, keys: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", db,
                             "--broker", broker, "--keys", str(keys), "--log-level", "WARNING",
                             "--client-id", "", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ledger: "), f"ledger did not start: {line!r}"
    return proc


def test_ledger_killed_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    """About 4 s: `ledger serve --erp-url` is SIGKILLed while the (slow) ERP holds its
    request; a new one takes over after the lease and delivers the rest. Every key
    accepted once; a duplicate is only a resend of a key the ERP had (counted)."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 12)
    keys = _keys_file(tmp_path)
    flags = ("--erp-batch", "3", "--erp-rate", "100", "--erp-lease-s", "1.5",
             "--erp-timeout-s", "1")
    with Broker() as broker, ErpEmulator(delay_s=0.4) as erp:
        first = _serve(db, broker.url, keys, "--erp-url", erp.url, *flags)
        try:
            # The second request is in flight (read, not yet answered) when the ledger dies.
            assert wait_for(lambda: erp.arrived >= 2, 10)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        assert wait_for(lambda: len(erp.requests) == 2, 5)  # it was accepted all the same
        assert len(erp.accepted) == 6
        second = _serve(db, broker.url, keys, "--erp-url", erp.url, *flags)
        box = Outbox(db, "erp")
        try:
            assert wait_for(lambda: box.due() == 0, 15), erp.snapshot()
        finally:
            box.close()
            second.terminate()
            assert second.wait(15) == 0
        assert sorted(erp.accepted) == sorted(want)
        # The only duplicates: the batch in flight at the kill, sent again with its keys.
        in_flight = {f"gw-1/{EPOCH:016x}/{i}" for i in (4, 5, 6)}
        assert dict(erp.duplicates) == dict.fromkeys(in_flight, 1)


def test_feed_publishes_each_committed_transaction_as_json(tmp_path: Path) -> None:
    """About 1 s: the feed publishes each booked transaction once on
    ``midshift/v1/ledger/feed/<store>/txn``, card tenders with masked PANs only."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 6)
    got: list[dict[str, Any]] = []
    seen = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        got.append({"topic": msg.topic, **json.loads(msg.payload)})
        if len(got) >= 6:
            seen.set()

    with Broker() as broker:
        host, port = "127.0.0.1", broker.port
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_message = on_message
        sub.connect(host, port)
        sub.subscribe(topics.ledger_feed(), qos=1)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(host, port)
        pub.loop_start()
        feed = LedgerFeed(db, pub, poll_s=0.05)
        try:
            assert wait_for(lambda: sub.is_connected() and pub.is_connected(), 5)
            feed.start()
            assert seen.wait(10)
        finally:
            assert feed.stop()
            sub.loop_stop()
            pub.loop_stop()
    assert sorted(m["idempotency_key"] for m in got) == sorted(want)
    assert {m["topic"] for m in got} == {"midshift/v1/ledger/feed/store-1/txn"}
    cards = [t for m in got for t in m["tenders"] if t["kind"] == "card"]
    assert cards and all(t["pan"] == "411111******1111" for t in cards)
    assert "4111111111111111" not in json.dumps(got)
    box = Outbox(db, "feed")
    assert box.due() == 0
    box.close()


def test_web_shop_oversells_what_the_erp_did_not_know_yet(tmp_path: Path) -> None:
    """Well under a second: the ERP shows 10 units; the store sells 6 while the ERP is
    away and the web shop sells all 10 meanwhile (the 11th order finds none); the store's
    sales arrive: 6 units oversold (ghost inventory), counted."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    book(db, 6, sku="SKU-9")
    with ErpEmulator(stock={"SKU-9": 10_000}, retry_after_s=0) as erp:
        erp.go_down("503")
        worker = ErpDelivery(db, config(erp)).start()
        try:
            shop = WebShop(erp.base_url)
            assert [shop.sell("SKU-9") for _ in range(11)] == [True] * 10 + [False]
            erp.come_back()
            assert wait_for(lambda: len(erp.accepted) == 6, 10)
        finally:
            assert worker.stop()
        assert WebShop.ghost_units(erp.snapshot()["oversold_milli"]) == 6
        assert erp.stock["SKU-9"] == -6_000


@pytest.mark.parametrize(("flags", "says"), [
    (["--erp-url", "ftp://erp"], "--erp-url: 'ftp://erp' is not http(s)://HOST[:PORT]/PATH"),
    (["--erp-url", "http://erp/x", "--erp-rate", "0"], "--erp-rate 0.0: expected a number > 0"),
    (["--erp-url", "http://erp/x", "--erp-batch", "0"], "--erp-batch 0: expected 1..10000"),
    (["--erp-token-file", "/nonexistent"], "--erp-token-file goes with --erp-url URL"),
    (["--erp-url", "http://erp/x", "--erp-token-file", "/nonexistent/t"],
     "--erp-token-file /nonexistent/t: cannot read: No such file or directory"),
])
def test_bad_erp_configuration_is_one_line(tmp_path: Path, flags: list[str], says: str) -> None:
    """Instant: exit 2 and one line naming the option, before anything connects."""
    proc = subprocess.run([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db",
                           f"sqlite:///{tmp_path / 'l.db'}", "--broker", "mqtt://127.0.0.1:1",
                           "--keys", str(_keys_file(tmp_path)), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"ledger: {says}"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_version_5_leaves_older_transactions_home(backend: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    """Under a second: a ledger at version 4 with a booked transaction migrates to 5; that
    transaction is marked sent at 0 (the ERP link did not exist when it was booked), the
    next one booked is due for both sinks."""
    import sqlite3

    from midshift.host_tools.ledger.migrations import (
        LATEST,
        POSTGRESQL,
        SCHEMA_VERSION_TABLE,
        SQLITE,
    )
    from midshift.host_tools.ledger.transactions import Booker

    t0 = 1_774_000_000_000
    first = till_txns.body(till_txns.sale(), "k1", t0)
    event = ("gw-1", f"{EPOCH:016x}", 1, 0, 1, first.decode(), 0, t0)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'v4.db'}"
        db: Any = sqlite3.connect(tmp_path / "v4.db", isolation_level=None)
        db.execute(SCHEMA_VERSION_TABLE)
        for version, sql in SQLITE[:4]:
            db.executescript(f"BEGIN;\n{sql}\nINSERT INTO schema_version VALUES ({version}, 0);"
                             "\nCOMMIT;")
        db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", event)
        Booker(db.cursor(), "?").book([(*event[:3], first)], t0)
        db.close()
    else:
        import psycopg
        pg: ThrowawayPostgres = request.getfixturevalue("pg")
        url = pg.create_database("erp_v4")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA_VERSION_TABLE)
            for version, sql in POSTGRESQL[:4]:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
            conn.execute("INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", event)
            with conn.cursor() as cur:
                Booker(cur, "%s").book([(*event[:3], first)], t0)
    open_store(url, migrate=True).close()
    book(url, 1, first_seq=2)
    with open_store(url) as s:
        assert s.schema_version() == LATEST[backend]  # 5 and what came after
        rows = s.query("SELECT seq, erp_ms, feed_ms FROM transactions ORDER BY seq")
    assert rows == [(1, 0, 0), (2, None, None)]


def test_sqlite_leases_share_the_outbox(tmp_path: Path) -> None:
    """Instant: two outboxes on one SQLite file claim disjoint rows; a lease that expired
    is claimed again, a delivered row never."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 10)
    a, b = Outbox(db, "erp", 10), Outbox(db, "erp", 10)
    t = 1_000_000
    try:
        got_a, got_b = a.claim(4, t), b.claim(4, t)
        ka = [(r["gateway"], r["epoch"], r["seq"]) for r in got_a]
        kb = [(r["gateway"], r["epoch"], r["seq"]) for r in got_b]
        assert [k[2] for k in ka] == [1, 2, 3, 4] and [k[2] for k in kb] == [5, 6, 7, 8]
        assert [r["seq"] for r in a.claim(4, t + 1)] == [9, 10]
        assert a.claim(4, t + 2) == []
        a.done(ka, t + 3)
        # b died: its lease (10 s) expires and its rows are due again; a's are delivered.
        assert [r["seq"] for r in a.claim(10, t + 10_001)] == [5, 6, 7, 8]
        assert a.due() == 6 and len(want) == 10
    finally:
        a.close()
        b.close()


def test_sqlite_batch_marks_span_gateways(tmp_path: Path) -> None:
    """Instant: one claimed batch holding two gateways' transactions is leased, given back
    and marked delivered as a whole (one statement per gateway and epoch), nothing else."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    book(db, 3, gateway="gw-1")
    book(db, 2, gateway="gw-2")
    book(db, 2, gateway="gw-3")
    box = Outbox(db, "erp", 10)
    t = 1_000_000
    try:
        rows, _, joined = box.claim_batch(5, t, "totals")
        keys = [k for k, _ in rows]
        assert [k[0] for k in keys] == ["gw-1"] * 3 + ["gw-2"] * 2 and joined is not None
        assert [d["idempotency_key"] for d in json.loads(joined)] == [
            f"{g}/{e}/{q}" for g, e, q in keys]
        assert [k[0] for k, _ in box.claim_batch(5, t, "totals")[0]] == ["gw-3"] * 2
        box.release(keys[2:4])  # gw-1's third and gw-2's first: due again at once
        assert [k for k, _ in box.claim_batch(5, t, "totals")[0]] == keys[2:4]
        box.done(keys, t)
        assert box.due() == 2  # gw-3's, still leased
        assert box.claim_batch(5, t + 10_001, "totals")[0] == [
            (("gw-3", f"{EPOCH:016x}", q), 0) for q in (1, 2)]
    finally:
        box.close()


def test_the_configured_rate_is_respected(tmp_path: Path) -> None:
    """About half a second: 10 transactions one per request at 20 requests/s over two
    threads: the ERP sees them no faster than that (10 requests span 9 gaps of 50 ms)."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    want = book(db, 10)
    with ErpEmulator() as erp:
        worker = ErpDelivery(db, config(erp, batch=1, rate_per_s=20.0, concurrency=2)).start()
        try:
            assert wait_for(lambda: len(erp.accepted) == 10, 10), erp.snapshot()
        finally:
            assert worker.stop()
        times = sorted(r["t"] for r in erp.requests)
        assert len(times) == 10 and times[-1] - times[0] >= 9 * 0.05 - 0.01
        assert_exactly_once(erp, want)
        assert all(r["key"] in want for r in erp.requests)  # one per request: its own key


@pytest.mark.parametrize("level", ["lines", "totals"])
def test_sqlite_builds_the_same_documents_as_python(tmp_path: Path, level: str) -> None:
    """Instant: the SQLite-built document (``erp_payload.sqlite_doc``) equals the Python
    one (``erp_payload.payload``), odd bodies included: an unmasked PAN (dropped), a PAN
    that is a number, extra keys on lines and tenders, a line that is not an object, a
    refund with its original, no tenders at all, an offline sale."""
    from midshift.host_tools.ledger.erp_payload import payload

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    odd = [
        till_txns.sale("t", 1, tender="card"),
        till_txns.sale("t", 2, tender="card"),
        till_txns.sale("t", 3, tender="card"),
        till_txns.sale("t", 4, type="refund", original={"till": "t", "till_seq": 1}),
        till_txns.sale("t", 5),
        till_txns.sale("t", 6, tender="voucher"),
    ]
    odd[1]["tenders"][0]["pan"] = "4111111111111111"
    odd[2]["tenders"][0].update(pan=4111111111111111, cvv="123")
    odd[4]["lines"] = [{"sku": "S", "qty_milli": 1, "unit_price": 2, "discount": 0,
                        "note": "x"}, {"sku": "T", "qty_milli": 1000, "unit_price": 0}]
    odd[5]["tenders"] = []
    bodies = [till_txns.body(t, f"k{i}", 1_774_000_000_000 + i, offline=i == 3)
              for i, t in enumerate(odd)]
    with open_store(db) as store:
        store.store_many([till_txns.batch("gw-1", EPOCH, bodies)], 1_774_000_000_000)
    box = Outbox(db, "erp", 10)
    try:
        from_sql = {k: json.loads(doc) for k, _, doc in box.claim_docs(10, 1, level)}
        from_python = {(r["gateway"], r["epoch"], r["seq"]): payload(r, level)
                       for r in box.claim(10, 1 + 20_000)}  # the leases expired
        # What the worker sends: all of a batch's documents as one array, in its keys' order.
        rows, by_key, joined = box.claim_batch(10, 1 + 40_000, level)
    finally:
        box.close()
    assert len(from_sql) == 6 and from_sql == from_python
    assert by_key == {} and joined is not None
    assert json.loads(joined) == [from_python[k] for k, _ in rows] and len(rows) == 6
    text = json.dumps(list(from_sql.values()))
    assert "4111111111111111" not in text and "123" not in text.replace("1234", "")


def test_a_batch_the_ledger_commits_wakes_the_delivery(tmp_path: Path) -> None:
    """About 1 s: a signed batch of two sales through the real ledger service (broker,
    verify, store, ack); its commit wakes the worker (``after_commit``), whose own poll
    is 60 s away, and the ERP has both."""
    from midshift.firmware.core.signing import Signer
    from midshift.firmware.core.wire import encode_batch
    from midshift.host_tools.ledger.service import LedgerService
    from midshift.host_tools.ledger.sqlite_store import SqliteStore

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    key = bytes.fromhex("11" * 32)
    bodies = [till_txns.body(till_txns.sale("till-1", i), f"k{i}", 1_774_000_000_000 + i)
              for i in (1, 2)]
    payload_bytes = encode_batch(Signer(key), till_txns.batch("gw-1", EPOCH, bodies))
    with Broker() as broker, ErpEmulator() as erp, SqliteStore(db) as store:
        service = LedgerService(store, {"gw-1": key}, broker.url).start()
        worker = ErpDelivery(db, config(erp, poll_s=60.0)).start()
        service.after_commit.append(worker.wake)
        try:
            assert service.handle("midshift/v1/lab/gw-1/events", payload_bytes) is not None
            assert wait_for(lambda: len(erp.accepted) == 2, 10), erp.snapshot()
        finally:
            assert worker.stop()
            service.stop()
    assert sorted(erp.accepted) == [f"gw-1/{EPOCH:016x}/{i}" for i in (1, 2)]
