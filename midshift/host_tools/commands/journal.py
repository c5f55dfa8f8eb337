"""``journal dump|verify|export PATH``: a journal directory pulled from a gateway, read
offline and never written (midshift/host_tools/journal_reader.py)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

CSV_COLUMNS = ("seq", "class", "hlc_ms", "hlc_counter", "source", "kind", "read_ms", "data",
               "body_error")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("journal", help="read a journal pulled from a gateway (offline)",
                       description="Inspect a journal directory (journal.head, seg-*.dat) "
                       "with the agent's own reader, opened read-only.")
    ps = p.add_subparsers(dest="action", required=True)
    d = ps.add_parser("dump", help="records in seq order with decoded bodies")
    d.add_argument("path", metavar="PATH", help="the journal directory")
    d.add_argument("--json", action="store_true", help="one JSON object per record")
    d.set_defaults(run=_quiet_on_broken_pipe(_dump))
    v = ps.add_parser("verify", help="integrity report: torn tail, CRC failures, gaps; "
                      "exit 1 when anything is found")
    v.add_argument("path", metavar="PATH")
    v.add_argument("--json", action="store_true", help="the report as one JSON object")
    v.set_defaults(run=_verify)
    e = ps.add_parser("export", help="records as JSON lines or CSV")
    e.add_argument("path", metavar="PATH")
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("-o", "--out", metavar="FILE", help="write here (default: stdout)")
    e.set_defaults(run=_quiet_on_broken_pipe(_export))


def _quiet_on_broken_pipe(fn: Callable[[argparse.Namespace], int],
                          ) -> Callable[[argparse.Namespace], int]:
    """``journal dump PATH | head`` is normal use: a closed pipe ends the output quietly."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            return 0
    return run


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _report(args: argparse.Namespace) -> Any:
    from midshift.host_tools.journal_reader import JournalReport, JournalUnreadable
    try:
        return JournalReport(args.path)
    except JournalUnreadable as exc:
        print(f"journal: {exc}", file=sys.stderr)
        return None


def _dump(args: argparse.Namespace) -> int:
    report = _report(args)
    if report is None:
        return 2
    with report:
        for row in report.rows():
            if args.json:
                print(json.dumps(row, sort_keys=True))
                continue
            what = (json.dumps(row["data"], sort_keys=True) if "body_error" not in row
                    else f"<{row['body_error']}> {row['raw'][:80]!r}")
            print(f"{row['seq']:>8} {row['class']:<9} {_iso_ms(row['hlc_ms'])}+"
                  f"{row['hlc_counter']:<3} {row['source'] or '-':<12} {row['kind'] or '-':<10} "
                  f"{what}")
        if not args.json:  # the summary after the records: it is known only then
            for line in report.lines():
                print(line)
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = _report(args)
    if report is None:
        return 2
    with report:
        report.scan()
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        for line in report.lines():
            print(line)
    return 0 if report.clean else 1


def _export(args: argparse.Namespace) -> int:
    report = _report(args)
    if report is None:
        return 2
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        with report:
            if args.format == "jsonl":
                for row in report.rows():
                    out.write(json.dumps(row, sort_keys=True) + "\n")
            else:
                w = csv.writer(out)
                w.writerow(CSV_COLUMNS)
                for row in report.rows():
                    w.writerow([json.dumps(row.get(c)) if c == "data" else row.get(c, "")
                                for c in CSV_COLUMNS])
    finally:
        if args.out:
            out.close()
    verdict = "clean" if report.clean else "NOT clean: run `journal verify` for the findings"
    print(f"journal: {report.records} records exported ({args.format}); journal {verdict}",
          file=sys.stderr)
    return 0
