"""Till transactions in the ledger, on SQLite and PostgreSQL alike: a ``txn`` event becomes a
row and its review flags in the same commit, exactly once across resends; conflicts flag
both sides; a closed day books late arrivals and flags them; review resolves flags once.
One test goes end to end: a gateway agent journals transactions, forwards them over
mosquitto, and the real ``LedgerService`` books them."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.firmware.core import record as rec
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.store import LedgerStore
from midshift.simulator.lab import Lab, wait_for
from midshift.simulator.postgres import ThrowawayPostgres
from tests.till_txns import batch, body, sale

T0 = 1_774_746_000_000  # 2026-03-29 01:00 UTC
_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        pg: ThrowawayPostgres = request.getfixturevalue("pg")
        s = open_store(pg.create_database(f"txn_{next(_names)}_{time.time_ns() % 10**9}"),
                       migrate=True)
    yield s
    s.close()


def _kinds(store: LedgerStore) -> Counter[tuple[str, int, str]]:
    """(gateway, seq, kind) of every flag."""
    return Counter((f["gateway"], f["seq"], f["kind"]) for f in store.flags())


def test_rows_and_flags_once_across_resends(store: LedgerStore) -> None:
    a = [body(sale(till_seq=1), "k1", T0),
         body(sale(till_seq=2, amount=500, tender="card", auth="declined"), "k2", T0 + 1),
         body(sale(till_seq=3, amount=700, tender="card", auth="offline_pending"), "k3",
              T0 + 2, offline=True),
         # refunds: one of a known original (by till and number), one of an unknown key
         body(sale(till_seq=4, type="refund", original={"till": "till-1", "till_seq": 1}),
              "k4", T0 + 3),
         body(sale(till_seq=5, type="void", original="k-nowhere"), "k5", T0 + 4),
         # lines 1234, tenders 1000
         body(sale(till_seq=6, lines=[{"sku": "A", "qty_milli": 1000, "unit_price": 1234,
                                       "discount": 0}], amount=1000), "k6", T0 + 5)]
    b1 = batch("gw-a", 1, a)
    assert store.store_many([b1], T0 + 100) == [(6, 0)]
    assert store.store_many([b1, b1], T0 + 200) == [(0, 6), (0, 6)]  # resent: nothing twice
    rows = store.transactions()
    assert [r["till_seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["cash"] == 1234 and rows[0]["total"] == 1234 and rows[0]["card"] == 0
    assert rows[1]["card"] == 500 and rows[2]["offline"] is True
    assert rows[3]["original"] == {"till": "till-1", "till_seq": 1}
    assert rows[0]["tz"] == "Europe/Berlin" and rows[0]["ledger_ms"] == T0 + 100
    assert rows[0]["accepted_ms"] == T0
    assert _kinds(store) == Counter({("gw-a", 2, "card_declined"): 1,
                                     ("gw-a", 3, "card_offline_pending"): 1,
                                     ("gw-a", 5, "unknown_original"): 1,
                                     ("gw-a", 6, "unbalanced"): 1})


def test_split_brain_keeps_and_flags_both(store: LedgerStore) -> None:
    store.store_many([batch("gw-a", 1, [body(sale(till_seq=7), "k7", T0),
                                        body(sale(till_seq=8), "k8", T0)])], T0 + 10)
    # gw-b: another transaction claims till-1 #7; the same key k8 with other contents; and
    # the very same transaction (k9) arriving from two gateways
    nine = body(sale(till_seq=9), "k9", T0)
    store.store_many([batch("gw-b", 2, [body(sale(till_seq=7, amount=99), "k7b", T0),
                                        body(sale(till_seq=18, amount=5), "k8", T0), nine])],
                     T0 + 20)
    store.store_many([batch("gw-a", 1, [nine], first_seq=3)], T0 + 30)
    assert len(store.transactions(store="store-1")) == 6  # nothing dropped
    assert _kinds(store) == Counter({
        ("gw-a", 1, "conflict_till_seq"): 1, ("gw-b", 1, "conflict_till_seq"): 1,
        ("gw-a", 2, "conflict_key"): 1, ("gw-b", 2, "conflict_key"): 1,
        ("gw-b", 3, "conflict_key"): 1, ("gw-a", 3, "conflict_key"): 1})
    detail = next(f["detail"] for f in store.flags() if f["gateway"] == "gw-a" and f["seq"] == 3)
    assert "two gateways" in detail


def test_conflicts_inside_one_batch_are_judged_in_seq_order(store: LedgerStore) -> None:
    # The ledger judges a batch set-wise; each row still sees exactly the rows before it:
    # two claims of till-1 #7 and of key k8 in one batch are flagged, and a refund before
    # its original in the same batch finds nothing, the one after it finds it.
    store.store_many([batch("gw-a", 1, [
        body(sale(till_seq=11, type="refund", original="k10"), "k11", T0),
        body(sale(till_seq=10), "k10", T0),
        body(sale(till_seq=12, type="refund", original="k10"), "k12", T0),
        body(sale(till_seq=7), "k7", T0), body(sale(till_seq=7, amount=5), "k7b", T0),
        body(sale(till_seq=8), "k8", T0), body(sale(till_seq=9, amount=3), "k8", T0)])],
        T0 + 10)
    assert len(store.transactions(store="store-1")) == 7
    assert _kinds(store) == Counter({
        ("gw-a", 1, "unknown_original"): 1,
        ("gw-a", 4, "conflict_till_seq"): 1, ("gw-a", 5, "conflict_till_seq"): 1,
        ("gw-a", 6, "conflict_key"): 1, ("gw-a", 7, "conflict_key"): 1})


def test_closed_day_books_late_and_review_resolves_once(store: LedgerStore) -> None:
    store.store_many([batch("gw-a", 1, [body(sale(till_seq=1), "k1", T0)])], T0)
    closed = store.close_day("store-1", "2026-03-29", "maria")
    assert closed["closed_by"] == "maria"
    with pytest.raises(ValueError, match="already closed by maria"):
        store.close_day("store-1", "2026-03-29", "joe")
    store.store_many([batch("gw-a", 1, [body(sale(till_seq=2), "k2", T0)], first_seq=2)], T0)
    assert [r["till_seq"] for r in store.transactions(day="2026-03-29")] == [1, 2]  # booked
    (late,) = store.flags(open_only=True)
    assert (late["kind"], late["seq"], late["till"], late["till_seq"]) == ("late", 2, "till-1", 2)
    done = store.resolve_flag(late["id"], "maria", "counted in the next day's deposit")
    assert done["resolved_by"] == "maria" and done["resolved_ms"] is not None
    assert store.flags(open_only=True) == [] and len(store.flags()) == 1
    with pytest.raises(ValueError, match="already resolved by maria"):
        store.resolve_flag(late["id"], "joe", "again")
    with pytest.raises(ValueError, match="no flag 999"):
        store.resolve_flag(999, "joe", "x")
    assert [(d["store"], d["business_day"]) for d in store.closed_days()] == [
        ("store-1", "2026-03-29")]


def test_original_arriving_after_its_refund_clears_nothing(store: LedgerStore) -> None:
    refund = body(sale(till_seq=2, type="refund", original="k1"), "k2", T0)
    store.store_many([batch("gw-a", 1, [refund], first_seq=2)], T0)
    store.store_many([batch("gw-a", 1, [body(sale(till_seq=1), "k1", T0)])], T0)
    assert [f["kind"] for f in store.flags(open_only=True)] == ["unknown_original"]


def test_unreadable_transaction_is_kept_and_flagged(store: LedgerStore) -> None:
    from midshift.firmware.core.event import encode_body
    bad = encode_body("till-1", "txn", T0, {"key": "k", "txn": {"type": "sale"}})
    scan = encode_body("scanner", "scan", T0, {"code": '"k":"txn"'})  # looks like one
    assert store.store_many([batch("gw-a", 1, [bad, scan])], T0) == [(2, 0)]
    assert store.transactions() == [] and store.count() == 2
    assert [f["kind"] for f in store.flags()] == ["invalid"]


def test_rows_with_and_without_original_or_till_time_keep_their_values_and_order(
        store: LedgerStore) -> None:
    # Rows whose original and till_time are both NULL are inserted by a statement of their
    # own (``Booker._insert``): runs of each kind, mixed in one batch, keep every value and
    # the batch's order (row ids, which the outbox follows on SQLite).
    when = "2026-03-29T09:30:00+02:00"
    kinds = [(None, None), (None, None), ({"till": "till-1", "till_seq": 1}, None),
             (None, when), ("k1", when), (None, None), (None, when), (None, None)]
    bodies = [body(sale(till_seq=i + 1, type="sale" if o is None else "refund", original=o,
                        **({"till_time": t} if t else {})), f"k{i + 1}", T0)
              for i, (o, t) in enumerate(kinds)]
    assert store.store_many([batch("gw-a", 1, bodies)], T0) == [(8, 0)]
    rows = store.transactions()
    assert [(r["original"], r["till_time"]) for r in rows] == kinds
    assert all(r["total"] == 1234 == r["cash"] for r in rows)
    if store.backend == "sqlite":
        assert [s for (s,) in store.query("SELECT seq FROM transactions ORDER BY rowid")] \
            == list(range(1, 9))
    assert store.flags() == []


def test_pg_resend_path_books_only_the_new(pg: ThrowawayPostgres) -> None:
    """PostgreSQL's slow path (a group with events stored before) books only new rows."""
    with open_store(pg.create_database(f"txn_slow_{time.time_ns() % 10**9}"),
                    migrate=True) as s:
        first = batch("gw-a", 1, [body(sale(till_seq=1), "k1", T0)])
        s.store_many([first], T0)
        both = batch("gw-a", 1, [body(sale(till_seq=1), "k1", T0),
                                 body(sale(till_seq=2, amount=1, tender="card",
                                           auth="declined"), "k2", T0)])
        assert s.store_many([both], T0) == [(1, 1)]
        assert [r["till_seq"] for r in s.transactions()] == [1, 2]
        assert [(f["seq"], f["kind"]) for f in s.flags()] == [(2, "card_declined")]


