"""``python -m midshift.simulator dst``: run seeds of the deterministic simulation, or replay one.

  python -m midshift.simulator dst --seeds 200                    seeds 0..199; each failure printed
  python -m midshift.simulator dst --seeds 1000 --budget-s 60     as many as fit in 60 s (of 1000)
  python -m midshift.simulator dst --seed 17 --trace              replay seed 17, print its events
  python -m midshift.simulator dst --seeds 20 --plant commit-on-puback   a known bug, to be found

A failing seed is printed with the commit it failed on and the command that replays it;
the same seed, options and commit replay the same run, event for event (the trace hash
says so). Exit status: 0 when every seed held every invariant, 1 when one did not, 2 for
bad options. docs/dst.md says what is simulated and what is not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from midshift.simulator.dst.planted import PLANTED

    d = sub.add_parser("dst", help="deterministic simulation: seeded faults, the real core",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    which = d.add_mutually_exclusive_group(required=True)
    which.add_argument("--seeds", type=int, metavar="N", help="run N seeds")
    which.add_argument("--seed", type=int, metavar="X", help="run (replay) seed X alone")
    d.add_argument("--first-seed", type=int, default=0, metavar="K",
                   help="with --seeds: start at seed K (default 0)")
    d.add_argument("--budget-s", type=float, metavar="S",
                   help="with --seeds: stop starting seeds after S wall seconds")
    d.add_argument("--gateways", type=int, default=3, metavar="G", help="gateways (default 3)")
    d.add_argument("--uplinks", type=int, default=2, metavar="U",
                   help="uplinks per gateway, 2 or 3 (default 2)")
    d.add_argument("--fault-s", type=float, default=120.0, metavar="S",
                   help="simulated seconds of faults before the world heals (default 120)")
    d.add_argument("--hop-fault", type=float, default=0.5, metavar="P",
                   help="chance that a message hop is lost, doubled or delayed (default 0.5)")
    d.add_argument("--plant", choices=sorted(PLANTED), metavar="BUG",
                   help=f"run with a known bug planted: {', '.join(sorted(PLANTED))}")
    d.add_argument("--trace", action="store_true",
                   help="with --seed: print the event trace (to the first violation)")
    d.add_argument("--tail", type=int, default=0, metavar="N",
                   help="with --trace: only the last N lines")
    d.add_argument("--json", action="store_true", help="one JSON object per seed")
    d.set_defaults(func=cmd_dst)


def commit_hash() -> str:
    """The git short hash of the tree under test ("unknown" outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _options(args: argparse.Namespace) -> str:
    """The options a replay needs besides the seed."""
    out = []
    if args.gateways != 3:
        out.append(f"--gateways {args.gateways}")
    if args.uplinks != 2:
        out.append(f"--uplinks {args.uplinks}")
    if args.fault_s != 120.0:
        out.append(f"--fault-s {args.fault_s:g}")
    if args.hop_fault != 0.5:
        out.append(f"--hop-fault {args.hop_fault:g}")
    if args.plant:
        out.append(f"--plant {args.plant}")
    return " ".join(out)


def _check(args: argparse.Namespace) -> str | None:
    if args.seeds is not None and args.seeds < 1:
        return f"--seeds {args.seeds}: must be at least 1"
    if not 1 <= args.gateways <= 1000:
        return f"--gateways {args.gateways}: must be from 1 to 1000"
    if args.uplinks not in (2, 3):
        return f"--uplinks {args.uplinks}: must be 2 or 3"
    if not 0 < args.fault_s <= 86400:
        return f"--fault-s {args.fault_s:g}: must be above 0 and at most 86400"
    if not 0 <= args.hop_fault < 1:
        return f"--hop-fault {args.hop_fault:g}: must be from 0 to below 1"
    if args.trace and args.seed is None:
        return "--trace replays one seed: give --seed X"
    if args.budget_s is not None and args.budget_s <= 0:
        return f"--budget-s {args.budget_s:g}: must be above 0"
    return None


def cmd_dst(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from midshift.simulator.dst.planted import PLANTED
    from midshift.simulator.dst.world import Config, run_seed

    problem = _check(args)
    if problem:
        print(f"python -m midshift.simulator dst: {problem}", file=sys.stderr)
        return 2
    config = Config(gateways=args.gateways, uplinks=args.uplinks, fault_s=args.fault_s,
                    hop_fault=args.hop_fault)
    seeds = [args.seed] if args.seed is not None else range(args.first_seed,
                                                            args.first_seed + args.seeds)
    commit = commit_hash()
    opts = _options(args)
    replay = "python -m midshift.simulator dst --seed {seed}" + (f" {opts}" if opts else "") + " --trace"
    started = time.monotonic()
    failed: list[int] = []
    runs = faults = events = 0
    with PLANTED[args.plant]() if args.plant else nullcontext():
        for seed in seeds:
            if args.budget_s is not None and time.monotonic() - started > args.budget_s:
                break
            result = run_seed(seed, config, trace=args.trace)
            runs += 1
            faults += result.faults
            events += result.events
            doc: dict[str, Any] = result.summary()
            doc["commit"] = commit
            if args.trace and result.trace is not None:
                lines = result.trace[-args.tail:] if args.tail else result.trace
                print("\n".join(lines))
            if args.json:
                print(json.dumps(doc))
            if not result.ok:
                failed.append(seed)
                if not args.json:
                    print(f"FAIL seed {seed} (commit {commit}): {result.violation}\n"
                          f"  replay: {replay.format(seed=seed)}", flush=True)
            elif args.seed is not None and not args.json:
                print(f"seed {seed} held every invariant (commit {commit}): "
                      f"{result.faults} faults, {result.events} events, "
                      f"{result.sim_s:.0f} simulated s, recovered in "
                      f"{result.recovery_s:.1f} s; trace hash {result.trace_hash}")
    wall = time.monotonic() - started
    if not args.json and args.seed is None:
        print(f"{runs} seeds ({seeds[0]}..{seeds[0] + runs - 1}), {len(failed)} failed, "
              f"{faults} faults, {events} events in {wall:.1f} s (commit {commit})"
              + (f"; planted: {args.plant}" if args.plant else ""))
    return 1 if failed else 0
