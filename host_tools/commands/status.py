"""``status --broker URL [--gateway GW]``: a live table of gateways from their retained
status messages, redrawn in place on a terminal (host_tools/status_table.py)."""

from __future__ import annotations

import argparse
import sys
import time

from firmware.core import topics

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: the table is redrawn in place


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="live table of gateways from their status messages",
                       description="Subscribe to midshift/v1/+/+/status and show one row per "
                       "gateway: state (online, offline from its last will, stale when "
                       "silent), uplink, backlog, in-flight batches, devices in error, clock "
                       "offset, alarms. Redrawn in place every --refresh-s on a terminal; "
                       "with --once (or when not a terminal) printed once after --wait-s.")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT: the broker's loopback "
                   "listener, which the generated ACL lets read every status; mqtts://HOST:PORT "
                   "with --ca/--cert/--key needs an ACL entry for that certificate's CN")
    p.add_argument("--gateway", metavar="GW", help="only this gateway")
    p.add_argument("--site", default="+", help="only this site (default: all)")
    p.add_argument("--ca", help="CA file for mqtts://")
    p.add_argument("--cert", help="client certificate for mqtts://")
    p.add_argument("--key", help="client key for mqtts://")
    p.add_argument("--refresh-s", type=float, default=1.0, help="redraw period (default 1)")
    p.add_argument("--stale-s", type=float, default=30.0,
                   help="an online gateway silent this long is shown stale (default 30)")
    p.add_argument("--once", action="store_true",
                   help="print the table once and exit (1 if --gateway is not online)")
    p.add_argument("--wait-s", type=float, default=3.0,
                   help="with --once: how long to collect retained messages (default 3; "
                   "with --gateway, only until it has reported)")
    p.add_argument("--count", type=int, default=0, help="stop after N redraws (0: until Ctrl-C)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from host_tools.status_table import StatusBoard, StatusSubscriber, render
    board = StatusBoard()
    topic = topics.topic(args.site, args.gateway or "+", topics.STATUS)
    try:
        sub = StatusSubscriber(board, args.broker, topic, args.ca, args.cert, args.key)
    except (ValueError, OSError) as exc:  # bad URL, unreadable TLS files
        print(f"status: {exc}", file=sys.stderr)
        return 2
    sub.start()
    try:
        if not sub.connected.wait(10):
            why = sub.refused or "no connection: is the broker running, is the port right?"
            print(f"status: cannot reach {args.broker} within 10 s ({why})", file=sys.stderr)
            return 1
        if args.once or not sys.stdout.isatty():
            return _once(args, board, render)
        n = 0
        while args.count == 0 or n < args.count:  # until Ctrl-C, or --count redraws
            n += 1
            now = time.monotonic()
            header = f"midshift gateways on {args.broker}  {time.strftime('%H:%M:%S')}"
            sys.stdout.write(CLEAR + render(board.rows(now, args.stale_s), header) + "\n")
            sys.stdout.flush()
            board.changed.clear()
            board.changed.wait(args.refresh_s)  # redraw early when a status arrives
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sub.stop()


def _once(args: argparse.Namespace, board, render) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:  # bounded by --wait-s
        if args.gateway and board.get(args.gateway) is not None:
            break
        board.changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        board.changed.clear()
    print(render(board.rows(time.monotonic(), args.stale_s)))
    if args.gateway:
        doc = board.get(args.gateway)
        return 0 if doc is not None and doc.get("state") == "online" else 1
    return 0
