"""X.509 for a site: the site CA (EC P-256), gateway client certificates, the broker's
server certificate, certificate requests from gateways, and the CRL.

Everything is built with ``cryptography``; nothing here touches the disk. Certificates
carry the gateway id as their common name: mosquitto's ``use_identity_as_username`` makes
that the MQTT username, which the ACL then confines to the gateway's own topics.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey
CURVE = ec.SECP256R1  # P-256: 128-bit security (SP 800-57 Pt 1 Table 2), fast on a Pi


class CsrRejected(ValueError):
    """A certificate request we will not sign; the message says why."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> PrivateKey:
    return ec.generate_private_key(CURVE())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _name(cn: str, site: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"midshift site {site}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(site: str, key: PrivateKey, days: int) -> x509.Certificate:
    now = utcnow()
    name = _name(f"midshift {site} site CA", site)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))


def _leaf(cn: str, site: str, public_key: ec.EllipticCurvePublicKey, ca_cert: x509.Certificate,
          ca_key: PrivateKey, days: int, usage: x509.ObjectIdentifier,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = utcnow()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn, site))
         .issuer_name(ca_cert.subject).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))  # gateway clocks run early
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=False, crl_sign=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             ca_key.public_key()), False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def gateway_cert(gateway: str, site: str, public_key: ec.EllipticCurvePublicKey,
                 ca_cert: x509.Certificate, ca_key: PrivateKey, days: int) -> x509.Certificate:
    """A TLS client certificate whose CN is the gateway id (the broker's username)."""
    return _leaf(gateway, site, public_key, ca_cert, ca_key, days, ExtendedKeyUsageOID.CLIENT_AUTH)


def ledger_cert(cn: str, site: str, public_key: ec.EllipticCurvePublicKey,
                ca_cert: x509.Certificate, ca_key: PrivateKey, days: int) -> x509.Certificate:
    """The ledger's TLS client certificate: CN ``cn`` is its broker username, which the
    ACL lets read batches and write acks and commands."""
    return _leaf(cn, site, public_key, ca_cert, ca_key, days, ExtendedKeyUsageOID.CLIENT_AUTH)


def server_cert(hosts: Iterable[str], site: str, public_key: ec.EllipticCurvePublicKey,
                ca_cert: x509.Certificate, ca_key: PrivateKey, days: int) -> x509.Certificate:
    """The broker's TLS server certificate; gateways check its name against the URL."""
    hosts = list(hosts)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return _leaf(hosts[0], site, public_key, ca_cert, ca_key, days,
                 ExtendedKeyUsageOID.SERVER_AUTH, sans)


def check_csr(pem: bytes, gateway: str) -> ec.EllipticCurvePublicKey:
    """The public key of a gateway's request, once it proves fit to sign."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise CsrRejected("not a PEM certificate request") from None
    if not csr.is_signature_valid:
        raise CsrRejected("its signature does not verify (corrupted, or not made with the key "
                          "it carries)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [gateway]:
        got = ", ".join(str(a.value) for a in cns) or "none"
        raise CsrRejected(f"its common name is {got}, expected {gateway}")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
            "secp256r1", "secp384r1"):
        raise CsrRejected("its key is not EC P-256 or P-384")
    return key


def make_crl(ca_cert: x509.Certificate, ca_key: PrivateKey,
             revoked: Iterable[tuple[int, datetime.datetime]], days: int) -> x509.CertificateRevocationList:
    """A CRL listing ``(serial, revoked_at)``; valid ``days`` (mosquitto refuses every
    client once nextUpdate has passed, so it must be re-issued before then)."""
    now = utcnow()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(now - datetime.timedelta(minutes=5))
         .next_update(now + datetime.timedelta(days=days)))
    for serial, when in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(when).build())
    return b.sign(ca_key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
