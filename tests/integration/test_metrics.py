"""The OpenMetrics endpoints scraped over HTTP and parsed with prometheus-client's own
OpenMetrics parser: a real agent forwarding through mosquitto to the ledger, its till API
refusing a card over the floor limit offline, and a real ``ledger serve --metrics``
process. Every value asserted follows traffic the test made."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from bench.till_site import sale, write_till_site
from midshift.firmware.agent import Agent
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.event import Event
from midshift.firmware.core.pipeline import InvalidEvent
from midshift.firmware.edges.preflight import load_checked
from midshift.simulator.lab import KEY, Lab, wait_for
from tests.integration.till_client import TillClient

ROOT = Path(__file__).resolve().parents[2]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from one OpenMetrics scrape."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Accept": OPENMETRICS})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):  # raises on anything malformed
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[Any, float], name: str, **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


def test_the_agent_endpoint_follows_real_traffic_and_an_outage(tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=1, direct=True)
    lab.cfg.metrics_bind = ("127.0.0.1", 0)
    lab.cfg.no_ack_s = 1.0
    try:
        agent = lab.start_agent()
        port = agent.metrics.port
        assert wait_for(lambda: agent.forwarding.active is not None, 15)
        lab.emit(25)
        with pytest.raises(InvalidEvent):  # not a device of this gateway: counted, refused
            agent.emit(Event("ghost", "scan", 1700000000000, {}))
        assert wait_for(lambda: lab.ledger_count() >= 25, 30)
        assert wait_for(lambda: value(scrape(port), "midshift_journal_backlog_records") == 0, 15)
        m = scrape(port)
        assert value(m, "midshift_device_events_total", device="dev1", outcome="journaled") == 25
        assert value(m, "midshift_device_events_total", device="(unknown)",
                     outcome="unknown_source") == 1
        assert value(m, "midshift_events_invalid_total", reason="unknown_source") == 1
        assert value(m, "midshift_records_sent_total") >= 25
        sent = value(m, "midshift_batches_sent_total") + value(m, "midshift_batches_resent_total")
        assert 1 <= value(m, "midshift_acks_total", result="ok") <= sent
        assert value(m, "midshift_uplink_up", uplink="up0") == 1
        assert value(m, "midshift_uplink_active", uplink="up0") == 1
        assert value(m, "midshift_uplink_connects_total", uplink="up0") == 1
        assert value(m, "midshift_alarm", alarm="no_ack") == 0
        assert value(m, "midshift_journal_oldest_unacked_age_seconds") == 0
        info = [k for k in m if k[0] == "midshift_build_info"]
        assert dict(info[0][1])["gateway"] == "gw-t" and dict(info[0][1])["version"]
        assert value(m, "process_resident_memory_bytes") > 0
        # The ledger goes away: records wait, no ack comes, the alarm says so.
        lab.ledger.stop()
        lab.emit(3)
        assert wait_for(lambda: value(scrape(port), "midshift_alarm", alarm="no_ack") == 1, 15)
        m = scrape(port)
        assert value(m, "midshift_journal_backlog_records") == 3
        assert value(m, "midshift_journal_oldest_unacked_age_seconds") >= 1.0
        assert value(m, "midshift_device_events_total", device="dev1", outcome="journaled") == 28
        doc = agent.snapshot()
        assert "no_ack" in doc["alarms"] and "3 records wait" in doc["alarm_detail"]["no_ack"]
    finally:
        lab.close()


def test_the_till_rules_counters_and_headroom_are_metrics(tmp_path: Path) -> None:
    rules = {"offline_tenders": ["cash", "card"], "card_floor_limit": 5000,
             "offline_exposure_cap": 30000}
    site, tokens = write_till_site(tmp_path, ["till-1"], rules=rules)
    with site.open("a") as f:  # the endpoint as an integrator turns it on
        f.write('[metrics]\nbind = "127.0.0.1:0"\n')
    agent = Agent(load_checked(site)).start()  # no uplink: offline from the start
    try:
        till = TillClient(agent.tills.port, tokens["till-1"])
        status, body = till.post(sale("till-1", 1, price=6000, tender="card"), "k-card")
        assert (status, body["rule"]) == (403, "card_floor_limit")
        assert till.post(sale("till-1", 2), "k-cash")[0] == 201  # 250 + 180 in cash
        m = scrape(agent.metrics.port)
        assert value(m, "midshift_till_sell_refused_total", rule="card_floor_limit") == 1
        assert value(m, "midshift_till_sell_refused_total", rule="txn_cap") == 0
        assert value(m, "midshift_till_sell_headroom", rule="offline_exposure_cap") == 30000 - 430
        assert value(m, "midshift_till_sell_limit", rule="card_floor_limit") == 5000
        assert value(m, "midshift_till_sell_headroom", rule="txn_cap") is None  # no limit
        assert value(m, "midshift_till_queued_transactions") == 1
        assert value(m, "midshift_till_queued_amount") == 430
        assert value(m, "midshift_till_queued_offline_amount") == 430
        assert value(m, "midshift_till_online") == 0
        assert value(m, "midshift_till_requests_total", outcome="refused") == 1
        assert value(m, "midshift_till_requests_total", outcome="accepted") == 1
        rules_doc = agent.snapshot()["tills"]["rules"]  # the same numbers in the status
        assert rules_doc["card_floor_limit"]["refused"] == 1
        assert rules_doc["offline_exposure_cap"]["headroom"] == 30000 - 430
    finally:
        agent.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_ledger_endpoint_counts_what_it_stored_and_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=1, direct=True)
    lab.ledger.stop()  # replaced by a ledger process on the same database
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[gateways]\n"gw-t" = "{KEY.hex()}"\n')
    port = _free_port()
    ledger = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db",
                               f"sqlite:///{tmp_path / 'ledger.db'}", "--broker",
                               lab.broker.url, "--keys", str(keys), "--log-level", "WARNING",
                               "--metrics", f"127.0.0.1:{port}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert ledger.stdout is not None
        lines = [ledger.stdout.readline() for _ in range(2)]  # metrics, then serving
        assert lines[0].startswith("ledger: metrics on") and "serving" in lines[1], lines
        lab.start_agent()
        lab.emit(40)
        assert wait_for(lambda: lab.ledger_count() >= 40, 30)
        # A forged batch on the gateway's topic: rejected for its signature, never stored.
        import paho.mqtt.publish as publish
        publish.single("midshift/v1/lab/gw-t/events", b"\x00garbage", qos=1,
                       hostname="127.0.0.1", port=lab.broker.port)
        assert wait_for(lambda: sum(v for k, v in scrape(port).items()
                                    if k[0] == "midshift_ledger_rejections_total") >= 1, 15)
        m = scrape(port)
        stored = lab.store.count("gw-t")  # the 40 events and the agent's link incident
        assert stored == 41 and value(m, "midshift_ledger_events_total") == stored
        assert value(m, "midshift_ledger_events_by_gateway_total", gateway="gw-t") == stored
        assert value(m, "midshift_ledger_batches_total") >= 1
        assert value(m, "midshift_ledger_broker_connected") == 1
        rejected = {dict(k[1])["reason"]: v for k, v in m.items()
                    if k[0] == "midshift_ledger_rejections_total"}
        assert sum(rejected.values()) == 1, rejected
    finally:
        lab.close()
        ledger.terminate()
        ledger.wait(15)


def test_a_bad_metrics_bind_is_one_clear_line(tmp_path: Path) -> None:
    site, _ = write_till_site(tmp_path, ["till-1"])
    with site.open("a") as f:
        f.write('[metrics]\nbind = "9108"\n')
    with pytest.raises(ConfigError) as err:
        load_checked(site)
    assert str(err.value) == (f"{site}: metrics.bind: '9108' is not HOST:PORT; allowed: "
                              'HOST:PORT, e.g. "127.0.0.1:9108" or "[::1]:9108" (port 0 to '
                              "65535)")
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[gateways]\n"gw-t" = "{KEY.hex()}"\n')
    out = subprocess.run([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db",
                          f"sqlite:///{tmp_path / 'x.db'}", "--broker", "mqtt://127.0.0.1:1",
                          "--keys", str(keys), "--metrics", "localhost"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("ledger: --metrics: 'localhost' is not HOST:PORT; expected "
                                  'HOST:PORT, e.g. "127.0.0.1:9108" or "[::1]:9108" (port 0 '
                                  "to 65535)")


def test_a_taken_metrics_port_stops_the_start_before_anything_runs(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site, _ = write_till_site(tmp_path, ["till-1"])
        with site.open("a") as f:
            f.write(f'[metrics]\nbind = "127.0.0.1:{port}"\n')
        agent = Agent(load_checked(site))
        with pytest.raises(ConfigError) as err:
            agent.start()
        assert str(err.value).startswith(f"metrics.bind: cannot listen on 127.0.0.1:{port}: ")
        assert agent.journal is None and agent.tills is None  # nothing was started
