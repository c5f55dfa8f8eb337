"""``python -m midshift.host_tools provision`` on disk: file modes, refusals, CSR signing,
rotation with its overlap window, revocation, and that no secret reaches the output or
the audit log. (The broker-facing half is test_provision_broker.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from midshift.host_tools.__main__ import main as host_tools
from tests.integration.provisioned import provisioned_site

ROOT = Path(__file__).resolve().parents[2]


def run(site: Path, *argv: str) -> int:
    return host_tools(["provision", "--site-dir", str(site), *argv])


def crl_serials(site: Path) -> set[int]:
    crl = x509.load_pem_x509_crl((site / "ca/crl.pem").read_bytes())
    return {r.serial_number for r in crl}


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    return provisioned_site(tmp_path / "site", ["init-site", "plant1"],
                            ["gateway", "gw-01", "--board", "sim"])


def test_private_keys_are_0600_and_certificates_chain_to_the_site_ca(site: Path) -> None:
    for key in ("ca/ca.key", "ledger/keys.toml", "ledger/ledger.key",
                "gateways/gw-01/gateway.key", "gateways/gw-01/batch.key",
                "gateways/gw-01/command.key"):
        assert (site / key).stat().st_mode & 0o777 == 0o600, key
    ca, gw = cert(site / "ca/ca.crt"), cert(site / "gateways/gw-01/gateway.crt")
    gw.verify_directly_issued_by(ca)
    assert gw.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-01"
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    days = (gw.not_valid_after_utc - gw.not_valid_before_utc).days
    assert 729 <= days <= 731  # the documented default


def test_overwriting_a_key_is_refused_without_force(site: Path, capsys: pytest.CaptureFixture[str],
                                                    ) -> None:
    ca_key = (site / "ca/ca.key").read_bytes()
    gw_key = (site / "gateways/gw-01/gateway.key").read_bytes()
    assert run(site, "init-site", "plant1") == 2
    assert run(site, "gateway", "gw-01", "--board", "sim") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("provision: ") for line in err)
    assert (site / "ca/ca.key").read_bytes() == ca_key
    assert (site / "gateways/gw-01/gateway.key").read_bytes() == gw_key
    old_serial = cert(site / "gateways/gw-01/gateway.crt").serial_number
    assert run(site, "gateway", "gw-01", "--board", "sim", "--force") == 0
    assert (site / "gateways/gw-01/gateway.key").read_bytes() != gw_key
    assert old_serial in crl_serials(site)  # the replaced certificate cannot linger


def test_no_secret_is_printed_or_audited(tmp_path: Path) -> None:
    site = tmp_path / "site"
    out = ""
    for argv in (["init-site", "p1"], ["gateway", "gw-01", "--board", "sim"], ["rotate", "gw-01"],
                 ["broker", "--host", "127.0.0.1"], ["list"], ["revoke", "gw-01"]):
        p = subprocess.run([sys.executable, "-m", "midshift.host_tools", "provision", "--site-dir",
                            str(site), *argv], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        out += p.stdout + p.stderr
    out += (site / "audit.log").read_text()
    secrets = [(site / "gateways/gw-01/command.key").read_text().strip(),
               (site / "gateways/gw-01/batch.key").read_text().strip()]
    for pem in [site / "ca/ca.key", site / "broker/server.key", site / "ledger/ledger.key",
                *(site / "gateways/gw-01").rglob("*.key")]:
        if pem.name not in ("batch.key", "command.key"):
            secrets.append(pem.read_text().splitlines()[1])  # first base64 line of the key
    assert len(secrets) >= 5
    for s in secrets:
        assert s not in out


def test_a_csr_is_signed_and_the_private_key_never_leaves_the_device(site: Path,
                                                                     tmp_path: Path) -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-02")]))
           .sign(device_key, hashes.SHA256()))
    (tmp_path / "gw-02.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    assert run(site, "gateway", "gw-02", "--board", "sim", "--csr",
               str(tmp_path / "gw-02.csr")) == 0
    issued = cert(site / "gateways/gw-02/gateway.crt")
    assert issued.public_key() == device_key.public_key()
    assert not (site / "gateways/gw-02/gateway.key").exists()
    reg = json.loads((site / "site.json").read_text())
    assert reg["gateways"]["gw-02"]["certs"][0]["key_origin"] == "device"


@pytest.mark.parametrize("case, expect", [
    ("wrong-cn", "common name is gw-09, expected gw-02"),
    ("garbage", "not a PEM certificate request"),
])
def test_a_bad_csr_is_one_clear_line(site: Path, tmp_path: Path, case: str, expect: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-09")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (tmp_path / "r.csr").write_bytes(csr if case == "wrong-cn" else b"hello")
    assert run(site, "gateway", "gw-02", "--board", "sim", "--csr", str(tmp_path / "r.csr")) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err
    assert "gw-02" not in json.loads((site / "site.json").read_text())["gateways"]


def test_rotation_keeps_the_old_certificate_valid_for_the_overlap_then_lists_it(
        site: Path) -> None:
    old = cert(site / "gateways/gw-01/gateway.crt").serial_number
    assert run(site, "rotate", "gw-01") == 0
    new = cert(site / "gateways/gw-01/gateway.crt").serial_number
    assert new != old and old not in crl_serials(site)   # inside the overlap window
    assert (site / f"gateways/gw-01/retired/{old:x}.key").stat().st_mode & 0o777 == 0o600
    reg = json.loads((site / "site.json").read_text())
    reg["gateways"]["gw-01"]["certs"][0]["retire_at"] = "2000-01-01T00:00:00Z"  # overlap over
    (site / "site.json").write_text(json.dumps(reg))
    assert run(site, "crl") == 0
    assert old in crl_serials(site) and new not in crl_serials(site)


@pytest.mark.parametrize("argv, expect", [
    (["rotate", "gw-77"], "gateway gw-77 is not provisioned at site plant1"),
    (["gateway", "gw 1", "--board", "sim"], "gateway 'gw 1': expected 1 to 32 letters"),
    (["gateway", "gw-02", "--board", "vax"], "--board 'vax': not one of"),
    (["gateway", "gw-02", "--board", "sim", "--csr", "/nonexistent.csr"],
     "/nonexistent.csr: does not exist"),
])
def test_bad_input_is_exit_2_with_one_line(site: Path, argv: list[str], expect: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run(site, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err


def test_a_missing_site_directory_says_how_to_make_one(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path / "nowhere", "list") == 2
    assert "provision init-site SITE" in capsys.readouterr().err
