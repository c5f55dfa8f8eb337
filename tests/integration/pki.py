"""A throwaway PKI for TLS tests: a site CA, a server certificate for 127.0.0.1, gateway
client certificates, and a second, untrusted CA. (Provisioning for real sites is
``python -m midshift.host_tools provision``.)"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool, usage: x509.ObjectIdentifier | None,
          ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), False))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)  # type: ignore[list-item]
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(d: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = d / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


def make_pki(d: Path, gateway: str = "gw1") -> Path:
    """A throwaway site CA, a server cert for 127.0.0.1, gateway gw1's client cert, and a
    client cert from a second, untrusted CA."""
    for ca_name, leaves in (("ca", [("server", "localhost", ExtendedKeyUsageOID.SERVER_AUTH),
                                    (gateway, gateway, ExtendedKeyUsageOID.CLIENT_AUTH)]),
                            ("rogue-ca", [("rogue", gateway, ExtendedKeyUsageOID.CLIENT_AUTH)])):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"midshift {ca_name}")])
        ca_cert = _cert(f"midshift {ca_name}", ca_key, ca_subject, ca_key, True, None)
        _write(d, ca_name, ca_cert, ca_key)
        for name, cn, usage in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(d, name, _cert(cn, key, ca_subject, ca_key, False, usage), key)
    return d


