"""``audit``: check the site's hash-chained audit log, or show it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="verify or show the site's audit log",
                       description="Every state-changing host_tools action is a line in "
                       "SITE_DIR/audit.log, chained by SHA-256; verify finds an edited, "
                       "deleted or reordered line.")
    p.add_argument("--site-dir", default="midshift-site", type=Path,
                   help="the site directory (default ./midshift-site)")
    p.add_argument("--log", type=Path, help="an audit log elsewhere (default SITE_DIR/audit.log)")
    ps = p.add_subparsers(dest="action", required=True)
    v = ps.add_parser("verify", help="check the chain; exit 1 naming each broken line")
    v.add_argument("--site-dir", type=Path, default=argparse.SUPPRESS,
                   help="the site directory (also accepted here)")
    v.add_argument("--expect-head", metavar="SEQ:HASH",
                   help="the head recorded outside this machine (as `audit head` printed it)")
    v.set_defaults(run=_verify)
    h = ps.add_parser("head", help="print SEQ:HASH of the last line, to record elsewhere")
    h.add_argument("--site-dir", type=Path, default=argparse.SUPPRESS,
                   help="the site directory (also accepted here)")
    h.set_defaults(run=_head)
    s = ps.add_parser("show", help="print the log, one line per action")
    s.add_argument("--site-dir", type=Path, default=argparse.SUPPRESS,
                   help="the site directory (also accepted here)")
    s.set_defaults(run=_show)
    r = ps.add_parser("record", help="append an action done outside Python (flash.sh uses it)")
    r.add_argument("--site-dir", type=Path, default=argparse.SUPPRESS,
                   help="the site directory (also accepted here)")
    r.add_argument("--action", required=True)
    r.add_argument("--subject", required=True)
    r.add_argument("--detail", default="", help="free text, no secrets")
    r.set_defaults(run=_record)


def _record(args: argparse.Namespace) -> int:
    entry = _log(args).append(args.action, args.subject,
                              {"detail": args.detail} if args.detail else {})
    print(f"audit: recorded as entry {entry['seq']}")
    return 0


def _log(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from midshift.host_tools.audit_log import AuditLog
    return AuditLog(args.log or args.site_dir / "audit.log")


def _verify(args: argparse.Namespace) -> int:
    log = _log(args)
    if not log.path.exists():
        print(f"audit: {log.path} does not exist", file=sys.stderr)
        return 2
    n, head, problems = log.verify(args.expect_head)
    for p in problems:
        print(f"audit: {log.path}: {p}")
    if problems:
        print(f"audit: NOT OK: {len(problems)} problem(s) in {n} entries")
        return 1
    print(f"audit: ok: {n} entries, head {head}")
    return 0


def _head(args: argparse.Namespace) -> int:
    n, head, problems = _log(args).verify()
    print(head)
    return 1 if problems else 0


def _show(args: argparse.Namespace) -> int:
    log = _log(args)
    if not log.path.exists():
        print(f"audit: {log.path} does not exist", file=sys.stderr)
        return 2
    for line in log.path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
            print(f"{e['seq']:>5} {e['time']} {e['user']:<12} {e['action']:<22} {e['subject']}")
        except (ValueError, KeyError, TypeError):
            print(f"    ? {line[:100]}")
    return 0
