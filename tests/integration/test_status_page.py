"""The status page of a real ``python -m midshift.firmware run``: a store gateway with the till API,
a scanner on a pty that scans, one whose port is not there, an uplink to mosquitto and the
ledger and one to a closed port. The page is bound beyond loopback with a token: fetched
over HTTP without it (401), with it (Basic, as a browser sends it, and Bearer), and
rendered in headless Chromium (the DOM, and a screenshot that is not blank). Everything it
says is checked against the agent's own status, which the page is made from."""

from __future__ import annotations

import base64
import os
import re
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.till_site import sale, write_till_site
from midshift.firmware.agent import Agent
from midshift.firmware.core.site_config import DeviceType, validate
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.simulator.broker import Broker, free_port
from midshift.simulator.devices.scanner import BarcodeScanner
from midshift.simulator.lab import KEY, wait_for
from tests.integration.pki import make_pki
from tests.integration.till_client import TillClient
from tests.scenarios.test_report_in_chromium import CHROMIUM_FLAGS, _chromium, _png_rows_vary

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "staff-7f3a9c2e51d04b68"


def fetch(port: int, auth: str | None = None, method: str = "GET",
          path: str = "/") -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()
    except OSError:  # not listening (yet)
        return 0, {}, ""


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"staff:{token}".encode()).decode()


@pytest.fixture
def store_gateway(tmp_path: Path) -> Iterator[dict[str, Any]]:
    broker = Broker(tmp_path / "broker").start()
    store = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = LedgerService(store, {"gw-t": KEY}, broker.url).start()
    scanner = BarcodeScanner("scan1", tmp_path / "scanner-pty").start()
    closed, till_port = free_port(), free_port()
    site, tokens = write_till_site(tmp_path / "gw", ["till-1"], port=till_port,
                                   uplink_ports=(broker.port, closed),
                                   rules={"offline_tenders": ["cash", "card"],
                                          "card_floor_limit": 5000, "max_queue": 200,
                                          "offline_exposure_cap": 30000})
    port = free_port()
    (tmp_path / "page.token").write_text(TOKEN + "\n")
    with site.open("a") as f:
        f.write(f"""[status]
period_s = 0.5
device_down_s = 1
[status_page]
bind = "0.0.0.0:{port}"
token_file = "{tmp_path / 'page.token'}"
[devices.scan1]
type = "scanner"
port = "{tmp_path / 'scanner-pty'}"
[devices.scan2]
type = "scanner"
port = "{tmp_path / 'no-such-tty'}"
""")
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config", str(site)],
                            cwd=ROOT, stdout=log, stderr=log,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        up = lambda: fetch(port, basic(TOKEN))[0] == 200  # noqa: E731
        assert wait_for(lambda: proc.poll() is not None or up(), 30)
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        yield {"port": port, "proc": proc, "scanner": scanner, "tills": tokens,
               "till_port": till_port, "tmp": tmp_path}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
        scanner.stop()
        ledger.stop()
        store.close()
        broker.stop()


def test_the_page_needs_the_token_beyond_loopback_and_tells_the_state(
        store_gateway: dict[str, Any]) -> None:
    g, port = store_gateway, store_gateway["port"]
    for auth in (None, basic("wrong-token-0000000"), "Bearer nope", "Basic !!!"):
        status, headers, body = fetch(port, auth)
        assert status == 401 and "Online" not in body
        assert headers["WWW-Authenticate"].startswith('Basic realm="midshift gateway status"')
    assert fetch(port, f"Bearer {TOKEN}")[0] == 200
    assert fetch(port, basic(TOKEN), "POST")[0] == 405
    assert fetch(port, basic(TOKEN), path="/status.json")[0] == 404

    headers = fetch(port, basic(TOKEN))[1]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert g["scanner"].wait_client(20)
    g["scanner"].scan()  # the page shows when the last reading came, not what it was
    assert wait_for(lambda: "none yet" not in _row(fetch(port, basic(TOKEN))[2], "scan1"), 15)
    assert wait_for(lambda: 'data-alarm="device_down"' in fetch(port, basic(TOKEN))[2], 15)
    text = fetch(port, basic(TOKEN))[2]
    assert re.search(r'id="state">Online since \d\d:\d\d:\d\d, 1 problem below<', text), text[:2000]
    assert '<meta http-equiv="refresh" content="10">' in text and "<script" not in text
    assert "Connected, in use" in _row(text, "up0") and "Not connected" in _row(text, "up1")
    assert "Working" in _row(text, "scan1") and "barcode scanner" in _row(text, "scan1")
    assert "Not connected, needs attention" in _row(text, "scan2")
    assert "A device has stopped answering." in text and ">scan2</div>" in text
    assert "Selling online" in text and "Largest card payment while offline" in text
    assert "(Europe/Berlin)" in text  # the store's zone, [store] tz


