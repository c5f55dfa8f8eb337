"""python -m host_tools: the host side of midshift.

  ledger serve --db sqlite:///PATH --broker mqtt://HOST:PORT --keys FILE [--shared GROUP]
      run the reference ledger until Ctrl-C: verify, store once, acknowledge

  reconcile --db sqlite:///PATH [--ground-truth FILE ...] [--json]
      the reconciliation report: events, gaps, duplicates, late arrivals, latency, and
      lost/unexpected events against the devices' ground-truth logs

Exit status: 0 ok, 2 bad input (one line saying what and what is expected), 1 a failure.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def _ledger_serve(args: argparse.Namespace) -> int:
    from host_tools.ledger.service import LedgerService, load_keys
    from host_tools.ledger.store import LedgerStore

    try:
        keys = load_keys(args.keys)
    except OSError as exc:
        print(f"ledger: --keys {args.keys}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:  # not TOML, or no [gateways] table of hex keys
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    try:
        store = LedgerStore(args.db)
    except ValueError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        service = LedgerService(store, keys, args.broker, args.shared).start()
    except ValueError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 1
    print(f"ledger: serving {len(keys)} gateway(s) from {args.broker} into {store.path}",
          flush=True)
    try:
        while not done.wait(5):
            logging.getLogger("ledger").info("counters %s", service.counters)
    finally:
        service.stop()
        store.close()
    print(f"ledger: stopped; {service.counters}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    import json

    from host_tools.ledger.store import LedgerStore, sqlite_path
    from host_tools.reconcile import format_report, reconcile

    try:
        path = sqlite_path(args.db)
    except ValueError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"reconcile: no ledger database at {path}", file=sys.stderr)
        return 2
    for f in args.ground_truth:
        if not Path(f).exists():
            print(f"reconcile: ground-truth file {f} does not exist", file=sys.stderr)
            return 2
    store = LedgerStore(args.db)
    try:
        report = reconcile(store, args.ground_truth)
    finally:
        store.close()
    print(json.dumps(report, sort_keys=True) if args.json else format_report(report))
    return 1 if report.get("lost") or report.get("unexpected") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m host_tools",
                                     description="midshift host tools: ledger, reconcile")
    sub = parser.add_subparsers(dest="command", required=True)
    ledger = sub.add_parser("ledger", help="the reference ledger")
    lsub = ledger.add_subparsers(dest="action", required=True)
    serve = lsub.add_parser("serve", help="verify, store and acknowledge batches until Ctrl-C")
    serve.add_argument("--db", required=True, help="sqlite:///PATH")
    serve.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    serve.add_argument("--keys", required=True,
                       help='gateway key registry (TOML: [gateways] gw-01 = "hex")')
    serve.add_argument("--shared", metavar="GROUP",
                       help="join the MQTT 5 shared subscription $share/GROUP/... as one worker")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    rec = sub.add_parser("reconcile", help="the reconciliation report")
    rec.add_argument("--db", required=True, help="sqlite:///PATH")
    rec.add_argument("--ground-truth", nargs="*", default=[], metavar="FILE",
                     help="device ground-truth logs (JSON lines) from the simulator")
    rec.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    if args.command == "reconcile":
        return _reconcile(args)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _ledger_serve(args)


if __name__ == "__main__":
    sys.exit(main())
