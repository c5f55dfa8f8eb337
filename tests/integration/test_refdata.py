"""Reference data down, against real mosquitto, a real agent and its till API over HTTP:
``refdata publish`` to the till's GET, offline reads, provisional stock replaced by the
next delta, bad signature / bad checksum / gap then recovery / duplicates, the snapshot
on first start, reconnect ordering through a fault proxy, and the stale-prices rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from bench.till_site import sale, write_till_site
from midshift.firmware.agent import Agent
from midshift.firmware.core import topics
from midshift.firmware.core.refdata import checksum_of, sign_message
from midshift.firmware.core.signing import Signer
from midshift.firmware.edges.metrics import refdata_families
from midshift.firmware.edges.preflight import load_checked
from midshift.firmware.edges.status_view import render
from midshift.host_tools import refdata_publisher
from midshift.host_tools.__main__ import main as host_main
from midshift.host_tools.refdata_publisher import Publisher
from midshift.simulator.broker import Broker
from midshift.simulator.lab import wait_for
from midshift.simulator.network import FaultProxy
from tests.integration.till_client import TillClient

CMD_KEY = bytes(range(100, 132))
GW = "gw-t"
SITE = "lab"


def site_dir(d: Path) -> Path:
    """The host's site directory as far as ``refdata publish`` reads it: the registry and
    the gateway's command key."""
    (d / "gateways" / GW).mkdir(parents=True)
    (d / "site.json").write_text(json.dumps({"site": SITE, "gateways": {GW: {}}}))
    (d / "gateways" / GW / "command.key").write_text(CMD_KEY.hex())
    return d


class Rig:
    def __init__(self, tmp: Path, broker: Broker, rules: dict[str, Any] | None = None,
                 port: int | None = None) -> None:
        self.tmp = tmp
        self.broker = broker
        self.site = site_dir(tmp / "site")
        self.gw_site, self.tokens = write_till_site(
            tmp / "gw", ["till-1"], uplink_ports=(port or broker.port,), command_key=CMD_KEY,
            rules=rules)
        self.agent: Agent | None = None
        self.till: TillClient | None = None

    def start(self) -> Rig:
        self.agent = Agent(load_checked(self.gw_site)).start()
        self.till = TillClient(self.agent.tills.port, self.tokens["till-1"])
        return self

    def stop(self) -> None:
        if self.till is not None:
            self.till.close()
        if self.agent is not None:
            self.agent.stop()
        self.agent = self.till = None

    def publish(self, dataset: str, rows: dict[str, Any], name: str = "rows.csv") -> int:
        f = self.tmp / name
        if name.endswith(".json"):
            f.write_text(json.dumps(rows))
        else:
            cols = sorted({c for r in rows.values() for c in r})
            f.write_text("\n".join(["sku," + ",".join(cols)] + [
                k + "," + ",".join(str(r.get(c, "")) for c in cols) for k, r in rows.items()])
                + "\n")
        return host_main(["refdata", "publish", "--store", "store-7", "--dataset", dataset,
                          str(f), "--broker", f"mqtt://127.0.0.1:{self.broker.port}",
                          "--site-dir", str(self.site)])

    def version(self, dataset: str) -> int:
        assert self.agent is not None
        return int(self.agent.refdata.store.state(dataset)[0])

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        assert self.till is not None
        return self.till.request("GET", path)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with Broker() as b:
        yield b


@pytest.fixture
def rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    r = Rig(tmp_path, broker)
    try:
        yield r
    finally:
        r.stop()


def raw_publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for t, p in msgs:
            c.publish(t, p, qos=1, retain=True).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def prices(n: int, base: int = 100) -> dict[str, dict[str, int]]:
    return {f"SKU{i:04d}": {"price": base + i} for i in range(n)}


