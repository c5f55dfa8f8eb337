"""The till API against a real agent and a real HTTP client: every answer of issue 17, a
retry after SIGKILL (and with the index file gone), the offline rules following the
uplink, card data never written, one key posted at once from many threads."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.till_site import sale, write_till_site
from midshift.firmware.agent import Agent
from midshift.firmware.core.till_txn import has_pan
from midshift.firmware.edges.preflight import load_checked
from midshift.simulator.lab import Lab, wait_for
from tests.integration.till_client import TillClient

ROOT = Path(__file__).resolve().parents[2]
TILLS = ["till-1", "till-2"]
MANAGER_CODE = "4711"
RULES = {"offline_tenders": ["cash", "card"], "card_floor_limit": 5000, "txn_cap": 20000,
         "offline_exposure_cap": 30000, "max_queue": 1000, "card_max_offline_age_s": 3600,
         "manager_code_sha256": hashlib.sha256(MANAGER_CODE.encode()).hexdigest()}
PAN = "4111111111111111"


def start(site: Path) -> Agent:
    return Agent(load_checked(site)).start()


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[tuple[Agent, dict[str, str], Path]]:
    """An agent with the till API and no uplink at all: offline from the start."""
    site, tokens = write_till_site(tmp_path, TILLS, rules=RULES)
    agent = start(site)
    try:
        yield agent, tokens, tmp_path
    finally:
        agent.stop()


def test_every_answer(offline: tuple[Agent, dict[str, str], Path]) -> None:
    agent, tokens, _ = offline
    till = TillClient(agent.tills.port, tokens["till-1"])
    first = till.post(sale("till-1", 1), "k-1")
    assert first[0] == 201, first
    assert first[1]["state"] == "journaled" and first[1]["gateway"] == "gw-t"
    assert len(first[1]["epoch"]) == 16 and first[1]["receipt"]
    assert till.post(sale("till-1", 1), "k-1") == (200, first[1])
    # Same key, key order changed: the same request.
    reordered = dict(reversed(list(sale("till-1", 1).items())))
    assert till.post(reordered, "k-1")[0] == 200
    assert till.post(sale("till-1", 2), "k-1")[0] == 422
    status, body = till.post(sale("till-1", 2), None)
    assert (status, body["path"]) == (400, "Idempotency-Key")
    status, body = till.request("POST", "/v1/transactions", raw=b"{not json", key="k-2")
    assert (status, body["error"]) == (400, "invalid_json")
    bad = sale("till-1", 2)
    bad["lines"][1]["unit_price"] = "1.00"
    status, body = till.post(bad, "k-2")
    assert (status, body["path"]) == (400, "lines[1].unit_price")
    status, body = till.request("POST", "/v1/transactions", raw=b" " * 70000, key="k-2")
    assert status == 413
    assert TillClient(agent.tills.port, "not-a-token").post(sale("till-1", 2), "k-2")[0] == 401
    assert TillClient(agent.tills.port, None).request("GET", "/v1/status")[0] == 401
    status, body = till.post(sale("till-2", 2), "k-2")
    assert (status, body["rule"]) == (403, "wrong_till")
    # Offline: the rules apply.
    for doc, rule in ((sale("till-1", 3, tender="voucher"), "tender_not_offline"),
                      (sale("till-1", 3, price=6000, tender="card"), "card_floor_limit"),
                      (sale("till-1", 3, price=25000), "txn_cap")):
        status, body = till.post(doc, "k-3")
        assert (status, body.get("rule")) == (403, rule), body
    for n in range(2):  # 2 x 19,680 over the 30,000 exposure cap
        status, body = till.post(sale("till-1", 10 + n, price=19500), f"k-big-{n}")
    assert (status, body.get("rule")) == (403, "offline_exposure_cap")
    assert till.post(sale("till-1", 3, price=4000, tender="card"), "k-3")[0] == 201
    # Where it is, the status, the document.
    assert till.request("GET", "/v1/transactions/k-1") == (200, first[1])
    assert till.request("GET", "/v1/transactions/nope")[0] == 404
    status, st = till.request("GET", "/v1/status")
    assert status == 200 and st["state"] == "offline"
    assert st["queued"]["count"] == 3
    assert st["queued"]["amount"] == 430 + 19680 + 4180
    assert st["rules"]["offline_exposure_cap"]["headroom"] == 30000 - st["queued"]["amount"]
    assert st["rules"]["txn_cap"]["refused"] == 1
    assert agent.snapshot()["tills"]["queued"]["count"] == 3
    status, api = TillClient(agent.tills.port, None).request("GET", "/v1/openapi.json")
    assert status == 200 and api == json.loads((ROOT / "docs/till-api.openapi.json").read_text())
    # Forced offline: the manager code, audited.
    status, body = till.request("POST", "/v1/forced-offline", {"on": True, "manager_code": "1"})
    assert (status, body["rule"]) == (403, "bad_manager_code")
    assert till.request("POST", "/v1/forced-offline",
                        {"on": True, "manager_code": MANAGER_CODE}) == (200, {"forced_offline": True})
    audit = [json.loads(x) for x in (Path(agent.cfg.journal.path) / "till-audit.log")
             .read_text().splitlines()]
    assert [(a["action"], a["till"]) for a in audit] == [("forced_offline_denied", "till-1"),
                                                         ("forced_offline", "till-1")]
    assert MANAGER_CODE not in json.dumps(audit)


def test_card_data_is_refused_and_never_written(
        offline: tuple[Agent, dict[str, str], Path]) -> None:
    agent, tokens, tmp = offline
    till = TillClient(agent.tills.port, tokens["till-1"])
    cases: list[tuple[dict[str, Any], str]] = [
        (sale("till-1", 1, cashier=PAN), "cashier"),
        (sale("till-1", 1, cashier="4111 1111 1111 1111"), "cashier"),
        (sale("till-1", 1, tenders=[{"kind": "card", "amount": 430, "pan": PAN,
                                     "scheme": "visa", "auth": "approved"}]), "tenders[0].pan"),
        (sale("till-1", 1, cvv="123"), "cvv"),
        (sale("till-1", 1, note=f"%B{PAN}^DOE/JOHN^2512"), "note"),
    ]
    for i, (doc, path) in enumerate(cases):
        status, body = till.post(doc, f"card-{i}")
        assert (status, body["error"], body["path"]) == (400, "card_data", path)
        assert PAN not in json.dumps(body)
    assert till.post(sale("till-1", 1, tender="card", price=100), f"x-{PAN}")[0] == 400
    # A till's UUID key whose digit groups happen to join into a Luhn-valid run is a key,
    # not a card number (about one random UUID in a hundred).
    uuid_key = "5283c721-9a66-4865-9477-418e735bfae7"
    assert has_pan(uuid_key)
    assert till.post(sale("till-1", 7), uuid_key)[0] == 201
    assert till.post(sale("till-1", 1), "after")[0] == 201
    agent.journal.wait_durable(agent.journal.durable_seq)
    digits = PAN.encode()
    for f in tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert digits not in data and b"4111 1111 1111 1111" not in data, f
    for i in range(len(cases)):
        assert agent.tills.index.get(f"card-{i}") is None


def test_one_key_posted_at_once_gets_one_201(
        offline: tuple[Agent, dict[str, str], Path]) -> None:
    agent, tokens, _ = offline
    results: list[tuple[int, dict[str, Any]]] = []
    gate = threading.Barrier(8)

    def post() -> None:
        c = TillClient(agent.tills.port, tokens["till-2"])
        gate.wait(5)
        results.append(c.post(sale("till-2", 7), "same-key"))
        c.close()

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    codes = sorted(s for s, _ in results)
    assert len(codes) == 8 and codes.count(201) == 1, codes
    assert set(codes) <= {200, 201, 409}
    seqs = {b["seq"] for s, b in results if s in (200, 201)}
    assert len(seqs) == 1
    assert agent.tills.counters["accepted"] == 1


def test_a_journal_that_refuses_gives_507(tmp_path: Path) -> None:
    site, tokens = write_till_site(tmp_path, TILLS, rules=RULES, segment_size=4096,
                                   segment_count=2)
    agent = start(site)
    try:
        till = TillClient(agent.tills.port, tokens["till-1"])
        codes = [till.post(sale("till-1", n), f"k-{n}")[0] for n in range(40)]
        assert 201 in codes and codes[-1] == 507, codes
        first_refused = codes.index(507)
        assert set(codes[first_refused:]) == {507}
        assert till.post(sale("till-1", 0), "k-0")[0] == 200  # what was taken stays
    finally:
        agent.stop()


def _online(lab: Lab, site: Path, token: str) -> tuple[Agent, TillClient]:
    """An agent on ``site`` forwarding through the lab, started; its till, once online."""
    agent = Agent(load_checked(site))
    agent.forwarding_options = lab.forwarding
    lab.agent = agent.start()
    till = TillClient(agent.tills.port, token)
    assert wait_for(lambda: till.request("GET", "/v1/status")[1]["state"] == "online", 15)
    return agent, till


def test_offline_rules_follow_the_uplink(tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=1)
    try:
        site, tokens = write_till_site(tmp_path / "gw", TILLS, rules=RULES,
                                       uplink_ports=(lab.proxies[0].address[1],))
        agent, till = _online(lab, site, tokens["till-1"])
        voucher = sale("till-1", 1, tender="voucher")
        status, online = till.post(voucher, "v-1")
        assert status == 201
        lab.proxies[0].set_mode("refuse")
        assert wait_for(lambda: till.request("GET", "/v1/status")[1]["state"] == "offline", 15)
        status, body = till.post(sale("till-1", 2, tender="voucher"), "v-2")
        assert (status, body["rule"]) == (403, "tender_not_offline")
        status, cash = till.post(sale("till-1", 3), "c-3")
        assert status == 201 and till.request("GET", "/v1/transactions/c-3")[1]["state"] == \
            "journaled"
        lab.proxies[0].set_mode("pass")
        assert wait_for(lambda: till.request("GET", "/v1/transactions/c-3")[1]["state"] ==
                        "in_ledger", 30)
        assert till.post(sale("till-1", 2, tender="voucher"), "v-2")[0] == 201
        assert wait_for(lambda: till.request("GET", "/v1/status")[1]["queued"]["count"] == 0, 30)
        rows = lab.store.query("SELECT seq FROM event_fields WHERE gateway='gw-t' AND "
                               "kind='txn' ORDER BY seq")
        assert [r[0] for r in rows] == sorted({online["seq"], cash["seq"],
                                               till.request("GET", "/v1/transactions/v-2")[1]["seq"]})
        # First-class rows in the ledger, each once, the offline one marked so.
        txns = {t["idem_key"]: t for t in lab.store.transactions()}
        assert sorted(txns) == ["c-3", "v-1", "v-2"]
        assert [txns[k]["offline"] for k in ("v-1", "c-3", "v-2")] == [False, True, False]
        assert txns["c-3"]["cash"] == txns["c-3"]["total"] > 0 and txns["c-3"]["till"] == "till-1"
        assert txns["v-1"]["voucher"] == txns["v-1"]["total"]
    finally:
        lab.close()


def test_the_index_is_rebuilt_before_an_ack_can_reclaim_a_sale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut after a sale reached the ledger, before its ack came back and before its
    key reached the index: at the next start the ledger acknowledges it again at once. The
    index must be rebuilt from the journal before that ack reclaims the record (here the
    rebuild is slow, as on a long journal on an SD card), or the retry is taken twice."""
    from midshift.firmware.edges.till_api import TillApi

    lab = Lab(tmp_path, uplinks=1)
    try:
        site, tokens = write_till_site(tmp_path / "gw", TILLS, rules=RULES,
                                       uplink_ports=(lab.proxies[0].address[1],))
        agent, till = _online(lab, site, tokens["till-1"])
        assert agent.journal is not None
        agent.journal.hold()  # the ack is not taken: as if the power went before it came
        status, first = till.post(sale("till-1", 1), "k-1")
        assert status == 201
        assert wait_for(lambda: len(lab.store.transactions()) == 1, 15)
        agent.stop()
        for f in (tmp_path / "gw" / "journal").glob("till-keys.sqlite*"):
            f.unlink()  # the key had not reached the index
        rebuild = TillApi._rebuild

        def slow_rebuild(self: TillApi) -> None:
            assert wait_for(lambda: False, 1.5) is False  # a long journal on a slow card
            rebuild(self)

        monkeypatch.setattr(TillApi, "_rebuild", slow_rebuild)
        agent, till = _online(lab, site, tokens["till-1"])
        status, again = till.post(sale("till-1", 1), "k-1")
        assert (status, again["seq"]) == (200, first["seq"])
        assert wait_for(lambda: till.request("GET", "/v1/transactions/k-1")[1]["state"] ==
                        "in_ledger", 15)
        assert [t["idem_key"] for t in lab.store.transactions()] == ["k-1"]
    finally:
        lab.close()


