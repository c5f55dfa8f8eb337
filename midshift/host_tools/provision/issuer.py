"""What the site CA does: set up a site, provision, rotate and revoke gateways, issue the
ledger's and the broker's certificates and the CRL. Each action writes its files (keys 0600, refusing to
overwrite one without ``force``), re-renders what derives from the registry (the ledger's
key registry, the broker ACL, the CRL), saves the registry and appends an audit line.

Callers hold the site lock (``with Site(dir) as site``). Nothing here prints; secrets
never appear in return values, the audit log or exceptions, only paths and serials.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from midshift.host_tools.audit_log import AuditLog
from midshift.host_tools.provision import broker_dir, ca
from midshift.host_tools.provision.acl import render_acl, render_broker_conf
from midshift.host_tools.provision.registry import (
    DEFAULT_POLICY,
    LEDGER_CN,
    ProvisionError,
    Site,
    check_name,
)
from midshift.host_tools.provision.secret_file import check_private, write_private, write_public

BOARD_DIR = Path(__file__).resolve().parents[2] / "board_configs"


def _iso(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def known_boards() -> list[str]:
    return sorted(p.stem for p in BOARD_DIR.glob("*.toml"))


def _ca(site: Site) -> tuple[Any, ca.PrivateKey]:
    check_private(site.ca_key)
    return ca.load_cert(site.ca_cert.read_bytes()), ca.load_key(site.ca_key.read_bytes())


def _cert_record(cert: Any, origin: str) -> dict[str, Any]:
    return {"serial": f"{cert.serial_number:x}", "not_before": _iso(cert.not_valid_before_utc),
            "not_after": _iso(cert.not_valid_after_utc), "state": "active",
            "key_origin": origin, "issued": _iso(ca.utcnow())}


def init_site(site: Site, name: str, policy: dict[str, int], force: bool = False) -> None:
    check_name(name, "site")
    if site.exists and not force:
        raise ProvisionError(f"{site.dir} already holds site (site.json); --force replaces "
                             "its CA, which invalidates every certificate it issued")
    pol = {**DEFAULT_POLICY, **policy}
    if pol["overlap_days"] >= pol["cert_days"]:
        raise ProvisionError("--overlap-days must be shorter than --cert-days")
    key = ca.new_key()
    cert = ca.make_ca(name, key, pol["ca_days"])
    write_private(site.ca_key, ca.key_pem(key), force)
    write_public(site.ca_cert, ca.cert_pem(cert))
    site.doc = {"version": 1, "site": name, "created": _iso(ca.utcnow()), "policy": pol,
                "ca": {"serial": f"{cert.serial_number:x}", "fingerprint": ca.fingerprint(cert),
                       "not_after": _iso(cert.not_valid_after_utc)}, "gateways": {}}
    _issue_ledger(site, force)
    _derive(site)
    site.save()
    AuditLog(site.audit_log).append("provision.init-site", name, {
        "ca_serial": f"{cert.serial_number:x}", "ca_not_after": _iso(cert.not_valid_after_utc),
        "policy": pol, "force": force})


def add_gateway(site: Site, gw: str, board: str, csr: bytes | None = None,
                days: int | None = None, force: bool = False) -> dict[str, Any]:
    check_name(gw, "gateway")
    if board not in known_boards():
        raise ProvisionError(f"--board {board!r}: not one of {', '.join(known_boards())} "
                             f"(files in {BOARD_DIR})")
    if gw in site.gateways and not force:
        state = "revoked" if site.gateways[gw].get("revoked") else "provisioned"
        raise ProvisionError(f"gateway {gw} is already {state}; `rotate {gw}` gives it a new "
                             "key, --force replaces everything (new batch key too)")
    gdir = site.gateway_dir(gw)
    public = _new_key(gdir, csr, gw, force)
    ca_cert, ca_key = _ca(site)
    cert = ca.gateway_cert(gw, site.name, public, ca_cert, ca_key,
                           days or site.policy["cert_days"])
    write_private(gdir / "batch.key", os.urandom(32).hex().encode() + b"\n", force)
    write_private(site.command_key(gw), os.urandom(32).hex().encode() + b"\n", force)
    write_public(gdir / "gateway.crt", ca.cert_pem(cert))
    origin = "device" if csr else "host"
    # Replaced (--force): every earlier certificate goes onto the CRL, or it would stay
    # valid, signed by our CA and listed nowhere.
    earlier = site.gateways.get(gw, {}).get("certs", [])
    for c in earlier:
        if c["state"] in ("active", "superseded"):
            c["state"], c["revoked_at"] = "revoked", _iso(ca.utcnow())
    site.gateways[gw] = {"board": board, "created": _iso(ca.utcnow()), "revoked": False,
                         "certs": earlier + [_cert_record(cert, origin)]}
    _derive(site)
    site.save()
    AuditLog(site.audit_log).append("provision.gateway", gw, {
        "board": board, "serial": f"{cert.serial_number:x}", "key_origin": origin,
        "not_after": _iso(cert.not_valid_after_utc), "force": force})
    return site.gateways[gw]


def _new_key(gdir: Path, csr: bytes | None, gw: str, force: bool) -> Any:
    """The public key to certify: from the request, or of a key made here (0600)."""
    if csr is not None:
        try:
            public = ca.check_csr(csr, gw)
        except ca.CsrRejected as exc:
            raise ProvisionError(f"certificate request: {exc}") from None
        if (gdir / "gateway.key").exists():  # a host-made key would shadow the device's
            (gdir / "gateway.key").unlink()
        return public
    key = ca.new_key()
    write_private(gdir / "gateway.key", ca.key_pem(key), force)
    return key.public_key()


def rotate(site: Site, gw: str, csr: bytes | None = None) -> dict[str, Any]:
    """A new key and certificate; the old certificate stays valid ``overlap_days`` (until
    the CRL issued after that lists it), so the gateway can be re-flashed meanwhile."""
    entry = site.gateway(gw)
    if entry.get("revoked"):
        raise ProvisionError(f"gateway {gw} is revoked; provision it again with --force")
    gdir = site.gateway_dir(gw)
    old = next(c for c in entry["certs"] if c["state"] == "active")
    retired = gdir / "retired"
    retired.mkdir(exist_ok=True)
    os.replace(gdir / "gateway.crt", retired / f"{old['serial']}.crt")
    if (gdir / "gateway.key").exists():
        os.replace(gdir / "gateway.key", retired / f"{old['serial']}.key")  # stays 0600
    public = _new_key(gdir, csr, gw, force=False)
    ca_cert, ca_key = _ca(site)
    cert = ca.gateway_cert(gw, site.name, public, ca_cert, ca_key, site.policy["cert_days"])
    write_public(gdir / "gateway.crt", ca.cert_pem(cert))
    until = ca.utcnow() + datetime.timedelta(days=site.policy["overlap_days"])
    old["state"], old["retire_at"] = "superseded", _iso(until)
    entry["certs"].append(_cert_record(cert, "device" if csr else "host"))
    _derive(site)
    site.save()
    AuditLog(site.audit_log).append("provision.rotate", gw, {
        "old_serial": old["serial"], "old_valid_until": old["retire_at"],
        "serial": f"{cert.serial_number:x}", "not_after": _iso(cert.not_valid_after_utc)})
    return entry


def revoke(site: Site, gw: str, reason: str = "") -> dict[str, Any]:
    """Every certificate of the gateway onto the CRL; its ACL block and ledger key go."""
    entry = site.gateway(gw)
    if entry.get("revoked"):
        raise ProvisionError(f"gateway {gw} is already revoked")
    now = _iso(ca.utcnow())
    serials = []
    for c in entry["certs"]:
        if c["state"] in ("active", "superseded"):
            c["state"], c["revoked_at"] = "revoked", now
            serials.append(c["serial"])
    entry["revoked"], entry["revoked_reason"] = True, reason
    _derive(site)
    site.save()
    AuditLog(site.audit_log).append("provision.revoke", gw, {"serials": serials,
                                                              "reason": reason})
    return entry


def reissue_crl(site: Site) -> int:
    """Re-sign the CRL (before ``crl_days`` run out); returns how many serials it lists."""
    n = _derive(site)
    site.save()
    AuditLog(site.audit_log).append("provision.crl", site.name, {"revoked": n})
    return n


def _issue_ledger(site: Site, force: bool) -> dict[str, str]:
    key = ca.new_key()
    ca_cert, ca_key = _ca(site)
    cert = ca.ledger_cert(LEDGER_CN, site.name, key.public_key(), ca_cert, ca_key,
                          site.policy["cert_days"])
    write_private(site.ledger_key, ca.key_pem(key), force)
    write_public(site.ledger_cert, ca.cert_pem(cert))
    site.doc["ledger"] = {"cn": LEDGER_CN, "serial": f"{cert.serial_number:x}",
                          "not_after": _iso(cert.not_valid_after_utc)}
    return site.doc["ledger"]


def issue_ledger(site: Site, force: bool = False) -> dict[str, str]:
    """The ledger's TLS client key and certificate (``init-site`` makes the first; this
    renews it, or gives one to a site made before the ledger had its own)."""
    old = site.doc.get("ledger")
    entry = _issue_ledger(site, force)
    if old:  # the replaced certificate goes onto the CRL, as a gateway's would
        site.doc.setdefault("revoked_ledger", []).append(
            {"serial": old["serial"], "revoked_at": _iso(ca.utcnow())})
    _derive(site)
    site.save()
    AuditLog(site.audit_log).append("provision.ledger", LEDGER_CN, {
        "serial": entry["serial"], "not_after": entry["not_after"], "force": force})
    return entry


def issue_broker(site: Site, hosts: list[str], force: bool = False, tls_port: int = 8883,
                 ledger_port: int = 8884, ledger_bind: str = "127.0.0.1",
                 anonymous_port: int | None = None, bind_client_ids: bool = False,
                 out: Path | None = None, conf_dir: Path | None = None,
                 owner: str | None = None) -> Path:
    """The broker's key and certificate and ``broker/midshift.conf``; with ``out``, also a
    directory mosquitto starts from as ``owner`` (``provision/broker_dir.py``): then the
    returned path is that directory's config."""
    if not hosts:
        raise ProvisionError("--host: at least one name or address the gateways connect to")
    ids = None
    if out is not None:
        try:
            broker_dir.check_out(out, site.dir)
            ids = broker_dir.owner_ids(owner)
            broker_dir.check_reachable(out, ids)
        except broker_dir.BrokerDirError as exc:
            raise ProvisionError(str(exc)) from None
        if conf_dir is not None and not conf_dir.is_absolute():
            raise ProvisionError(f"--conf-dir {conf_dir}: expected an absolute path (where "
                                 "the directory will be on the broker host)")
    key = ca.new_key()
    ca_cert, ca_key = _ca(site)
    cert = ca.server_cert(hosts, site.name, key.public_key(), ca_cert, ca_key,
                          site.policy["cert_days"])
    write_private(site.broker_dir / "server.key", ca.key_pem(key), force)
    write_public(site.broker_dir / "server.crt", ca.cert_pem(cert))
    conf = render_broker_conf(site.dir, site.broker_dir / "server.crt",
                              site.broker_dir / "server.key", tls_port=tls_port,
                              ledger_port=ledger_port, ledger_bind=ledger_bind,
                              anonymous_port=anonymous_port,
                              bind_client_ids=bind_client_ids)
    write_public(site.broker_dir / "midshift.conf", conf.encode())
    site.doc["broker"] = {"hosts": hosts, "serial": f"{cert.serial_number:x}",
                          "not_after": _iso(cert.not_valid_after_utc), "tls_port": tls_port,
                          "ledger_port": ledger_port, "anonymous_port": anonymous_port,
                          "bind_client_ids": bind_client_ids}
    result = site.broker_dir / "midshift.conf"
    if out is not None:
        where = conf_dir or out.resolve()
        text = render_broker_conf(site.dir, where / "server.crt", where / "server.key",
                                  tls_port=tls_port, ledger_port=ledger_port,
                                  ledger_bind=ledger_bind, anonymous_port=anonymous_port,
                                  bind_client_ids=bind_client_ids, layout_dir=where)
        result = broker_dir.export(out, text, _broker_files(site),
                                   site.broker_dir / "server.key", ids)
        site.doc["broker"].update(out=str(out.resolve()), conf_dir=str(where), owner=owner)
    site.save()
    AuditLog(site.audit_log).append("provision.broker", ",".join(hosts), {
        "serial": f"{cert.serial_number:x}", "force": force,
        **({"out": str(out.resolve()), "owner": owner} if out is not None else {})})
    return result


