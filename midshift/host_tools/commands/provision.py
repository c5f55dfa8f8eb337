"""``provision``: the site CA, gateway keys and certificates, broker ACL and CRL.

Subcommands: ``init-site``, ``gateway``, ``rotate``, ``revoke``, ``crl``, ``ledger``,
``broker``, ``tills``, ``list``. Each works on a site directory (``--site-dir``, default ``./midshift-site``)
under its lock, and every change is a line in the site's audit log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SITE_DIR_HELP = "the site directory (default ./midshift-site): CA, keys, registry, audit log"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("provision", help="site CA, gateway keys and certificates, broker ACL",
                       description="Provision a site and its gateways. Private keys are "
                       "written 0600 and never printed; a command that would overwrite one "
                       "refuses unless given --force. See docs/provisioning.md.")
    p.add_argument("--site-dir", default="midshift-site", type=Path, help=SITE_DIR_HELP)
    ps = p.add_subparsers(dest="action", required=True)

    a = ps.add_parser("init-site", help="create the site CA, the ledger's certificate and "
                      "the registry",
                      description="Create a site: CA (EC P-256), the ledger's TLS client "
                      "certificate, empty ledger key registry, ACL and CRL. Lifetimes default to NIST SP "
                      "800-57 cryptoperiods (docs/provisioning.md).")
    _site_dir_here(a)
    a.add_argument("site", metavar="SITE", help="site name as in the gateways' [gateway] site")
    a.add_argument("--cert-days", type=int, help="gateway certificate validity (default 730)")
    a.add_argument("--rotate-days", type=int, help="rotation period shown by list (default 365)")
    a.add_argument("--overlap-days", type=int,
                   help="how long a rotated-out certificate keeps working (default 14)")
    a.add_argument("--ca-days", type=int, help="CA certificate validity (default 1826)")
    a.add_argument("--crl-days", type=int, help="CRL validity; re-issue before (default 30)")
    a.add_argument("--force", action="store_true", help="replace an existing site's CA")
    a.set_defaults(run=_init_site)

    g = ps.add_parser("gateway", help="key, certificate, batch and command keys and ACL entry "
                      "for a gateway",
                      description="Provision GW: private key (or sign --csr), certificate "
                      "from the site CA, batch HMAC key, command key, ledger key registry "
                      "entry, ACL block.")
    _site_dir_here(g)
    g.add_argument("gateway", metavar="GW")
    g.add_argument("--board", required=True, help="board name from midshift/board_configs/")
    g.add_argument("--csr", type=Path, metavar="FILE",
                   help="sign this certificate request (key made on the device, never here)")
    g.add_argument("--days", type=int, help="certificate validity (default: the site policy)")
    g.add_argument("--force", action="store_true", help="replace an existing gateway's keys")
    g.set_defaults(run=_gateway)

    r = ps.add_parser("rotate", help="new key and certificate; the old one works for the "
                      "overlap window")
    _site_dir_here(r)
    r.add_argument("gateway", metavar="GW")
    r.add_argument("--csr", type=Path, metavar="FILE", help="the device's new request")
    r.set_defaults(run=_rotate)

    v = ps.add_parser("revoke", help="put the gateway's certificates on the CRL and drop its "
                      "ACL block and ledger key")
    _site_dir_here(v)
    v.add_argument("gateway", metavar="GW")
    v.add_argument("--reason", default="", help="recorded in the registry and audit log")
    v.set_defaults(run=_revoke)

    c = ps.add_parser("crl", help="re-issue the CRL (cron it well inside --crl-days)")
    _site_dir_here(c)
    c.set_defaults(run=_crl)

    led = ps.add_parser("ledger", help="(re)issue the ledger's TLS client certificate",
                        description="A new key and certificate for the ledger's broker "
                        "connection (ledger/ledger.crt, ledger.key); the old one goes onto "
                        "the CRL. init-site makes the first.")
    _site_dir_here(led)
    led.add_argument("--force", action="store_true", help="replace an existing ledger key")
    led.set_defaults(run=_ledger)

    b = ps.add_parser("broker", help="the broker's server certificate and mosquitto config")
    _site_dir_here(b)
    b.add_argument("--host", action="append", default=[], required=True,
                   help="DNS name or IP address the gateways use (repeatable)")
    b.add_argument("--force", action="store_true", help="replace the broker's key")
    b.add_argument("--tls-port", type=int, default=8883, help="the gateways' listener")
    b.add_argument("--ledger-port", type=int, default=8884, help="the ledger's listener")
    b.add_argument("--ledger-bind", default="127.0.0.1",
                   help="address of the ledger's listener (default loopback)")
    b.add_argument("--anonymous-port", "--port", type=int, metavar="PORT",
                   help="also a plain (no TLS), anonymous loopback listener: statuses only, "
                   "for `status`; none unless asked")
    b.add_argument("--bind-client-ids", action="store_true",
                   help="the gateways' client id is their certificate's CN (only where each "
                   "gateway reaches this broker through one uplink)")
    b.add_argument("--out", type=Path, metavar="DIR",
                   help="also write a directory mosquitto starts from on its own: the config, "
                   "ca.crt, crl.pem, acl, server.crt and server.key, no CA key "
                   "(docs/provisioning.md, The broker)")
    b.add_argument("--conf-dir", type=Path, metavar="PATH",
                   help="where DIR will be on the broker host, if it is copied there "
                   "(the config's paths point there; default DIR itself)")
    b.add_argument("--owner", metavar="USER[:GROUP]",
                   help="give DIR's files to the broker's user (Debian: mosquitto), which "
                   "mosquitto drops to when started as root; needs root")
    b.set_defaults(run=_broker)

    t = ps.add_parser("tills", help="bearer tokens for the tills posting to a gateway's till "
                      "API", description="One token per till (DIR/TILL.token, 0600, for that "
                      "till only) and the hashes file the gateway reads (DIR/till-tokens.json, "
                      "[till_api] tokens_file). See docs/till-api.md.")
    _site_dir_here(t)
    t.add_argument("--store", required=True, help="the store id ([store] id)")
    t.add_argument("--tills", required=True, help="comma-separated till ids: till-1,till-2")
    t.add_argument("--out", required=True, type=Path, help="where the tokens and hashes go")
    t.add_argument("--force", action="store_true", help="replace an existing till's token")
    t.set_defaults(run=_tills)

    ls = ps.add_parser("list", help="gateways, certificate serials, expiry and rotation dates")
    _site_dir_here(ls)
    ls.set_defaults(run=_list)


def _site_dir_here(parser: argparse.ArgumentParser) -> None:
    """``--site-dir`` also after the subcommand (``provision gateway GW --site-dir D``);
    SUPPRESS keeps the value given before it when it is not repeated here."""
    parser.add_argument("--site-dir", type=Path, default=argparse.SUPPRESS, help=SITE_DIR_HELP)


def _fail(exc: Exception) -> int:
    print(f"provision: {exc}", file=sys.stderr)
    return 2


def _site(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from midshift.host_tools.provision.registry import Site
    return Site(args.site_dir)


def _guarded(fn):  # type: ignore[no-untyped-def]
    """Turn the expected failures into one line and exit 2."""
    def run(args: argparse.Namespace) -> int:
        from midshift.host_tools.provision.ca import CsrRejected
        from midshift.host_tools.provision.registry import ProvisionError
        try:
            return fn(args)
        except (ProvisionError, CsrRejected, FileExistsError, PermissionError) as exc:
            return _fail(exc)
        except FileNotFoundError as exc:
            return _fail(f"{exc.filename}: does not exist")
    return run


@_guarded
def _init_site(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import init_site
    policy = {k: v for k in ("cert_days", "rotate_days", "overlap_days", "ca_days", "crl_days")
              if (v := getattr(args, k)) is not None}
    if any(v <= 0 for v in policy.values()):
        return _fail("day counts must be positive")
    site = _site(args).lock(create=True)
    try:
        init_site(site, args.site, policy, args.force)
        print(f"site {args.site} created in {site.dir}: CA {site.ca_cert}, "
              f"CRL {site.crl}, ACL {site.acl}")
    finally:
        site.unlock()
    return 0


def _read_csr(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


@_guarded
def _gateway(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import add_gateway
    if args.days is not None and args.days <= 0:
        return _fail(f"--days {args.days}: expected a positive number of days")
    csr = _read_csr(args.csr)
    with _site(args) as site:
        entry = add_gateway(site.load(), args.gateway, args.board, csr, args.days, args.force)
        cert = entry["certs"][-1]
        gdir = site.gateway_dir(args.gateway)
        print(f"gateway {args.gateway}: certificate {cert['serial']} until "
              f"{cert['not_after']} in {gdir}; key "
              f"{'stays on the device' if csr else 'in gateway.key (0600)'}")
    return 0


@_guarded
def _tills(args: argparse.Namespace) -> int:
    from midshift.host_tools.audit_log import AuditLog
    from midshift.host_tools.provision.tills import HASHES_FILE, provision_tills
    tills = [t.strip() for t in args.tills.split(",") if t.strip()]
    if not tills:
        return _fail("--tills: expected till ids, e.g. till-1,till-2")
    try:
        paths = provision_tills(args.out, args.store, tills, args.force)
    except ValueError as exc:
        return _fail(exc)
    args.site_dir.mkdir(parents=True, exist_ok=True)
    AuditLog(args.site_dir / "audit.log").append(
        "provision_tills", args.store, {"tills": tills, "out": str(args.out),
                                        "force": args.force})
    for till, path in paths.items():
        print(f"till {till}: token in {path} (0600; put it on that till only)")
    print(f"hashes in {args.out / HASHES_FILE}: set [till_api] tokens_file to it")
    return 0


@_guarded
def _rotate(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import rotate
    with _site(args) as site:
        entry = rotate(site.load(), args.gateway, _read_csr(args.csr))
        old = [c for c in entry["certs"] if c["state"] == "superseded"][-1]
        new = entry["certs"][-1]
        print(f"gateway {args.gateway}: new certificate {new['serial']}; the old one "
              f"({old['serial']}) works until {old['retire_at']}: flash a new bundle before")
    return 0


@_guarded
def _revoke(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import revoke
    with _site(args) as site:
        revoke(site.load(), args.gateway, args.reason)
        print(f"gateway {args.gateway} revoked: CRL {site.crl}, ACL and ledger key registry "
              "updated; reload mosquitto and restart the ledger to apply")
    return 0


@_guarded
def _crl(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import reissue_crl
    with _site(args) as site:
        n = reissue_crl(site.load())
        print(f"CRL {site.crl}: {n} serial(s), next update {site.doc['crl']['next_update']}")
    return 0


@_guarded
def _ledger(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import issue_ledger
    with _site(args) as site:
        entry = issue_ledger(site.load(), args.force)
        print(f"ledger certificate {entry['serial']} ({entry['cn']}) until "
              f"{entry['not_after']}: {site.ledger_cert}, key {site.ledger_key} (0600)")
    return 0


@_guarded
def _broker(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import issue_broker
    with _site(args) as site:
        ports = [p for p in (args.tls_port, args.ledger_port, args.anonymous_port)
                 if p is not None]
        if any(not 0 < p < 65536 for p in ports) or len(set(ports)) != len(ports):
            return _fail(f"ports {', '.join(map(str, ports))}: expected distinct ports "
                         "1 to 65535")
        if (args.conf_dir or args.owner) and args.out is None:
            return _fail("--conf-dir and --owner go with --out DIR")
        conf = issue_broker(site.load(), args.host, args.force, tls_port=args.tls_port,
                            ledger_port=args.ledger_port, ledger_bind=args.ledger_bind,
                            anonymous_port=args.anonymous_port,
                            bind_client_ids=args.bind_client_ids, out=args.out,
                            conf_dir=args.conf_dir, owner=args.owner)
        print(f"broker certificate for {', '.join(args.host)}; mosquitto config {conf}")
    return 0


@_guarded
def _list(args: argparse.Namespace) -> int:
    from midshift.host_tools.provision.issuer import rotation_due
    site = _site(args).load()
    print(f"site {site.name}: CA until {site.doc['ca']['not_after']}, CRL next update "
          f"{site.doc.get('crl', {}).get('next_update', '-')}")
    print(f"{'gateway':<16} {'board':<16} {'state':<8} {'serial':<18} {'not after':<20} "
          f"{'rotate by':<10} key")
    for gw, entry in sorted(site.gateways.items()):
        certs = entry["certs"]
        cur = next((c for c in certs if c["state"] == "active"), certs[-1])
        state = "revoked" if entry.get("revoked") else "active"
        print(f"{gw:<16} {entry['board']:<16} {state:<8} {cur['serial'][:16]:<18} "
              f"{cur['not_after']:<20} {rotation_due(entry, site.policy):<10} "
              f"{cur['key_origin']}")
        for c in certs:
            if c["state"] == "superseded":
                print(f"{'':<16} {'':<16} {'overlap':<8} {c['serial'][:16]:<18} "
                      f"until {c['retire_at']}")
    return 0
