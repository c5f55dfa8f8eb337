"""The site directory on the provisioning host: where every file lives, and the site
registry (``site.json``) that records the policy and each gateway's certificates.

Layout (docs/provisioning.md)::

    SITE_DIR/site.json             registry: site name, policy, gateways, certificate serials
    SITE_DIR/audit.log, audit.head the hash-chained audit log (midshift/host_tools/audit_log.py)
    SITE_DIR/ca/ca.crt  ca.key*    the site CA (EC P-256); ca/crl.pem the CRL mosquitto reads
    SITE_DIR/ledger/keys.toml*     the ledger's key registry: [gateways] GW = "hex"
    SITE_DIR/ledger/ledger.crt ledger.key*  the ledger's TLS client identity (CN LEDGER_CN)
    SITE_DIR/broker/acl, midshift.conf, server.crt, server.key*
    SITE_DIR/gateways/GW/gateway.crt gateway.key* batch.key* command.key*  (* = 0600)

``command.key`` is the gateway's own key for downlink commands (``midshift/firmware/core/
commands.py``): one per gateway, so a key taken from one gateway commands no other.

Every command takes an exclusive lock on ``SITE_DIR/.lock`` for its whole run, so two
operators (or two terminals) cannot interleave registry writes.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
NAME_RULE = "1 to 32 letters, digits, '_' or '-'"  # as midshift/firmware/core/site_config.py checks
# The ledger's certificate CN, its broker username: the '.' keeps it apart from every
# gateway id NAME_RULE allows, so no gateway can be provisioned into the ledger's grants.
LEDGER_CN = "midshift.ledger"

# Defaults, reasoned against NIST SP 800-57 Part 1 Rev. 5, section 5.3.6 (cryptoperiods);
# docs/provisioning.md has the long form.
DEFAULT_POLICY = {
    "cert_days": 730,     # private authentication key: cryptoperiod 1 to 2 years
    "rotate_days": 365,   # rotate at half of that: a gateway offline for months still has slack
    "overlap_days": 14,   # old certificate keeps working this long after a rotation
    "ca_days": 1826,      # CA signs for 3 years (signature key: 1 to 3 years) + 2 years so
                          # the last certificates it signs can live out their validity
    "crl_days": 30,       # mosquitto refuses everyone once the CRL's nextUpdate passes
}


class ProvisionError(ValueError):
    """Bad input or a state that forbids the action; the message says what to do."""


def check_name(value: str, what: str) -> str:
    if not value or len(value) > 32 or not set(value) <= NAME_CHARS:
        raise ProvisionError(f"{what} {value!r}: expected {NAME_RULE}")
    return value


class Site:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.registry_path = self.dir / "site.json"
        self.ca_cert = self.dir / "ca" / "ca.crt"
        self.ca_key = self.dir / "ca" / "ca.key"
        self.crl = self.dir / "ca" / "crl.pem"
        self.ledger_keys = self.dir / "ledger" / "keys.toml"
        self.ledger_cert = self.dir / "ledger" / "ledger.crt"
        self.ledger_key = self.dir / "ledger" / "ledger.key"
        self.broker_dir = self.dir / "broker"
        self.acl = self.broker_dir / "acl"
        self.audit_log = self.dir / "audit.log"
        self.doc: dict[str, Any] = {}
        self._lock_fd: int | None = None

    # ---- lock and registry ------------------------------------------------------------

    def lock(self, create: bool = False) -> Site:
        """Take the site lock; only ``init-site`` (``create``) makes the directory."""
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        elif not self.dir.is_dir():
            raise ProvisionError(f"{self.dir} does not exist; run `python -m midshift.host_tools "
                                 "provision init-site SITE` first, or pass --site-dir")
        self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> Site:
        return self.lock()

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    @property
    def exists(self) -> bool:
        return self.registry_path.exists()

    def load(self) -> Site:
        if not self.exists:
            raise ProvisionError(f"{self.dir} is not a site directory (no site.json); run "
                                 "`python -m midshift.host_tools provision init-site SITE` first, or "
                                 "pass --site-dir")
        try:
            self.doc = json.loads(self.registry_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ProvisionError(f"{self.registry_path}: not valid JSON ({exc})") from None
        return self

    def save(self) -> None:
        tmp = self.registry_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.registry_path)

    @property
    def name(self) -> str:
        return str(self.doc["site"])

    @property
    def policy(self) -> dict[str, int]:
        return {**DEFAULT_POLICY, **self.doc.get("policy", {})}

    @property
    def gateways(self) -> dict[str, dict[str, Any]]:
        return self.doc.setdefault("gateways", {})

    def gateway(self, gw: str) -> dict[str, Any]:
        entry = self.gateways.get(gw)
        if entry is None:
            known = ", ".join(sorted(self.gateways)) or "none yet"
            raise ProvisionError(f"gateway {gw} is not provisioned at site {self.name} "
                                 f"(provisioned: {known})")
        return entry

    def gateway_dir(self, gw: str) -> Path:
        return self.dir / "gateways" / gw

    def command_key(self, gw: str) -> Path:
        """The gateway's command-signing key (hex), apart from its batch key."""
        return self.gateway_dir(gw) / "command.key"