def test_agent_to_ledger_over_mosquitto(tmp_path: Path) -> None:
    """A gateway journals transactions durably (as the till API does), forwards them over
    mosquitto, and the real LedgerService books rows and flags once."""
    lab = Lab(tmp_path)
    try:
        agent = lab.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        now = int(time.time() * 1000)
        for i in range(1, 21):
            agent.journal.append_durable(body(sale(till_seq=i, amount=100 * i), f"key-{i}",
                                              now + i), rec.TXN)
        agent.journal.append_durable(body(sale(till_seq=21, type="refund",
                                               original="key-99"), "key-21", now), rec.TXN)
        assert wait_for(lambda: len(lab.store.transactions()) == 21, 15)
        rows = lab.store.transactions(store="store-1", day="2026-03-29")
        assert sum(r["cash"] for r in rows if r["type"] == "sale") == 100 * 210
        assert [f["kind"] for f in lab.store.flags()] == ["unknown_original"]
        assert lab.ledger.counters["events"] >= 21
    finally:
        lab.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_3_ledger_migrates_and_keeps_its_transactions(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Version 4 drops ``lines`` and ``tenders`` (read from the event's body since): a
    ledger booked under version 3 keeps its rows, reads the same, and books on."""
    import json
    import sqlite3

    from midshift.host_tools.ledger.migrations import (
        LATEST,
        POSTGRESQL,
        SCHEMA_VERSION_TABLE,
        SQLITE,
    )
    first = body(sale(till_seq=1, amount=500, tender="card", auth="offline_pending"), "k1", T0)
    doc = json.loads(first)
    v3 = ("gw-a", f"{1:016x}", 1, "store-1", "till-1", 1, "2026-03-29", "sale", "EUR", "k1",
          doc["d"]["sha"], "R-till-1-1", 0, T0, T0 + 5, 500, 0, 500, 0,
          json.dumps(doc["d"]["txn"]["lines"]), json.dumps(doc["d"]["txn"]["tenders"]), None,
          "Europe/Berlin", "ann", None)
    event = ("gw-a", f"{1:016x}", 1, 0, 1, first.decode(), 0, T0 + 5)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'v3.db'}"
        db = sqlite3.connect(tmp_path / "v3.db", isolation_level=None)
        db.execute(SCHEMA_VERSION_TABLE)
        for version, sql in SQLITE[:3]:
            db.executescript(f"BEGIN;\n{sql}\nINSERT INTO schema_version VALUES ({version}, 0);"
                             "\nCOMMIT;")
        db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", event)
        db.execute(f"INSERT INTO transactions VALUES ({', '.join('?' * len(v3))})", v3)
        db.close()
    else:
        import psycopg
        pg: ThrowawayPostgres = request.getfixturevalue("pg")
        url = pg.create_database(f"txn_v3_{time.time_ns() % 10**9}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA_VERSION_TABLE)
            for version, sql in POSTGRESQL[:3]:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
            conn.execute("INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", event)
            conn.execute(f"INSERT INTO transactions VALUES ({', '.join(['%s'] * len(v3))})", v3)
    with open_store(url, migrate=True) as s:
        assert s.schema_version() == LATEST[backend]  # 4 and what came after
        (row,) = s.transactions()
        assert (row["till_seq"], row["card"], row["ledger_ms"]) == (1, 500, T0 + 5)
        assert row["lines"] == doc["d"]["txn"]["lines"]
        assert row["tenders"] == doc["d"]["txn"]["tenders"]
        # Booking goes on against the migrated table and its indexes.
        s.store_many([batch("gw-b", 2, [body(sale(till_seq=1, amount=7), "k1", T0)])], T0)
        assert [r["till_seq"] for r in s.transactions()] == [1, 1]
        assert _kinds(s) == Counter({("gw-a", 1, "conflict_till_seq"): 1,
                                     ("gw-b", 1, "conflict_till_seq"): 1,
                                     ("gw-a", 1, "conflict_key"): 1,
                                     ("gw-b", 1, "conflict_key"): 1})