def _broker_files(site: Site) -> dict[str, Path]:
    return {"ca.crt": site.ca_cert, "crl.pem": site.crl, "acl": site.acl,
            "server.crt": site.broker_dir / "server.crt"}


def _derive(site: Site) -> int:
    """Re-render what follows from the registry: ACL, ledger key registry, CRL. A
    superseded certificate past its overlap becomes ``retired`` and joins the CRL."""
    now = ca.utcnow()
    revoked: list[tuple[int, datetime.datetime]] = []
    keys = []
    for gw, entry in sorted(site.gateways.items()):
        for c in entry["certs"]:
            if c["state"] == "superseded" and _parse(c["retire_at"]) <= now:
                c["state"] = "retired"
            if c["state"] in ("revoked", "retired"):
                when = c.get("revoked_at") or c.get("retire_at")
                revoked.append((int(c["serial"], 16), _parse(when)))
        if not entry.get("revoked"):
            hexkey = (site.gateway_dir(gw) / "batch.key").read_text().strip()
            keys.append(f'{gw} = "{hexkey}"')
    for old in site.doc.get("revoked_ledger", []):
        revoked.append((int(old["serial"], 16), _parse(old["revoked_at"])))
    write_public(site.acl, render_acl(site.name, [g for g, e in site.gateways.items()
                                                  if not e.get("revoked")]).encode())
    write_private(site.ledger_keys, ("# ledger key registry for site " + site.name +
                                     ": generated by provisioning\n[gateways]\n" +
                                     "".join(k + "\n" for k in keys)).encode(), force=True)
    ca_cert, ca_key = _ca(site)
    crl = ca.make_crl(ca_cert, ca_key, revoked, site.policy["crl_days"])
    write_public(site.crl, ca.crl_pem(crl))
    site.doc["crl"] = {"issued": _iso(now), "next_update": _iso(crl.next_update_utc),
                       "revoked": len(revoked)}
    broker_dir.refresh(site.doc.get("broker") or {}, _broker_files(site))
    return len(revoked)


def rotation_due(entry: dict[str, Any], policy: dict[str, int]) -> str:
    active = [c for c in entry["certs"] if c["state"] == "active"]
    if not active:
        return "-"
    issued = _parse(active[-1]["not_before"])
    return _iso(issued + datetime.timedelta(days=policy["rotate_days"]))[:10]
