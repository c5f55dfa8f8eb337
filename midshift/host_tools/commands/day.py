"""``day close``: close a store's business day in the ledger (issue 17).

After a day is closed, a transaction that still arrives for it (a gateway that was offline
all night) is booked all the same and flagged ``late`` for review: never rejected. Each
close is a line in the site's audit log (``SITE_DIR/audit.log``, or ``--log``).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("day", help="close a store's business day",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="action", required=True)
    c = dsub.add_parser("close", help="close one business day of one store")
    c.add_argument("--db", required=True, help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    c.add_argument("--store", required=True, help="the store id (as in the site file's [store])")
    c.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the business day")
    c.add_argument("--by", required=True, metavar="WHO", help="who closes it (recorded)")
    c.add_argument("--site-dir", type=Path, default=Path("midshift-site"),
                   help="the site directory whose audit.log records it (default ./midshift-site)")
    c.add_argument("--log", type=Path, help="an audit log elsewhere (default SITE_DIR/audit.log)")
    c.set_defaults(run=run_close)


def run_close(args: argparse.Namespace) -> int:
    from midshift.host_tools.audit_log import AuditLog
    from midshift.host_tools.ledger.opener import open_for_command

    try:
        datetime.date.fromisoformat(args.day)
        if len(args.day) != 10:
            raise ValueError
    except ValueError:
        print(f"day close: --day {args.day!r}: expected a date YYYY-MM-DD", file=sys.stderr)
        return 2
    if not args.by.strip() or not args.store.strip():
        print("day close: --store and --by must not be empty", file=sys.stderr)
        return 2
    store = open_for_command(args.db, "day close")
    if store is None:
        return 2
    try:
        row = store.close_day(args.store, args.day, args.by)
    except ValueError as exc:
        print(f"day close: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    AuditLog(args.log or args.site_dir / "audit.log").append(
        "day.close", f"{args.store} {args.day}", {"closed_by": row["closed_by"],
                                                  "closed_ms": row["closed_ms"]})
    print(f"closed: business day {args.day} of {args.store}, by {args.by}; transactions "
          "for it arriving from now on are booked and flagged late")
    return 0
