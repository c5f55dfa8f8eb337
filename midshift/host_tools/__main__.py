"""python -m midshift.host_tools: the host side of midshift.

Each command lives in ``midshift/host_tools/commands/<name>.py``; ``python -m midshift.host_tools --help``
lists them and ``python -m midshift.host_tools COMMAND --help`` explains one.

Exit status: 0 ok, 2 bad input (one line saying what and what is expected), 1 a failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from midshift.firmware import __version__

# One module per command, in the order --help lists them.
COMMANDS = ("ledger", "reconcile", "review", "day", "report", "provision", "bundle",
            "journal", "audit", "status", "command", "refdata", "wheelhouse", "opcua")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midshift.host_tools",
                                     description="midshift host tools")
    parser.add_argument("--version", action="version", version=f"midshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"midshift.host_tools.commands.{name}").register(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
