"""``report``: the morning report of one business day, from the ledger (issue 17).

For a store manager and a finance clerk: a verdict in plain words at the top; per store
and till, sales, refunds and voids with counts and amounts per tender; the periods the
store was offline, what was sold during each and when it reached the ledger; copies
received twice and kept once; everything flagged for review; device and link incidents.
Times are the store's local time (its time zone from the transactions), so the business
day is right across a daylight-saving change. ``docs/morning-report.md`` explains each
section.

Writes DIR/report.html (one page: charts inline, no scripts, no files beside it) and FILE
(the same figures as JSON). Exit 0 when the report was written (whatever it says), 2 for
bad input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the morning report of one business day",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    p.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the business day")
    p.add_argument("--store", help="only this store (default: every store with transactions)")
    p.add_argument("--html", type=Path, metavar="DIR", help="write DIR/report.html")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the figures to FILE")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from midshift.host_tools.ledger.opener import open_for_command
    from midshift.host_tools.morning_report.figures import build
    from midshift.host_tools.morning_report.page import render

    try:
        if len(args.day) != 10:
            raise ValueError
        datetime.date.fromisoformat(args.day)
    except ValueError:
        print(f"report: --day {args.day!r}: expected a date YYYY-MM-DD", file=sys.stderr)
        return 2
    if args.html is None and args.json is None:
        print("report: say where to write it: --html DIR and/or --json FILE", file=sys.stderr)
        return 2
    store = open_for_command(args.db, "report")
    if store is None:
        return 2
    try:
        figures = build(store, args.day, args.store)
    finally:
        store.close()
    if args.store and not figures["stores"]:
        print(f"report: no transactions of store {args.store!r} for {args.day} in the ledger "
              f"(stores there: {', '.join(figures['known_stores']) or 'none'})", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1, sort_keys=True), encoding="utf-8")
    if args.html is not None:
        args.html.mkdir(parents=True, exist_ok=True)
        (args.html / "report.html").write_text(render(figures), encoding="utf-8")
    print(figures["verdict"]["text"])
    for where in (args.html and args.html / "report.html", args.json):
        if where:
            print(f"written: {where}")
    return 0
