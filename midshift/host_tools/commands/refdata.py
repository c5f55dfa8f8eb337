"""``refdata publish|show``: reference data down to a store's gateways.

  refdata publish --store store-7 --dataset prices prices.csv --broker mqtts://HOST:8884
  refdata show --store store-7 [--dataset prices]

``publish`` reads a CSV (a header whose first column is ``sku`` or ``key``) or JSON file
(``{"SKU": {...}}`` or a list of objects with ``sku``), diffs it against the store's last
published version, writes the next version and its delta in the publisher's history
(``SITE_DIR/refdata/<store>.sqlite``), then leaves it retained on the broker for each
gateway (``--gateway``, repeatable; default every gateway of the site), signed with that
gateway's command key. A file equal to the last version publishes nothing new and leaves
the last version (and every kept delta) on the broker again. Rows: ``prices`` need
``price`` (minor units), ``stock`` ``qty_milli``. ``docs/reference-data.md`` has the rest.

Exit status: 0 published (or nothing to change), 1 the broker did not take it (the version
is written; run again to publish it), 2 bad input.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from midshift.firmware.core.refdata import DATASETS
from midshift.firmware.edges import paho_client


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refdata", help="publish prices, promotions, stock, sell rules",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True)
    pub = verbs.add_parser("publish", help="diff a file against the last version, publish it",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    pub.add_argument("file", metavar="FILE", type=Path, help="a .csv or .json file")
    pub.add_argument("--store", required=True, help="the store id ([store] id)")
    pub.add_argument("--dataset", required=True, choices=DATASETS)
    pub.add_argument("--gateway", action="append", metavar="GW",
                     help="a gateway of the store (repeatable; default: every gateway)")
    pub.add_argument("--broker", required=True,
                     help="mqtts://HOST:PORT (the ledger's listener) or mqtt:// in a lab")
    pub.add_argument("--site-dir", default="midshift-site", type=Path,
                     help="the site directory (default ./midshift-site)")
    pub.set_defaults(run=publish)
    show = verbs.add_parser("show", help="the store's versions, newest first",
                            description="Each dataset's published versions, newest first: "
                            "time, rows, changes, checksum, source file.")
    show.add_argument("--store", required=True)
    show.add_argument("--dataset", choices=DATASETS, help="only this dataset")
    show.add_argument("--site-dir", default="midshift-site", type=Path)
    show.set_defaults(run=show_versions)


def publish(args: argparse.Namespace) -> int:
    from midshift.firmware.core.broker_url import BrokerUrlError, parse_broker_url
    from midshift.host_tools.provision.registry import ProvisionError, Site
    from midshift.host_tools.refdata_publisher import Publisher, RefdataFileError, read_rows

    try:
        host, port, tls = parse_broker_url(args.broker)
        rows = read_rows(args.file, args.dataset)
        with Site(args.site_dir) as site:
            site.load()
            gateways = args.gateway or sorted(site.gateways)
            if not gateways:
                raise ValueError(f"site {site.name} has no gateways to publish to")
            keys = {gw: bytes.fromhex(site.command_key(gw).read_text().strip())
                    for gw in gateways if site.gateway(gw) is not None}
            name = site.name
            files = (site.ca_cert, site.ledger_cert, site.ledger_key)
            pub = Publisher(args.site_dir, args.store)
            made = pub.publish(args.dataset, rows, source=args.file.name)
    except (RefdataFileError, ProvisionError, BrokerUrlError, ValueError, OSError) as exc:
        print(f"refdata: {exc}", file=sys.stderr)
        return 2
    try:
        last = made or pub.latest(args.dataset) or {}  # publish() made one or there was one
        msgs = [m for gw in gateways
                for m in pub.messages(args.dataset, name, gw, keys[gw], all_deltas=made is None)]
    finally:
        pub.close()
    what = (f"{args.store} {args.dataset} version {last['version']} ({last['rows']} rows)"
            if made else f"{args.store} {args.dataset}: no change, version {last['version']} "
            "published again")
    sent = send(host, port, files if tls else None, msgs)
    if sent is not None:
        print(f"refdata: {what}, written; the broker did not take it ({sent}): run again "
              "to publish it", file=sys.stderr)
        return 1
    print(f"{what}: published to {', '.join(gateways)}")
    return 0


def send(host: str, port: int, tls_files: tuple[Path, Path, Path] | None,
         msgs: list[tuple[str, bytes]], timeout_s: float = 30.0) -> str | None:
    """Publish every message retained, QoS 1, in order; None once the broker has them all,
    else why not."""

    client = paho_client.new_client()
    if tls_files is not None:
        ctx = ssl.create_default_context(cafile=str(tls_files[0]))
        ctx.load_cert_chain(str(tls_files[1]), str(tls_files[2]))
        client.tls_set_context(ctx)
    client.max_inflight_messages_set(100)
    infos: list[Any] = []
    try:
        client.connect(host, port, keepalive=30)
        client.loop_start()
        for topic, payload in msgs:
            infos.append(client.publish(topic, payload, qos=1, retain=True))
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                return f"not acknowledged within {timeout_s:g} s"
    except (OSError, ValueError, RuntimeError) as exc:
        return str(exc)
    finally:
        client.disconnect()
        client.loop_stop()
    return None


def show_versions(args: argparse.Namespace) -> int:
    from midshift.host_tools.refdata_publisher import Publisher

    if not (args.site_dir / "refdata" / f"{args.store}.sqlite").exists():
        print(f"refdata: nothing published for store {args.store} in {args.site_dir}",
              file=sys.stderr)
        return 2
    pub = Publisher(args.site_dir, args.store)
    try:
        for ds in [args.dataset] if args.dataset else DATASETS:
            hist = pub.history(ds)
            if not hist:
                print(f"{ds}: never published")
                continue
            for h in hist:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h["published_ms"] / 1000))
                print(f"{ds} v{h['version']}  {when}  rows {h['rows']}  changes "
                      f"{h['changes']}  checksum {h['checksum']}  {h['source'] or ''}".rstrip())
    finally:
        pub.close()
    return 0
