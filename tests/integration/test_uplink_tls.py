"""An uplink over TLS 1.2+ with a client certificate, against mosquitto requiring one."""

from __future__ import annotations

import json
from pathlib import Path

from midshift.firmware.agent import Agent
from midshift.firmware.core.event import Event
from midshift.firmware.core.site_config import DeviceType, validate
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.simulator.broker import Broker, TlsListener
from midshift.simulator.lab import KEY, wait_for
from tests.integration.pki import make_pki


def _agent(tmp: Path, port: int, cert: str, key: str, pki: Path) -> Agent:
    tmp.mkdir()
    (tmp / "gw.key").write_text(KEY.hex())
    doc = {
        "gateway": {"id": "gw-t", "site": "lab", "key_file": str(tmp / "gw.key")},
        "board": {"name": "test"},
        "journal": {"path": str(tmp / "journal"), "segment_size": 65536, "segment_count": 8},
        "devices": {"dev1": {"type": "scanner", "enabled": False}},
        "uplinks": {"tls": {"broker": f"mqtts://127.0.0.1:{port}", "ca": str(pki / "ca.crt"),
                            "cert": cert, "key": key}},
    }
    return Agent(validate(doc, {"scanner": DeviceType("txn", lambda n, t, p: t)}))


def test_tls_uplink_with_client_certificate_delivers_and_a_rogue_one_cannot(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki", gateway="gw-t")
    tls = TlsListener(pki / "ca.crt", pki / "server.crt", pki / "server.key",
                      require_certificate=True, use_identity_as_username=True)
    with Broker(tmp_path / "broker", tls=tls) as broker:
        store = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger = LedgerService(store, {"gw-t": KEY}, broker.url).start()
        good = _agent(tmp_path / "good", broker.tls_port, str(pki / "gw-t.crt"),
                      str(pki / "gw-t.key"), pki).start()
        try:
            assert wait_for(lambda: good.forwarding.active == "tls", 10)
            good.emit(Event("dev1", "scan", 1_700_000_000_000, {"code": "TLS1"}))
            assert wait_for(lambda: store.count("gw-t") == 2, 10)  # the scan and "online"
            rows = store.query("SELECT source, data FROM event_fields ORDER BY seq")
            assert [(src, json.loads(d).get("code", d)) for src, d in rows][1] == \
                ("dev1", "TLS1")
            assert rows[0][0] == "agent" and json.loads(rows[0][1])["state"] == "online"
        finally:
            good.stop()
        rogue = _agent(tmp_path / "rogue", broker.tls_port, str(pki / "rogue.crt"),
                       str(pki / "rogue.key"), pki).start()
        try:
            assert not wait_for(lambda: rogue.forwarding.active is not None, 3)
        finally:
            rogue.stop()
            ledger.stop()
            store.close()
