"""``review``: the ledger's review flags (issue 17), listed and resolved.

A flag is a question for a person about one till transaction: a split-brain conflict (two
tills or gateways claiming the same till number or key), a refund or void whose original
is unknown, a declined or offline-pending card payment, lines that do not add up to the
tenders, a transaction for a day already closed, or one the ledger could not read.
Nothing is dropped for a flag: the transaction is in the ledger and in the report.

Resolving needs who and why; a resolution is never overwritten, and each one is a line
in the site's audit log (``SITE_DIR/audit.log``, or ``--log``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DB_HELP = "sqlite:///PATH or postgresql://USER@HOST:PORT/DB"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="list and resolve the ledger's review flags",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help=DB_HELP)
    p.add_argument("--store", help="only this store's flags")
    p.add_argument("--open", action="store_true", help="only flags not yet resolved")
    p.add_argument("--json", action="store_true", help="the flags as one JSON list")
    p.add_argument("--resolve", type=int, metavar="ID", help="resolve flag ID (needs --by, --why)")
    p.add_argument("--by", metavar="WHO", help="who resolves it (recorded)")
    p.add_argument("--why", metavar="TEXT", help="why it is resolved, in words (recorded)")
    p.add_argument("--site-dir", type=Path, default=Path("midshift-site"),
                   help="the site directory whose audit.log records resolutions "
                        "(default ./midshift-site)")
    p.add_argument("--log", type=Path, help="an audit log elsewhere (default SITE_DIR/audit.log)")
    p.set_defaults(run=run_review)


def describe(f: dict[str, Any]) -> str:
    where = (f"{f['store']} {f['till']} #{f['till_seq']} day {f['business_day']}"
             if f["store"] is not None else f"{f['gateway']} seq {f['seq']}")
    state = ("open" if f["resolved_ms"] is None
             else f"resolved by {f['resolved_by']}: {f['resolution']}")
    return f"{f['id']:>5}  {f['kind']:<20} {where}: {f['detail']}  [{state}]"


def run_review(args: argparse.Namespace) -> int:
    from midshift.host_tools.audit_log import AuditLog
    from midshift.host_tools.ledger.opener import open_for_command

    if args.resolve is None and (args.by or args.why):
        print("review: --by and --why go with --resolve ID", file=sys.stderr)
        return 2
    if args.resolve is not None and not ((args.by or "").strip() and (args.why or "").strip()):
        print("review: --resolve needs --by WHO and --why TEXT (both are recorded)",
              file=sys.stderr)
        return 2
    store = open_for_command(args.db, "review")
    if store is None:
        return 2
    try:
        if args.resolve is not None:
            try:
                f = store.resolve_flag(args.resolve, args.by, args.why)
            except ValueError as exc:
                print(f"review: {exc}", file=sys.stderr)
                return 2
            AuditLog(args.log or args.site_dir / "audit.log").append(
                "review.resolve", f"flag {f['id']}",
                {k: f[k] for k in ("kind", "gateway", "epoch", "seq", "store", "till",
                                   "till_seq", "business_day", "resolved_by", "resolution")})
            print(f"resolved: {describe(f)}")
            return 0
        flags = [f for f in store.flags(open_only=args.open)
                 if args.store is None or f["store"] == args.store]
    finally:
        store.close()
    if args.json:
        print(json.dumps(flags, sort_keys=True))
    elif not flags:
        print("no open flags" if args.open else "no flags")
    else:
        print("\n".join(describe(f) for f in flags))
        n_open = sum(f["resolved_ms"] is None for f in flags)
        print(f"{len(flags)} flag(s), {n_open} open; resolve one with "
              "--resolve ID --by WHO --why TEXT")
    return 0
