"""``bundle``: a gateway's flash bundle (agent, board file, rendered site file, keys,
systemd unit, manifest) for ``flash.sh``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="build a gateway's flash bundle for flash.sh",
                       description="Build GW's bundle in DIR: the agent's files, the board "
                       "file, the site file rendered from --config (identity and key paths "
                       "filled in) and validated, keys and certificates, the systemd unit, "
                       "and a manifest with every file's SHA-256. The bundle holds private "
                       "keys: it is created 0700.")
    p.add_argument("gateway", metavar="GW")
    p.add_argument("--board", required=True, help="the board GW was provisioned for")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="DIR",
                   help="bundle directory (must be empty or an older bundle with --force)")
    p.add_argument("--config", type=Path, metavar="TEMPLATE",
                   help="site template: [devices.*], [uplinks.*] (mqtts://), [journal]...; "
                   "[gateway] id/site and key paths are filled in")
    p.add_argument("--site-dir", default="midshift-site", type=Path,
                   help="the site directory (default ./midshift-site)")
    p.add_argument("--allow-plain-mqtt", action="store_true",
                   help="accept mqtt:// uplinks (a lab without TLS)")
    p.add_argument("--force", action="store_true", help="replace an older bundle in DIR")
    p.add_argument("--wheels", type=Path, metavar="WHEELHOUSE",
                   help="carry the agent's wheels for an offline install on the gateway "
                   "(/opt/midshift/install.sh); make one with `wheelhouse --arch ARCH`")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from midshift.host_tools.bundle import BundleError, build_bundle, build_mpy, is_mpy_board
    from midshift.host_tools.provision.registry import ProvisionError, Site
    try:
        if is_mpy_board(args.board):
            with Site(args.site_dir) as site:
                path = build_mpy(site.load(), args.gateway, args.board, args.config, args.out)
            print(f"MicroPython bundle for {args.gateway} ({args.board}) in {path}, built by "
                  "midshift/host_tools/mpy_bundle.py")
            return 0
        if args.config is None:
            raise BundleError("--config TEMPLATE is required: the site template naming the "
                              "gateway's devices and uplinks")
        with Site(args.site_dir) as site:
            manifest = build_bundle(site.load(), args.gateway, args.board, args.config,
                                    args.out, args.force, args.allow_plain_mqtt,
                                    args.wheels)
    except (BundleError, ProvisionError) as exc:
        print(f"bundle: {exc}", file=sys.stderr)
        return 2
    print(f"bundle for {args.gateway} ({args.board}) in {args.out}: "
          f"{len(manifest['files'])} files, manifest.json and SHA256SUMS; "
          f"flash with ./flash.sh --bundle {args.out} --target PATH"
          + ("" if args.wheels is None else ", then run /opt/midshift/install.sh there"))
    return 0
