"""``reconcile``: the reconciliation report of a ledger, against ground-truth logs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("reconcile", help="the reconciliation report")
    rec.add_argument("--db", required=True,
                     help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    rec.add_argument("--ground-truth", nargs="*", default=[], metavar="FILE",
                     help="device ground-truth logs (JSON lines) from the simulator")
    rec.add_argument("--run", metavar="ID", dest="truth_run",
                     help="the ground-truth run to compare with (default: the latest in "
                     "the files; a log appended to by several runs holds each)")
    rec.add_argument("--json", action="store_true", help="one JSON object")
    rec.set_defaults(run=run_reconcile)


def run_reconcile(args: argparse.Namespace) -> int:
    from midshift.host_tools.ledger.opener import open_store
    from midshift.host_tools.ledger.store import StoreError, backend_of, sqlite_path
    from midshift.host_tools.reconcile import format_report, reconcile

    try:
        if backend_of(args.db) == "sqlite" and not sqlite_path(args.db).exists():
            # opening would create an empty ledger and report nothing lost
            print(f"reconcile: no ledger database at {sqlite_path(args.db)}", file=sys.stderr)
            return 2
    except ValueError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return 2
    for f in args.ground_truth:
        if not Path(f).exists():
            print(f"reconcile: ground-truth file {f} does not exist", file=sys.stderr)
            return 2
    try:
        store = open_store(args.db)
    except StoreError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return 2
    try:
        report = reconcile(store, args.ground_truth, args.truth_run)
    finally:
        store.close()
    print(json.dumps(report, sort_keys=True) if args.json else format_report(report))
    return 1 if report.get("lost") or report.get("unexpected") else 0