def test_tls_with_a_token_or_a_client_certificate(tmp_path: Path) -> None:
    import ssl

    from tests.integration.pki import make_pki
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki", gateway="till-1")
    site, tokens = write_till_site(tmp_path, TILLS, rules=RULES, till_api={
        "tls_cert": str(pki / "server.crt"), "tls_key": str(pki / "server.key"),
        "client_ca": str(pki / "ca.crt")})
    agent = start(site)
    try:
        def context(leaf: str | None) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            if leaf:
                ctx.load_cert_chain(str(pki / f"{leaf}.crt"), str(pki / f"{leaf}.key"))
            return ctx
        port = agent.tills.port
        assert TillClient(port, tokens["till-1"], tls=context(None)).post(
            sale("till-1", 1), "tls-1")[0] == 201
        status, body = TillClient(port, None, tls=context("till-1")).post(sale("till-1", 2),
                                                                           "tls-2")
        assert status == 201, body
        status, body = TillClient(port, None, tls=context("till-1")).post(sale("till-2", 3),
                                                                           "tls-3")
        assert (status, body["rule"]) == (403, "wrong_till")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            TillClient(port, None, tls=context("rogue")).post(sale("till-1", 4), "tls-4")
        with pytest.raises((ConnectionError, OSError)):
            TillClient(port, tokens["till-1"], timeout_s=2).post(sale("till-1", 5), "tls-5")
    finally:
        agent.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(site: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config", str(site),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _up(port: int, token: str) -> TillClient:
    def ready() -> bool:
        try:
            return TillClient(port, token, timeout_s=1).request("GET", "/v1/status")[0] == 200
        except OSError:
            return False
    assert wait_for(ready, 20, 0.05)
    return TillClient(port, token)


def test_a_retry_after_sigkill_gets_the_same_answer(tmp_path: Path) -> None:
    """Killed mid-POST three times (the index file deleted once too): every key a till was
    answered for gets 200 with the same seq; one it got no answer for gets 201 or 200."""
    port = _free_port()
    site, tokens = write_till_site(tmp_path, TILLS, port=port,
                                   rules={"offline_tenders": ["cash"]})
    answers: dict[str, dict[str, Any]] = {}
    unanswered: set[str] = set()
    for life in range(4):
        proc = _run(site)
        try:
            till = _up(port, tokens["till-1"])
            for key in sorted(answers):  # every answer a till was given, again
                status, body = till.post(sale("till-1", int(key.split("-")[1])), key)
                assert (status, body["seq"], body["receipt"]) == (
                    200, answers[key]["seq"], answers[key]["receipt"]), key
            for key in sorted(unanswered):
                status, body = till.post(sale("till-1", int(key.split("-")[1])), key)
                assert status in (200, 201), body
                answers[key] = body
            unanswered.clear()
            if life == 3:
                break

            def post_until_killed(life: int = life, till: TillClient = till) -> None:
                for n in range(life * 1000, life * 1000 + 900):  # bounded; killed long before
                    key = f"k-{n}"
                    unanswered.add(key)
                    try:
                        status, body = till.post(sale("till-1", n), key)
                    except (OSError, ValueError, http.client.HTTPException):
                        return  # killed mid-request or mid-answer (IncompleteRead)
                    assert status == 201, body
                    answers[key] = body
                    unanswered.discard(key)

            poster = threading.Thread(target=post_until_killed)
            poster.start()
            before = len(answers)
            assert wait_for(lambda before=before: len(answers) >= before + 20, 20)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            poster.join(20)
            if life == 1:  # the index lost too: rebuilt from the journal
                for f in (tmp_path / "journal").glob("till-keys.sqlite*"):
                    f.unlink()
        finally:
            proc.kill()
            proc.wait(10)
    assert len(answers) >= 60 and len({a["seq"] for a in answers.values()}) == len(answers)
