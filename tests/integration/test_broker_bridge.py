"""Two brokers bridged (a site broker and a cloud broker, mosquitto's bridge), one ledger.

Gateways on the site broker and gateways on the cloud broker feed ledger workers that
subscribe on the cloud broker only; acks travel back over the bridge. Then every batch
is sent again through the *other* broker, as a gateway failing over between its two
uplinks without having seen the acks would: the ledger stores nothing twice and counts
the repeats as duplicates.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.simulator.broker import Broker
from midshift.simulator.fleet import Fleet
from midshift.simulator.lab import wait_for
from midshift.simulator.postgres import ThrowawayPostgres


class Probe:
    """A plain MQTT client: publish here, count what arrives there."""

    def __init__(self, broker: Broker, subscribe: str | None = None) -> None:
        self.got = 0
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = lambda c, *a: (c.subscribe(subscribe, 1) if subscribe
                                                else self.ready.set())
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda *a: setattr(self, "got", self.got + 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bridge_carries(src: Broker, dst: Broker) -> bool:
    """Publish probes on ``src`` until one arrives on ``dst`` (bounded)."""
    sink, source = Probe(dst, "midshift/v1/probe/#"), Probe(src)
    try:
        return wait_for(lambda: source.client.publish("midshift/v1/probe/x/status", b"p",
                                                      qos=1) is not None and sink.got > 0, 15)
    finally:
        sink.close()
        source.close()


def test_events_through_either_bridged_broker_are_stored_once(pg: ThrowawayPostgres) -> None:
    url = pg.create_database("bridge")
    open_store(url, migrate=True).close()
    with Broker() as cloud, Broker(bridge_to=f"{'127.0.0.1'}:{cloud.port}") as site:
        cloud_port = cloud.port
        assert bridge_carries(site, cloud) and bridge_carries(cloud, site)
        fleets = [Fleet(site.url, gateways=20, backlog=500, batch_events=100, site="s",
                        prefix="site", ack_timeout_s=10),
                  Fleet(cloud.url, gateways=20, backlog=500, batch_events=100, site="c",
                        prefix="cloud", ack_timeout_s=10)]
        keys = {**fleets[0].keys(), **fleets[1].keys()}
        ledgers = [LedgerService(open_store(url), keys, cloud.url, shared_group="ledger",
                                 client_id=f"w{i}").start() for i in range(2)]
        try:
            results: list[dict] = []
            threads = [threading.Thread(target=lambda f=f: results.append(f.prepare().run(60)))
                       for f in fleets]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            assert len(results) == 2 and all(r["drained"] for r in results), results
            assert all(r["resends"] == 0 for r in results)  # acks crossed the bridge in time
            # every batch again, through the other broker
            for fleet, other in ((fleets[0], cloud), (fleets[1], site)):
                probe = Probe(other)
                sent = [probe.client.publish(f"midshift/v1/{fleet.site}/{gw}/events", data,
                                             qos=1) for gw, data in fleet.backlog_batches]
                for info in sent:
                    info.wait_for_publish(10)
                probe.close()
            with open_store(url) as store:
                assert wait_for(lambda: sum(
                    n for _, n in store.duplicates_by_epoch().items()) == 20_000, 30)
                want = sorted((gw, epoch, seq) for f in fleets
                              for gw, (epoch, last) in f.expected().items()
                              for seq in range(1, last + 1))
                assert store.keys() == want
        finally:
            for ledger in ledgers:
                ledger.stop()
                ledger.store.close()
    assert cloud_port
