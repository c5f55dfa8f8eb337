"""``status --broker URL [--gateway GW]``: a live table of gateways from their retained
status messages, redrawn in place on a terminal (midshift/host_tools/status_table.py).

``--once`` is a monitoring plugin (Nagios, Icinga, Sensu): one line ``STATE: reason``,
then the table, and the exit code 0 ok, 1 warning, 2 critical, 3 unknown, judged by
``midshift/host_tools/status_judge.py`` from each status's own time stamp and alarms. With
``--site-dir`` the provisioned gateways that never reported are listed (a warning)."""

from __future__ import annotations

import argparse
import sys
import time

from midshift.firmware.core import topics

CLEAR = "\x1b[H\x1b[2J"
UNKNOWN = 3  # the monitoring-plugin code (midshift/host_tools/status_judge.py)  # cursor home, clear screen: the table is redrawn in place


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="live table of gateways from their status messages",
                       description="Subscribe to midshift/v1/+/+/status and show one row per "
                       "gateway: state (online, offline from its last will, stale when "
                       "silent), uplink, backlog, in-flight batches, devices in error, clock "
                       "offset, alarms. Redrawn in place every --refresh-s on a terminal; "
                       "with --once (or when not a terminal) printed once after --wait-s, "
                       "as a monitoring plugin: a first line 'OK|WARNING|CRITICAL|UNKNOWN: "
                       "reason' and exit 0, 1, 2 or 3.")
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
                   help="an online gateway whose last status is this old is stale, critical "
                   "with --once (default 30; keep it above the gateways' [status] period_s)")
    p.add_argument("--once", action="store_true",
                   help="judge once and exit with monitoring-plugin codes: 0 ok, 1 warning "
                   "(an alarm such as device_down), 2 critical (offline, stale, no_ack, "
                   "journal full), 3 unknown (never seen, broker unreachable)")
    p.add_argument("--site-dir", metavar="DIR",
                   help="a provisioned site directory: list its gateways that never reported")
    p.add_argument("--wait-s", type=float, default=3.0,
                   help="with --once: how long to collect retained messages (default 3; "
                   "with --gateway, only until it has reported)")
    p.add_argument("--count", type=int, default=0, help="stop after N redraws (0: until Ctrl-C)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from midshift.host_tools.status_table import StatusBoard, StatusSubscriber, render
    board = StatusBoard()
    topic = topics.topic(args.site, args.gateway or "+", topics.STATUS)
    # A monitoring system reads 2 as critical: with --once, trouble of our own is unknown.
    own_trouble = UNKNOWN if args.once else 2
    try:
        provisioned = _provisioned(args.site_dir) if args.site_dir else []
        sub = StatusSubscriber(board, args.broker, topic, args.ca, args.cert, args.key)
    except (ValueError, OSError) as exc:  # bad URL, unreadable TLS files or site
        print(f"status: {exc}", file=sys.stderr)
        if args.once:
            print(f"UNKNOWN: {exc}")
        return own_trouble
    sub.start()
    try:
        if not sub.connected.wait(10):
            why = sub.refused or "no connection: is the broker running, is the port right?"
            print(f"status: cannot reach {args.broker} within 10 s ({why})", file=sys.stderr)
            if args.once:
                print(f"UNKNOWN: cannot reach {args.broker} ({why})")
            return UNKNOWN if args.once else 1
        if args.once or not sys.stdout.isatty():
            return _once(args, board, render, provisioned)
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


def _provisioned(site_dir: str) -> list[str]:
    """The site's gateways not revoked (``site.json``); ValueError when it cannot be read."""
    from midshift.host_tools.provision.registry import Site
    return sorted(gw for gw, e in Site(site_dir).load().gateways.items()
                  if not e.get("revoked"))


def _once(args: argparse.Namespace, board, render,  # type: ignore[no-untyped-def]
          provisioned: list[str]) -> int:
    from midshift.host_tools.status_judge import judge, status_age_s, summary
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:  # bounded by --wait-s
        if args.gateway and board.get(args.gateway) is not None:
            break
        board.changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        board.changed.clear()
    now, wall_ms = time.monotonic(), int(time.time() * 1000)
    results = {}
    for _, gw, seen, retained, doc in board.entries():
        results[gw] = judge(doc, status_age_s(doc, wall_ms, now - seen, retained), args.stale_s)
    wanted = [args.gateway] if args.gateway else provisioned
    never = [gw for gw in wanted if gw not in results and gw in provisioned]
    code, line = summary(results, never, args.gateway)
    print(line)
    print(render(board.rows(now, args.stale_s, wall_ms)))
    return code
