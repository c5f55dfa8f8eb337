"""``opcua browse opc.tcp://HOST:PORT [--node ID] [--depth N] [--security ...] [--toml]``:
what an OPC UA server offers, as a table or as site-file tables (midshift/host_tools/opcua_browse.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

# midshift/host_tools/opcua_browse.py (asyncua: about 37 MB resident and half a second to import) is
# imported only when browsing: every host_tools command, ``ledger serve`` among them,
# registers this one.


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("opcua", help="browse an OPC UA server's address space",
                       description="Talk to an OPC UA server from the host (asyncua).")
    verbs = p.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("browse", help="list nodes: node id, browse name, data type, access",
                         description="Walk the address space from --node (Objects) down "
                         "--depth levels and print each node's browse name, class, data "
                         "type, access level and node id; --toml prints [devices.NAME] and "
                         "[[devices.NAME.nodes]] tables for every readable variable, ready "
                         "to paste into a site file.")
    b.add_argument("endpoint", help="opc.tcp://HOST:PORT[/PATH]")
    b.add_argument("--node", metavar="ID",
                   help="start here (default i=85, the Objects folder): ns=2;s=NAME, i=N")
    b.add_argument("--depth", type=int, default=3, metavar="N",
                   help="levels below the start node (default 3)")
    b.add_argument("--security", metavar="POLICY,MODE,CERT,KEY[,SERVER_CERT]",
                   help="e.g. Basic256Sha256,SignAndEncrypt,client.der,client.pem "
                   "(default: no security)")
    b.add_argument("--all-namespaces", action="store_true",
                   help="also the standard's own nodes (namespace 0) below the start node")
    b.add_argument("--timeout-s", type=float, default=5.0, help="per request (default 5)")
    out = b.add_mutually_exclusive_group()
    out.add_argument("--toml", action="store_true", help="site-file tables, not a table")
    out.add_argument("--json", action="store_true", help="one JSON object per node")
    b.add_argument("--device", default="cell", metavar="NAME",
                   help="with --toml: the device's name in the tables (default cell)")
    b.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from midshift.host_tools.opcua_browse import (
        OBJECTS,
        BrowseError,
        browse,
        table_lines,
        toml_text,
    )

    if args.depth < 0:
        print("opcua browse: --depth must be 0 or more", file=sys.stderr)
        return 2
    # asyncua warns about what it negotiates (a shorter session timeout): not the user's news.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        nodes = browse(args.endpoint, args.node or OBJECTS, args.depth, args.security, args.timeout_s,
                       args.all_namespaces)
    except BrowseError as exc:
        print(f"opcua browse: {exc}", file=sys.stderr)
        return 1
    if args.toml:
        sys.stdout.write(toml_text(nodes, args.device, args.endpoint, args.security))
    elif args.json:
        for n in nodes:
            print(json.dumps(n.as_dict()))
    else:
        for line in table_lines(nodes):
            print(line)
    return 0
