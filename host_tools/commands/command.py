"""``command GW CMD``: sign a downlink command for one gateway and publish it.

The command is signed with the gateway's own command key (``provision`` made it:
``SITE_DIR/gateways/GW/command.key``), names the gateway, and carries the next id from
``SITE_DIR/gateways/GW/command.id`` (written before sending, so an id is never used
twice; a command lost on the way only leaves a gap, which the gateway's id window
allows). It goes out over TLS with the ledger's certificate, the identity the broker's
ACL lets write commands: ``--broker mqtts://HOST:8884`` (the ledger's listener).
``docs/wire-format.md`` (Command) says what the gateway checks.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

from firmware.core.commands import COMMANDS, LOG_LEVELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("command", help="sign and send a command to one gateway",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gateway", metavar="GW")
    p.add_argument("cmd", choices=COMMANDS)
    p.add_argument("--seq", type=int, help="replay-from: the first seq to send again")
    p.add_argument("--level", choices=LOG_LEVELS, help="set-log-level: the level")
    p.add_argument("--first", type=int, help="settle-rejected: the range's first seq")
    p.add_argument("--last", type=int, help="settle-rejected: the range's last seq")
    p.add_argument("--site-dir", default="midshift-site", type=Path,
                   help="the site directory (default ./midshift-site)")
    p.add_argument("--broker", required=True, help="mqtts://HOST:PORT, the ledger's listener")
    p.set_defaults(run=send_command)


def _args_of(args: argparse.Namespace) -> dict[str, object]:
    if args.cmd == "replay-from":
        if args.seq is None or args.seq < 1:
            raise ValueError("replay-from needs --seq N (N >= 1)")
        return {"seq": args.seq}
    if args.cmd == "settle-rejected":
        if args.first is None or args.last is None or not 1 <= args.first <= args.last:
            raise ValueError("settle-rejected needs --first N --last M (1 <= N <= M): the "
                             "rejected range from the gateway's status, after exporting it")
        return {"first": args.first, "last": args.last}
    if args.cmd == "set-log-level":
        if args.level is None:
            raise ValueError(f"set-log-level needs --level, one of {', '.join(LOG_LEVELS)}")
        return {"level": args.level}
    return {}


def send_command(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt

    from firmware.core import topics
    from firmware.core.broker_url import parse_broker_url
    from firmware.core.commands import sign_command
    from firmware.core.signing import Signer
    from host_tools.provision.registry import ProvisionError, Site

    try:
        cmd_args = _args_of(args)
        host, port, tls = parse_broker_url(args.broker)
        if not tls:
            raise ValueError(f"--broker {args.broker}: commands go over mqtts:// only")
        with Site(args.site_dir) as site:
            site.load()
            site.gateway(args.gateway)
            key = bytes.fromhex(site.command_key(args.gateway).read_text().strip())
            id_file = site.gateway_dir(args.gateway) / "command.id"
            cmd_id = (int(id_file.read_text()) if id_file.exists() else 0) + 1
            id_file.write_text(f"{cmd_id}\n")  # before sending: an id is never reused
            topic = topics.topic(site.name, args.gateway, topics.CMD)
            files = (site.ca_cert, site.ledger_cert, site.ledger_key)
    except (ProvisionError, ValueError, OSError) as exc:
        print(f"command: {exc}", file=sys.stderr)
        return 2
    payload = sign_command(Signer(key), args.gateway, cmd_id, args.cmd, cmd_args)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    ctx = ssl.create_default_context(cafile=str(files[0]))
    ctx.load_cert_chain(str(files[1]), str(files[2]))
    client.tls_set_context(ctx)
    try:
        client.connect(host, port, keepalive=10)
        client.loop_start()
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        sent = info.is_published()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"command: {args.broker}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.disconnect()
        client.loop_stop()
    if not sent:
        print(f"command: {args.broker} did not take command {cmd_id} within 10 s",
              file=sys.stderr)
        return 1
    print(f"command {cmd_id} {args.cmd} sent to {args.gateway} on {topic}")
    return 0
