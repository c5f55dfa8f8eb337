"""`python -m bench NAME [--json]`: run one benchmark; each prints one JSON object.

Every benchmark measures midshift against a baseline in the same run and reports ratios,
because shared 2-core machines are noisy: compare the ratio, not the absolute figure.

A benchmark is added by adding ``bench/NAME_bench.py`` with a ``run(quick, progress)``
that returns a dict: the file name is the registration. Today: "forward", "journal", "node",
"ledger", "hostile", "till", "dst", "devices", "both_ways", "refdata", "erp" (a unit
test keeps this line true).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from midshift.firmware import __version__

BENCHMARKS = {p.name.removesuffix("_bench.py"): f"bench.{p.stem}"
              for p in Path(__file__).parent.glob("*_bench.py")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"midshift {__version__}")
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = p.parse_args(argv)
    mod = importlib.import_module(BENCHMARKS[args.name])
    result = mod.run(quick=args.quick, progress=None if args.json else
                     (lambda msg: print(msg, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in sorted(result.items()):
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
