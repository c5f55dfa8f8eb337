"""The ledger under hostile input, against real processes: mosquitto, the ledger service,
SQLite and PostgreSQL.

Batches with valid HMACs that the store cannot hold (seq 2**63, sent_ms and HLC past
2**63, a body that is not UTF-8 or holds a NUL) arrive mixed with honest ones: the honest
ones are stored and acknowledged, the others answered with a signed ``rejected`` ack, and
nothing stalls. A zip bomb is rejected with the ledger's RSS bounded; a forged flood
leaves an aggregated row, not 3,000. The batch builders and the ack listener are the
benchmark's (``bench/hostile_bench.py``), so the test and the figure measure one thing.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.hostile_bench import (
    HONEST,
    KEYS,
    POISON,
    Gateways,
    LedgerProcess,
    bomb_batch,
    honest_batch,
    poison_batch,
    raw_batch,
    record,
    wait_until,
)
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, encode_batch
from midshift.host_tools.ledger import service as service_module
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.host_tools.ledger.store import LedgerStore
from midshift.simulator.broker import Broker
from midshift.simulator.postgres import ThrowawayPostgres

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        pg: ThrowawayPostgres = request.getfixturevalue("pg")
        url = pg.create_database(f"hostile_{uuid.uuid4().hex[:10]}")
    with open_store(url, migrate=True) as st:
        yield st


@pytest.fixture
def rig(store: LedgerStore, tmp_path: Path) -> Iterator[tuple[LedgerService, Gateways]]:
    with Broker(tmp_path / "broker") as broker:
        ledger = LedgerService(store, KEYS, broker.url).start()
        gws = Gateways(broker.url, [HONEST, POISON])
        try:
            yield ledger, gws
        finally:
            gws.close()
            ledger.stop()


def _rejection_rows(store: LedgerStore, gw: str) -> list[tuple[str, int]]:
    p = "?" if store.backend == "sqlite" else "%s"
    return [(r, int(n)) for r, n in store.query(
        f"SELECT reason, count FROM rejections WHERE gateway = {p} ORDER BY reason", (gw,))]


def test_poison_beside_honest_batches_is_rejected_and_nothing_stalls(
        rig: tuple[LedgerService, Gateways], store: LedgerStore) -> None:
    ledger, gws = rig
    for i in range(100):  # interleaved, so groups hold both
        gws.publish(HONEST, honest_batch(HONEST, 1 + 10 * i))
        gws.publish(POISON, poison_batch(POISON, i))
    assert wait_until(lambda: len(gws.of(HONEST, "ok")) == 100, 60), len(gws.of(HONEST))
    assert wait_until(lambda: len(gws.of(POISON)) == 100, 30), len(gws.of(POISON))
    rejected = gws.of(POISON, "rejected")
    assert len(rejected) == 100
    assert {r for _, _, r in rejected} == {"out_of_range", "bad_body"}
    assert store.count(HONEST) == 1000 and store.count(POISON) == 0
    # the broker's in-flight window is free: later batches go through at once
    for i in range(100, 110):
        gws.publish(HONEST, honest_batch(HONEST, 1 + 10 * i))
    assert wait_until(lambda: len(gws.of(HONEST, "ok")) == 110, 15)
    assert ledger.counters["rejected"] == 100
    assert ledger.counters["rejected_out_of_range"] == 75
    assert ledger.counters["rejected_bad_body"] == 25
    ledger._flush_rejections(force=True)
    rows = _rejection_rows(store, POISON)
    assert sum(n for _, n in rows) == 100 and len(rows) <= 4  # aggregated per minute


def test_a_culprit_the_checks_miss_is_isolated_from_its_group(
        rig: tuple[LedgerService, Gateways], store: LedgerStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the range check switched off, a seq of 2**63 reaches the store and its
    transaction fails: the group is stored again batch by batch, the culprit alone is
    rejected (``unstorable``) and every message is released at the broker."""
    ledger, gws = rig
    monkeypatch.setattr(service_module, "MAX_INT", (1 << 64) - 1)
    honest = [honest_batch(HONEST, 10_000 + 10 * i) for i in range(3)]
    culprit = poison_batch(POISON, 0)  # kind 0: seq 2**63
    acks = ledger._process([(f"midshift/v1/hostile/{HONEST}/events", honest[0]),
                            (f"midshift/v1/hostile/{POISON}/events", culprit),
                            (f"midshift/v1/hostile/{HONEST}/events", honest[1])])
    assert [a is not None and b'"status":"ok"' in a for a in acks] == [True, False, True]
    assert acks[1] is not None and b'"reason":"unstorable"' in acks[1]
    assert store.count(HONEST) == 20 and store.count(POISON) == 0
    for i in range(30):  # and through the broker, many times over
        gws.publish(HONEST, honest_batch(HONEST, 1 + 10 * i))
        gws.publish(POISON, poison_batch(POISON, 4 * i))
    assert wait_until(lambda: len(gws.of(HONEST, "ok")) >= 32, 60), len(gws.of(HONEST))
    assert wait_until(lambda: len(gws.of(POISON, "rejected")) >= 31, 30)
    assert {r for _, _, r in gws.of(POISON)} == {"unstorable"}
    assert store.count(HONEST) == 320 and store.count(POISON) == 0


