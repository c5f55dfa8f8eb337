"""``wheelhouse --arch ARCH -o DIR``: midshift's wheel and a wheel of every dependency for
a gateway's platform (``midshift/host_tools/wheelhouse.py``), for ``bundle --wheels DIR``. Needs
the package index; the gateway then installs without one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from midshift.host_tools.wheelhouse import ARCHES, PYTHONS
    p = sub.add_parser("wheelhouse", help="wheels of the agent and its dependencies for a "
                       "gateway's platform (for bundle --wheels)",
                       description="Build midshift's wheel from this checkout and download "
                       "a wheel of every dependency for ARCH and the gateway's Python into "
                       "DIR (wheels only: the gateway has no compiler). Raspberry Pi OS "
                       "64-bit is aarch64, 32-bit is armv7l (even on a 64-bit kernel: ask "
                       "`python3 -c 'import platform; print(platform.machine())'` there).")
    p.add_argument("--arch", required=True, choices=ARCHES)
    p.add_argument("--python", default="3.11", choices=PYTHONS,
                   help="the gateway's python3 (Raspberry Pi OS Bookworm: 3.11, the default)")
    p.add_argument("--extra-index-url", action="append", default=[], metavar="URL",
                   help="another index to take wheels from (armv7l: piwheels)")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="DIR")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from midshift.host_tools.wheelhouse import WheelhouseError, build_wheelhouse
    try:
        doc = build_wheelhouse(args.out, args.arch, args.python, tuple(args.extra_index_url))
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 2
    print(f"wheelhouse for {args.arch}, Python {args.python}: {len(doc['wheels'])} wheels "
          f"in {args.out}; use it with bundle --wheels {args.out}")
    return 0
