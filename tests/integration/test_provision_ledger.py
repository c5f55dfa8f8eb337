"""The ledger's identity from ``provision``: issued at ``init-site``, never a gateway's
name, renewed only with ``--force`` (the old certificate onto the CRL), and the broker
config and ACL that go with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from midshift.host_tools.__main__ import main as host_tools
from midshift.host_tools.provision.registry import LEDGER_CN, check_name
from tests.integration.provisioned import provisioned_site


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_the_ledger_certificate_is_issued_renewed_with_force_and_the_old_one_revoked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = provisioned_site(tmp_path / "site", ["init-site", "p1"],
                            ["gateway", "gw-01", "--board", "sim"])
    cert = x509.load_pem_x509_certificate((site / "ledger/ledger.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(
        (site / "ca/ca.crt").read_bytes()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == LEDGER_CN
    assert (site / "ledger/ledger.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        check_name(LEDGER_CN, "gateway")  # no gateway can be provisioned as the ledger
    old = _serial(site / "ledger/ledger.crt")
    assert host_tools(["provision", "--site-dir", str(site), "ledger"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert host_tools(["provision", "--site-dir", str(site), "ledger", "--force"]) == 0
    assert _serial(site / "ledger/ledger.crt") != old
    crl = x509.load_pem_x509_crl((site / "ca/crl.pem").read_bytes())
    assert old in {r.serial_number for r in crl}


def test_the_acl_gives_the_ledger_batches_acks_and_commands_and_anonymous_statuses_only(
        tmp_path: Path) -> None:
    site = provisioned_site(tmp_path / "site", ["init-site", "p1"],
                            ["gateway", "gw-01", "--board", "sim"],
                            ["broker", "--host", "127.0.0.1"])
    blocks = (site / "broker/acl").read_text().split("\n\n")
    anonymous = [line for line in blocks[0].splitlines() if not line.startswith("#")]
    assert anonymous == ["topic read midshift/v1/+/+/status"]
    assert blocks[1].splitlines() == [f"user {LEDGER_CN}",
                                      "topic read midshift/v1/+/+/events",
                                      "topic read midshift/v1/+/+/status",
                                      "topic write midshift/v1/+/+/ack",
                                      "topic write midshift/v1/+/+/cmd",
                                      "topic write midshift/v1/+/+/refdata/#",
                                      "topic write midshift/v1/ledger/feed/+/txn"]
    assert "topic read midshift/v1/p1/gw-01/refdata/#" in blocks[2].splitlines()
    conf = (site / "broker/midshift.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 1883" not in conf
    assert host_tools(["provision", "--site-dir", str(site), "broker", "--host", "127.0.0.1",
                       "--force", "--anonymous-port", "1883"]) == 0
    conf = (site / "broker/midshift.conf").read_text()
    assert "allow_anonymous true" in conf and "listener 1883 127.0.0.1" in conf
    assert host_tools(["provision", "--site-dir", str(site), "broker", "--host", "127.0.0.1",
                       "--force", "--ledger-port", "8883"]) == 2  # two listeners, one port