def _row(text: str, first_cell: str) -> str:
    found = re.search(rf"<tr><td>{re.escape(first_cell)}</td>.*?</tr>", text)
    return found.group(0) if found else ""


def test_the_page_renders_in_headless_chromium(store_gateway: dict[str, Any],
                                               tmp_path: Path) -> None:
    g, port = store_gateway, store_gateway["port"]
    till = TillClient(g["till_port"], g["tills"]["till-1"])
    assert till.post(sale("till-1", 1), "k-1")[0] == 201
    assert g["scanner"].wait_client(20)
    g["scanner"].scan()
    assert wait_for(lambda: 'data-alarm="device_down"' in fetch(port, basic(TOKEN))[2], 15)
    url = f"http://staff:{TOKEN}@127.0.0.1:{port}/"  # a browser's Basic credentials
    common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    assert "Gateway gw-t" in dom and "store store-7" in dom and "Online since" in dom
    # uplinks, waiting, devices, sell rules, prices and stock from head office
    assert dom.count("<table>") == 5 and 'id="refdata"' in dom
    assert "Sales not yet at head office" in dom
    shot = Path(os.environ.get("MIDSHIFT_SHOT_DIR", tmp_path)) / "status-page.png"
    subprocess.run([*common, "--window-size=1000,1400", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert _png_rows_vary(shot.read_bytes()) > 200


def test_beyond_loopback_without_a_token_the_agent_refuses_to_start(tmp_path: Path) -> None:
    site, _ = write_till_site(tmp_path, ["till-1"])
    with site.open("a") as f:
        f.write('[status_page]\nbind = "0.0.0.0:8080"\n')
    done = subprocess.run([sys.executable, "-m", "midshift.firmware", "run", "--config", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"config error: {site}: status_page.bind: '0.0.0.0:8080' "
                                  "is beyond loopback with no token_file or client_ca")


def test_client_certificates_stand_in_for_the_token(tmp_path: Path) -> None:
    """HTTPS with ``client_ca``: a browser with a certificate the staff CA signed reads the
    page, one without a certificate or with another CA's does not get past the handshake."""
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "gw.key").write_text(KEY.hex())
    doc = {"gateway": {"id": "gw-c", "site": "lab", "key_file": str(tmp_path / "gw.key")},
           "board": {"name": "test"},
           "journal": {"path": str(tmp_path / "journal"), "segment_size": 65536,
                       "segment_count": 8},
           "devices": {"dev1": {"type": "scanner", "enabled": False}},
           "status_page": {"bind": "0.0.0.0:0", "tls_cert": str(pki / "server.crt"),
                           "tls_key": str(pki / "server.key"), "client_ca": str(pki / "ca.crt")}}
    agent = Agent(validate(doc, {"scanner": DeviceType("txn", lambda n, t, p: t)})).start()
    try:
        url = f"https://localhost:{agent.page.port}/"

        def get(cert: str | None) -> int:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            if cert:
                ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
            try:
                with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
                    return int(resp.status)
            except (ssl.SSLError, urllib.error.URLError, ConnectionError):
                return 0

        assert get("gw1") == 200
        assert get(None) == 0 and get("rogue") == 0
    finally:
        agent.stop()


def test_check_finds_a_short_or_missing_token_as_run_would(tmp_path: Path) -> None:
    site, _ = write_till_site(tmp_path, ["till-1"])
    (tmp_path / "short.token").write_text("abc\n")
    base = site.read_text()
    for token, problem in (("short.token", "short.token: a token of 3 characters is too "
                            "short"), ("gone.token", "does not exist")):
        site.write_text(base + f'[status_page]\nbind = "0.0.0.0:8080"\ntoken_file = "{token}"\n')
        done = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--config", str(site)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=os.environ | {"PYTHONPATH": str(ROOT)})
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "status_page.token_file" in done.stderr and problem in done.stderr