def test_bodies_are_stored_byte_for_byte_or_rejected(
        rig: tuple[LedgerService, Gateways], store: LedgerStore) -> None:
    ledger, gws = rig
    bodies = [b'{"v":1,"d":"tab\there"}', b'{"d":"new\nline\r\n"}', b'back\\slash \\N',
              "caf\u00e9 \u2603 \U0001F600".encode(), b"not json {", b"", b"\x7f\x01 controls"]
    recs = [(i + 1, 0, i, b) for i, b in enumerate(bodies)]
    gws.publish(HONEST, encode_batch(Signer(KEYS[HONEST]), Batch(HONEST, 1, recs, 1)))
    s = Signer(KEYS[HONEST])
    gws.publish(HONEST, raw_batch(s, HONEST, 1, 100, 100, 1, 1, record(100, 1, b"\xff\xfe")))
    gws.publish(HONEST, raw_batch(s, HONEST, 1, 101, 101, 1, 1, record(101, 1, b"a\x00b")))
    assert wait_until(lambda: len(gws.of(HONEST)) == 3, 20)
    assert [r for _, _, r in gws.of(HONEST, "rejected")] == ["bad_body", "bad_body"]
    p = "?" if store.backend == "sqlite" else "%s"
    stored = [r[0] for r in store.query(
        f"SELECT body FROM events WHERE gateway = {p} ORDER BY seq", (HONEST,))]
    assert len(stored) == len(bodies)
    sent = hashlib.sha256(b"\n--\n".join(bodies)).hexdigest()
    got = hashlib.sha256(b"\n--\n".join(b.encode("utf-8") for b in stored)).hexdigest()
    assert got == sent


def test_a_forged_flood_is_aggregated_and_the_honest_gateway_goes_on(
        rig: tuple[LedgerService, Gateways], store: LedgerStore) -> None:
    ledger, gws = rig
    wrong = Signer(b"\x66" * 32)
    for i in range(3000):
        gws.publish(HONEST, encode_batch(wrong, Batch(HONEST, 1, [(i + 1, 0, 0, b"{}")], 0)))
        if i % 100 == 0:
            gws.publish(HONEST, honest_batch(HONEST, 100_000 + i))
    assert wait_until(lambda: ledger.counters["rejected"] == 3000, 60), ledger.counters
    assert wait_until(lambda: len(gws.of(HONEST, "ok")) == 30, 20)
    assert gws.of(HONEST, "rejected") == []  # a forged batch is never answered
    ledger._flush_rejections(force=True)
    rows = _rejection_rows(store, HONEST)
    assert [r for r, _ in rows] in (["bad_mac"], ["bad_mac", "bad_mac"])
    assert sum(n for _, n in rows) == 3000 == store.rejection_count()


def test_a_zip_bomb_is_rejected_with_the_ledgers_rss_bounded(tmp_path: Path) -> None:
    bomb = bomb_batch(HONEST)
    assert len(bomb) < 1_100_000
    with Broker(tmp_path / "broker") as broker, \
            LedgerProcess(tmp_path, broker.url, KEYS) as ledger:
        gws = Gateways(broker.url, [HONEST])
        try:
            gws.publish(HONEST, honest_batch(HONEST, 1))
            assert wait_until(lambda: len(gws.of(HONEST, "ok")) == 1, 15)
            time.sleep(0.3)
            ledger.reset_peak()
            before = ledger.rss_kb()
            gws.publish(HONEST, bomb)
            assert wait_until(lambda: len(gws.of(HONEST, "rejected")) == 1, 60)
            growth_mb = (ledger.peak_kb() - before) / 1024
            assert gws.of(HONEST, "rejected")[0][2] == "too_large"
            gws.publish(HONEST, honest_batch(HONEST, 11))  # and it goes on
            assert wait_until(lambda: len(gws.of(HONEST, "ok")) == 2, 15)
        finally:
            gws.close()
        assert growth_mb <= 50, growth_mb
        with open_store(ledger.db) as st:
            assert wait_until(lambda: st.rejection_count() == 1, 10)
            [(detail,)] = st.query("SELECT detail FROM rejections")
    assert "limit of 16777216 bytes" in detail and "about 10" in detail, detail