def test_published_prices_and_stock_reach_the_till_and_stay_readable_offline(
        rig: Rig, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    rig.start()
    assert rig.publish("prices", prices(50), "p.csv") == 0
    assert wait_for(lambda: rig.version("prices") == 1, 10)
    status, body = rig.get("/v1/prices/SKU0007")
    assert (status, body["price"], body["version"], body["age_s"]) == (200, 107, 1, 0.0)
    assert rig.get("/v1/prices/NOPE")[0] == 404
    changed = prices(50)
    changed["SKU0007"] = {"price": 99}
    del changed["SKU0001"]
    assert rig.publish("prices", changed, "p.json") == 0
    assert wait_for(lambda: rig.version("prices") == 2, 10)
    assert rig.get("/v1/prices/SKU0007")[1]["price"] == 99
    assert rig.get("/v1/prices/SKU0001")[0] == 404
    assert rig.agent is not None
    assert rig.agent.refdata.store.checksum_now("prices") == checksum_of(changed)
    capsys.readouterr()
    assert host_main(["refdata", "show", "--store", "store-7", "--dataset", "prices",
                      "--site-dir", str(rig.site)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("prices v2 ") and f"checksum {checksum_of(changed)}" in shown[0]
    assert "changes 2" in shown[0] and shown[1].startswith("prices v1 ")
    # Stock: a sale takes it down provisionally, the next delta's level replaces it.
    assert rig.publish("stock", {"BREAD": {"qty_milli": 10000}}, "s.csv") == 0
    assert wait_for(lambda: rig.version("stock") == 1, 10)
    assert rig.till is not None and rig.till.post(sale("till-1", 1), "k-1")[0] == 201
    assert wait_for(lambda: rig.get("/v1/stock/BREAD")[1]["sold_since_milli"] == 2000, 10)
    body = rig.get("/v1/stock/BREAD")[1]
    assert (body["qty_milli"], body["authoritative_milli"]) == (8000, 10000)
    assert rig.publish("stock", {"BREAD": {"qty_milli": 7000}}, "s.csv") == 0
    assert wait_for(lambda: rig.version("stock") == 2, 10)
    body = rig.get("/v1/stock/BREAD")[1]
    assert (body["qty_milli"], body["sold_since_milli"]) == (7000, 0)
    assert body["last_correction"]["difference_milli"] == -1000
    st = rig.get("/v1/status")[1]
    assert st["rules"]["stale_reference_data"]["limit"] is None
    snap = rig.agent.snapshot()["refdata"]
    assert snap["datasets"]["stock"]["version"] == 2 and snap["stock_corrections"]["count"] == 1
    # The broker gone: the same answers, the age growing.
    broker.stop()
    assert wait_for(lambda: (rig.get("/v1/prices/SKU0007")[1]["age_s"] or 0) > 0, 10)
    status, body = rig.get("/v1/prices/SKU0007")
    assert (status, body["price"], body["version"]) == (200, 99, 2)


def test_bad_files_get_one_line(tmp_path: Path, broker: Broker,
                                capsys: pytest.CaptureFixture[str]) -> None:
    r = Rig(tmp_path, broker)
    (tmp_path / "bad.csv").write_text("sku,price\nA,1\nB,1.99\n")
    (tmp_path / "dup.csv").write_text("sku,price\nA,1\nA,2\n")
    (tmp_path / "bad.json").write_text("[{\"price\": 1}]")
    (tmp_path / "p.txt").write_text("")
    for name in ("bad.csv", "dup.csv", "bad.json", "p.txt"):
        code = host_main(["refdata", "publish", "--store", "s", "--dataset", "prices",
                          str(tmp_path / name), "--broker", f"mqtt://127.0.0.1:{broker.port}",
                          "--site-dir", str(r.site)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("refdata: "), err
    assert host_main(["refdata", "show", "--store", "s", "--site-dir", str(r.site)]) == 2


def test_forged_and_wrong_deltas_are_counted_then_a_gap_is_fetched(rig: Rig,
                                                                   broker: Broker) -> None:
    rig.start()
    assert rig.publish("prices", prices(5)) == 0
    assert wait_for(lambda: rig.version("prices") == 1, 10)
    assert rig.agent is not None
    gate = rig.agent.refdata.gate
    signer = Signer(CMD_KEY)
    base = {"v": 1, "kind": "delta", "gateway": GW, "store": "store-7", "dataset": "prices"}
    v2 = dict(prices(5), SKU0000={"price": 1})
    v3 = dict(v2, SKU0001={"price": 2})
    d2 = dict(base, **{"from": 1}, to=2, ops=[["SKU0000", {"price": 1}]],
              checksum=checksum_of(v2))
    d3 = dict(base, **{"from": 2}, to=3, ops=[["SKU0001", {"price": 2}]],
              checksum=checksum_of(v3))
    t = lambda v: topics.refdata_topic(SITE, GW, "prices", "delta", v)  # noqa: E731
    raw_publish(broker.port, [
        (t(2), sign_message(Signer(b"f" * 32), d2)),                 # forged
        (t(2), sign_message(signer, dict(d2, checksum="0" * 16))),   # wrong checksum
    ])
    assert wait_for(lambda: gate.rejected["bad_signature"] >= 1
                    and gate.rejected["bad_checksum"] >= 1, 10)
    assert rig.version("prices") == 1
    raw_publish(broker.port, [(t(3), sign_message(signer, d3))])    # 1 -> 3: a gap
    # The gap is counted, then the missed delta asked for again (one step later).
    assert wait_for(lambda: gate.rejected["gap"] >= 1
                    and rig.agent.refdata.counters["re_asked"] >= 1, 10)
    assert rig.version("prices") == 1
    raw_publish(broker.port, [(t(2), sign_message(signer, d2))])    # what was missed
    assert wait_for(lambda: rig.version("prices") == 3, 10)
    assert rig.get("/v1/prices/SKU0001")[1]["price"] == 2
    stale = gate.rejected["stale"]
    raw_publish(broker.port, [(t(2), sign_message(signer, d2))])    # a duplicate, again
    assert wait_for(lambda: gate.rejected["stale"] > stale, 10)
    assert rig.version("prices") == 3
    assert rig.agent.refdata.store.checksum_now("prices") == checksum_of(v3)
    doc = rig.agent.snapshot()
    rej = doc["refdata"]["rejected"]
    assert rej["bad_signature"] >= 1 and rej["bad_checksum"] >= 1 and rej["gap"] >= 1
    # The same figures on the status page and as metrics.
    page = render(doc, None, 5)
    assert 'id="refdata"' in page and "updates from head office were refused" in page
    fams = {f.name: f for f in refdata_families(doc["refdata"])}
    assert [s.value for s in fams["midshift_refdata_version"].samples
            if s.labels == {"dataset": "prices"}] == [3]
    assert [s.value for s in fams["midshift_refdata_rejected"].samples
            if s.labels == {"reason": "bad_checksum"}][0] >= 1


def test_first_start_far_behind_takes_the_snapshot_in_chunks(
        rig: Rig, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refdata_publisher, "CHUNK_ROWS", 40)
    monkeypatch.setattr(refdata_publisher, "KEEP_DELTAS", 3)
    for v in range(1, 7):  # the gateway is not running yet
        assert rig.publish("prices", prices(150, base=v * 1000)) == 0
    rig.start()
    assert wait_for(lambda: rig.version("prices") == 6, 10)
    assert rig.agent is not None
    # the counter moves just after the store's version (another thread): wait for it too
    assert wait_for(lambda: rig.agent.refdata.counters["snapshots_installed"] == 1, 5)
    assert rig.get("/v1/prices/SKU0149")[1]["price"] == 6149
    assert rig.agent.refdata.store.checksum_now("prices") == checksum_of(prices(150, 6000))
    assert rig.publish("prices", prices(150, base=7000)) == 0     # then deltas again
    assert wait_for(lambda: rig.version("prices") == 7, 10)
    assert wait_for(lambda: rig.agent.refdata.counters["deltas_applied"] == 1, 5)


def test_a_snapshot_resumes_from_the_chunks_already_stored(tmp_path: Path) -> None:
    from midshift.firmware.core.refdata import RefdataGate
    from midshift.firmware.edges.refdata_store import RefdataStore
    pub = Publisher(tmp_path, "s")
    pub.publish("prices", prices(5000))
    chunks = [(t, p) for t, p in pub.messages("prices", SITE, GW, CMD_KEY) if "/snapshot/" in t]
    gate = RefdataGate(Signer(CMD_KEY), GW)
    store = RefdataStore(tmp_path / "r.sqlite")
    for _, p in chunks[:2]:
        store.put_chunk(gate.read(p), p)
    store.close()  # a restart
    store = RefdataStore(tmp_path / "r.sqlite")
    assert store.missing_chunks("prices", 1, len(chunks)) == [2]
    store.put_chunk(gate.read(chunks[2][1]), chunks[2][1])
    store.install_snapshot(gate, "prices", 1, 0)
    assert store.state("prices")[:2] == (1, checksum_of(prices(5000)))
    store.close()


def test_reconnect_catches_up_in_order_and_ignores_the_old(tmp_path: Path,
                                                           broker: Broker) -> None:
    with FaultProxy(("127.0.0.1", broker.port), control=False) as proxy:
        rig = Rig(tmp_path, broker, port=proxy.port)
        try:
            rig.start()
            assert rig.publish("prices", prices(20)) == 0
            assert wait_for(lambda: rig.version("prices") == 1, 10)
            assert rig.agent is not None
            proxy.set_mode("refuse")
            assert wait_for(lambda: not rig.agent.refdata.live, 10)  # type: ignore[union-attr]
            for v in range(2, 6):
                assert rig.publish("prices", prices(20, base=v * 100)) == 0
            assert rig.version("prices") == 1  # still offline
            proxy.set_mode("pass")
            assert wait_for(lambda: rig.version("prices") == 5, 15)
            assert rig.get("/v1/prices/SKU0003")[1]["price"] == 503
            assert wait_for(lambda: rig.agent.refdata.counters["deltas_applied"] == 5, 5)
            assert wait_for(lambda: rig.get("/v1/prices/SKU0003")[1]["age_s"] == 0.0, 10)
            # The same file again: nothing new, every kept delta left on the broker again;
            # each one arrives and is ignored as not newer.
            stale = rig.agent.refdata.gate.rejected["stale"]
            assert rig.publish("prices", prices(20, base=500)) == 0
            assert wait_for(lambda: rig.agent.refdata.gate.rejected["stale"]  # type: ignore
                            >= stale + 4, 10)
            assert rig.version("prices") == 5
        finally:
            rig.stop()


def test_stale_prices_refuse_offline_sales(tmp_path: Path, broker: Broker) -> None:
    rig = Rig(tmp_path, broker, rules={"offline_tenders": ["cash"], "prices_max_age_s": 0})
    try:
        rig.start()
        assert rig.till is not None
        # Online: no rule but max_queue applies, prices or not.
        assert wait_for(lambda: rig.get("/v1/status")[1]["state"] == "online", 10)
        assert rig.till.post(sale("till-1", 1), "k-1")[0] == 201
        broker.stop()
        assert wait_for(lambda: rig.get("/v1/status")[1]["state"] == "offline", 10)
        status, body = rig.till.post(sale("till-1", 2), "k-2")
        assert (status, body.get("rule")) == (403, "stale_reference_data")
        assert rig.get("/v1/status")[1]["rules"]["stale_reference_data"]["refused"] == 1
    finally:
        rig.stop()


def test_published_sell_rules_are_in_force_and_a_bad_version_is_refused(
        tmp_path: Path, broker: Broker) -> None:
    """Head office tightens the offline rules by publishing them: cards no longer taken
    offline. A later version with a bad value is counted and logged; the good one stays."""
    rig = Rig(tmp_path, broker, rules={"offline_tenders": ["cash", "card"]})
    try:
        rig.start()
        assert rig.till is not None
        assert rig.publish("sell_rules", {"offline_tenders": {"value": ["cash"]}},
                           name="rules.json") == 0
        assert wait_for(lambda: rig.version("sell_rules") == 1, 10)
        assert wait_for(lambda: rig.get("/v1/status")[1]["rules_version"] == 1, 10)
        assert rig.publish("sell_rules", {"offline_tenders": {"value": ["cash"]},
                                          "txn_cap": {"value": -5}}, name="rules.json") == 0
        assert wait_for(lambda: rig.version("sell_rules") == 2, 10)
        status = rig.get("/v1/status")[1]
        assert status["counters"]["rules_refused"] == 1 and status["rules_version"] == 2
        broker.stop()
        assert wait_for(lambda: rig.get("/v1/status")[1]["state"] == "offline", 10)
        code, body = rig.till.post(sale("till-1", 1, tender="card"), "k-card")
        assert (code, body.get("rule")) == (403, "tender_not_offline")
        assert rig.till.post(sale("till-1", 2), "k-cash")[0] == 201
    finally:
        rig.stop()
