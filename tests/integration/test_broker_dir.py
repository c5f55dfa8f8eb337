"""``provision broker --out DIR --owner mosquitto``: Debian's mosquitto starts from that
directory as docs/provisioning.md says (Debian's own mosquitto.conf, whose ``include_dir``
holds a link to DIR/midshift.conf; started as root it drops to user ``mosquitto``), with no
CA key in DIR; a gateway connects over TLS with its certificate and publishes its status,
which an anonymous client reads on the plain loopback port (``--port``). Provisioning
another gateway refreshes DIR's ACL, keeping its owner. Bad ``--out`` and ``--owner`` are
one-line refusals."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from midshift.firmware.core import topics
from midshift.host_tools.__main__ import main as host_tools
from midshift.simulator.broker import find_mosquitto, free_port
from midshift.simulator.lab import wait_for
from tests.integration.provisioned import provisioned_site
from tests.integration.test_provision_broker import Peer

MOSQUITTO = find_mosquitto()
pytestmark = pytest.mark.skipif(MOSQUITTO is None or os.geteuid() != 0,
                                reason="needs mosquitto and root (to drop to its user)")
# Debian's /etc/mosquitto/mosquitto.conf (mosquitto 2.0.11-1.2+deb12u1), used when the
# machine's own is missing.
DEBIAN_CONF = """pid_file /run/mosquitto/mosquitto.pid
persistence true
persistence_location /var/lib/mosquitto/
log_dest file /var/log/mosquitto/mosquitto.log
include_dir /etc/mosquitto/conf.d
"""


def _accepts(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _debian_conf(conf_d: Path) -> str:
    """Debian's main config, pointed at a test conf.d and kept off the system's pid file,
    persistence and log (the rest, including no ``user`` line, unchanged)."""
    path = Path("/etc/mosquitto/mosquitto.conf")
    text = path.read_text() if path.exists() else DEBIAN_CONF
    text = re.sub(r"(?m)^include_dir .*$", f"include_dir {conf_d}", text)
    text = re.sub(r"(?m)^(pid_file|persistence_location) .*$", "", text)
    text = re.sub(r"(?m)^persistence true$", "persistence false", text)
    return re.sub(r"(?m)^log_dest .*$", "log_dest stderr", text)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("broker-dir")
    site = provisioned_site(tmp / "site", ["init-site", "plant1"],
                            ["gateway", "gw-01", "--board", "sim"])
    etc = Path(tempfile.mkdtemp(prefix="midshift-mosquitto-", dir="/var/tmp"))
    etc.chmod(0o755)  # stands for /etc/mosquitto
    out = etc / "midshift"
    tls_port, ledger_port, plain_port = free_port(), free_port(), free_port()
    assert host_tools(["provision", "--site-dir", str(site), "broker", "--host", "127.0.0.1",
                       "--tls-port", str(tls_port), "--ledger-port", str(ledger_port),
                       "--port", str(plain_port), "--out", str(out),
                       "--owner", "mosquitto"]) == 0
    conf_d = etc / "conf.d"
    conf_d.mkdir()
    (conf_d / "midshift.conf").symlink_to(out / "midshift.conf")   # as the docs say
    (etc / "mosquitto.conf").write_text(_debian_conf(conf_d))
    log = open(tmp / "mosquitto.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(MOSQUITTO), "-c", str(etc / "mosquitto.conf")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        up = wait_for(lambda: all(_accepts(p) for p in (tls_port, ledger_port, plain_port)),
                      10)
        assert up, (tmp / "mosquitto.log").read_text()
        yield {"site": site, "out": out, "tls_port": tls_port, "plain_port": plain_port,
               "pid": proc.pid, "log": tmp / "mosquitto.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()
        shutil.rmtree(etc, ignore_errors=True)


def test_the_directory_holds_the_broker_files_only_owned_by_its_user(
        lab: dict[str, Any]) -> None:
    out, site = lab["out"], lab["site"]
    names = {p.name for p in out.iterdir()}
    assert names == {"midshift.conf", "ca.crt", "crl.pem", "acl", "server.crt", "server.key"}
    uid = pwd.getpwnam("mosquitto").pw_uid
    assert all(p.stat().st_uid == uid for p in (out, *out.iterdir()))
    assert (out / "server.key").stat().st_mode & 0o777 == 0o600
    assert out.stat().st_mode & 0o777 == 0o750
    conf = (out / "midshift.conf").read_text()
    assert str(site) not in conf and "ca.key" not in conf


def test_mosquitto_runs_as_its_own_user(lab: dict[str, Any]) -> None:
    status = Path(f"/proc/{lab['pid']}/status").read_text()
    uid = int(re.search(r"(?m)^Uid:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    assert uid == pwd.getpwnam("mosquitto").pw_uid


def test_a_gateway_publishes_over_tls_and_the_plain_port_reads_the_status(
        lab: dict[str, Any]) -> None:
    g = lab["site"] / "gateways/gw-01"
    gw = Peer(lab["tls_port"], lab["out"] / "ca.crt", g / "gateway.crt", g / "gateway.key",
              "gw-01-eth-test").start()
    reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-reader")
    got = threading.Event()
    payloads: list[bytes] = []
    reader.on_message = lambda c, u, m: (payloads.append(m.payload), got.set())
    try:
        assert gw.outcome() == "connected", lab["log"].read_text()[-2000:]
        info = gw.client.publish(topics.topic("plant1", "gw-01", topics.STATUS), b'{"ok":1}',
                                 qos=1, retain=True)
        info.wait_for_publish(10)
        reader.connect("127.0.0.1", lab["plain_port"], keepalive=5)  # no TLS, anonymous
        reader.subscribe(topics.every(topics.STATUS), qos=1)
        reader.loop_start()
        assert got.wait(10), lab["log"].read_text()[-2000:]
        assert payloads == [b'{"ok":1}']
    finally:
        gw.close()
        reader.disconnect()
        reader.loop_stop()


def test_provisioning_another_gateway_refreshes_the_acl_in_place(
        lab: dict[str, Any]) -> None:
    assert host_tools(["provision", "--site-dir", str(lab["site"]), "gateway", "gw-02",
                       "--board", "sim"]) == 0
    acl = lab["out"] / "acl"
    assert "user gw-02" in acl.read_text()
    assert acl.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid


@pytest.mark.parametrize("argv, says", [
    (["--out", "{site}/broker-out"], "inside the site directory"),
    (["--out", "{tmp}/b", "--owner", "no-such-user-here"], "no such user"),
    (["--owner", "mosquitto"], "go with --out DIR"),
    (["--out", "{tmp}/b", "--conf-dir", "relative/dir"], "expected an absolute path"),
])
def test_bad_out_or_owner_is_one_line(lab: dict[str, Any], tmp_path: Path, argv: list[str],
                                      says: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(site=lab["site"], tmp=tmp_path) for a in argv]
    assert host_tools(["provision", "--site-dir", str(lab["site"]), "broker", "--host",
                       "127.0.0.1", "--force", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
