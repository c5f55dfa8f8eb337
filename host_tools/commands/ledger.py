"""``ledger serve``: the reference ledger until Ctrl-C (verify, store once, acknowledge)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def register(sub: argparse._SubParsersAction) -> None:
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
    serve.set_defaults(run=serve_ledger)


def serve_ledger(args: argparse.Namespace) -> int:
    from host_tools.ledger.service import LedgerService, load_keys
    from host_tools.ledger.store import LedgerStore

    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
