"""``python -m midshift.simulator fleet``: the virtual gateway fleet from the command line.

Two steps, because the ledger must know the fleet's keys before it starts:

  python -m midshift.simulator fleet --gateways 1000 --keys-out keys.toml      # keys only, exit
  python -m midshift.host_tools ledger serve --db ... --broker URL --keys keys.toml --workers 2
  python -m midshift.simulator fleet --gateways 1000 --backlog 1000 --jitter-s 2 --broker URL

The keys, epochs and gateway names come from ``--seed``, so both runs agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fleet", help="play thousands of virtual gateways against a broker",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT")
    f.add_argument("--gateways", type=int, default=100, metavar="N")
    f.add_argument("--backlog", type=int, default=1000, metavar="EVENTS",
                   help="events each gateway has journaled when it comes back")
    f.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_S",
                   help="live events per second, the whole fleet (with --live-s)")
    f.add_argument("--live-s", type=float, default=0.0, metavar="S",
                   help="how long live events are produced")
    f.add_argument("--jitter-s", type=float, default=0.0, metavar="S",
                   help="each gateway reconnects after a random delay in [0, S)")
    f.add_argument("--window", type=int, default=8, help="unacknowledged batches per gateway")
    f.add_argument("--batch-events", type=int, default=500, help="records per batch")
    f.add_argument("--drain-rate", type=float, metavar="EVENTS_PER_S",
                   help="per-gateway drain cap (token bucket), as the agent's drain_rate")
    f.add_argument("--connections", type=int, help="MQTT connections the gateways share "
                   "(default: min(gateways, 32))")
    f.add_argument("--site", default="fleet", help="the <site> level of the topics")
    f.add_argument("--seed", type=int, default=1, help="keys, epochs and jitter")
    f.add_argument("--timeout-s", type=float, default=600.0)
    f.add_argument("--keys-out", type=Path, metavar="FILE",
                   help="write the ledger's key registry for this fleet and exit")
    f.set_defaults(func=cmd_fleet)


def cmd_fleet(args: argparse.Namespace) -> int:
    from midshift.simulator.fleet import Fleet

    try:
        fleet = Fleet(args.broker, gateways=args.gateways, backlog=args.backlog,
                      batch_events=args.batch_events, window=args.window,
                      rate_per_s=args.rate, live_s=args.live_s, jitter_s=args.jitter_s,
                      drain_events_per_s=args.drain_rate, connections=args.connections,
                      site=args.site, seed=args.seed)
    except ValueError as exc:
        print(f"python -m midshift.simulator fleet: {exc}", file=sys.stderr)
        return 2
    if args.keys_out:
        args.keys_out.write_text(fleet.keys_toml())
        args.keys_out.chmod(0o600)
        print(f"fleet: keys of {args.gateways} gateways written to {args.keys_out}")
        return 0
    try:
        result = fleet.prepare().run(args.timeout_s)
    except RuntimeError as exc:  # the broker did not answer
        print(f"python -m midshift.simulator fleet: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0 if result["drained"] else 1
