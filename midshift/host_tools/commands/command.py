"""``command GW CMD [VALUE]``: sign a downlink command for one gateway, send it, wait
for its answer.

  command gw-01 ping | drain-now | reload-config
  command gw-01 set-log-level DEBUG          (or --level DEBUG)
  command gw-01 replay-from 1200             (or --seq 1200)
  command gw-01 settle-rejected --first N --last M

The command is signed with the gateway's own command key (``provision`` made it:
``SITE_DIR/gateways/GW/command.key``), names the gateway, and carries the next id from
``SITE_DIR/gateways/GW/command.id`` (written before sending, so an id is never used
twice; a command lost on the way only leaves a gap, which the gateway's id window
allows). It goes out over TLS with the ledger's certificate, the identity the broker's
ACL lets write commands: ``--broker mqtts://HOST:8884`` (the ledger's listener).

Then it waits (``--timeout``, default 15 s; ``--no-wait``: not at all) for the gateway's
retained status to name this command's id in ``last_command`` and prints one line with
its result. Exit status: 0 the gateway carried it out, 1 it answered otherwise (a reload
whose config was refused, a command this runtime does not support), nothing came back in
time, or the broker did not take it; 2 bad input. ``docs/operations.md`` has the detail,
``docs/wire-format.md`` (Command) what the gateway checks.
"""

from __future__ import annotations

import argparse
import json
import queue
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

from midshift.firmware.core.commands import COMMANDS, LOG_LEVELS
from midshift.firmware.edges import paho_client


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("command", help="sign and send a command to one gateway",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gateway", metavar="GW")
    p.add_argument("cmd", choices=COMMANDS)
    p.add_argument("value", nargs="?", help="replay-from: the seq; set-log-level: the level")
    p.add_argument("--seq", type=int, help="replay-from: the first seq to send again")
    p.add_argument("--level", choices=LOG_LEVELS, help="set-log-level: the level")
    p.add_argument("--first", type=int, help="settle-rejected: the range's first seq")
    p.add_argument("--last", type=int, help="settle-rejected: the range's last seq")
    p.add_argument("--site-dir", default="midshift-site", type=Path,
                   help="the site directory (default ./midshift-site)")
    p.add_argument("--broker", required=True, help="mqtts://HOST:PORT, the ledger's listener")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for the gateway's answer (default 15)")
    p.add_argument("--no-wait", action="store_true", help="send only, do not wait for the answer")
    p.set_defaults(run=send_command)


def _args_of(args: argparse.Namespace) -> dict[str, object]:
    if args.value is not None:
        if args.cmd == "replay-from" and args.seq is None:
            if not args.value.isdigit():
                raise ValueError(f"replay-from {args.value}: the seq is a number >= 1")
            args.seq = int(args.value)
        elif args.cmd == "set-log-level" and args.level is None:
            if args.value.upper() not in LOG_LEVELS:
                raise ValueError(f"set-log-level {args.value}: the level is one of "
                                 f"{', '.join(LOG_LEVELS)}")
            args.level = args.value.upper()
        else:
            raise ValueError(f"{args.cmd} takes no {args.value!r}")
    if not 0 < args.timeout <= 600:
        raise ValueError(f"--timeout {args.timeout}: 0 to 600 seconds")
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

    from midshift.firmware.core import topics
    from midshift.firmware.core.broker_url import parse_broker_url
    from midshift.firmware.core.commands import sign_command
    from midshift.firmware.core.signing import Signer
    from midshift.host_tools.provision.registry import ProvisionError, Site

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
    status_topic = topics.topic(site.name, args.gateway, topics.STATUS)
    answers: queue.Queue[Any] = queue.Queue()
    subscribed = threading.Event()
    client = paho_client.new_client()
    ctx = ssl.create_default_context(cafile=str(files[0]))
    ctx.load_cert_chain(str(files[1]), str(files[2]))
    client.tls_set_context(ctx)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: answers.put(_last_command(m.payload, cmd_id))
    what = f"{args.gateway}: {args.cmd} (command {cmd_id})"
    try:
        client.connect(host, port, keepalive=10)
        client.loop_start()
        if not args.no_wait:  # before sending: the answer may come at once
            client.subscribe(status_topic, qos=1)
            subscribed.wait(10)
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        sent = info.is_published()
        answer = None
        if sent and not args.no_wait:
            deadline = time.monotonic() + args.timeout
            while answer is None and time.monotonic() < deadline:
                try:
                    answer = answers.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    break
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
    if args.no_wait:
        print(f"{what}: sent on {topic}")
        return 0
    if answer is None:
        print(f"{what}: no answer within {args.timeout:g} s (the gateway offline, the "
              "command refused by its checks, or a broker ACL from before statuses were "
              "readable by the ledger's identity: run provision broker again)", file=sys.stderr)
        return 1
    result = answer.get("result")
    if result == "ok" or isinstance(result, dict):
        text = "ok" if result == "ok" else json.dumps(result, sort_keys=True)
        print(f"{what}: {text}")
        return 0
    print(f"{what}: {result}", file=sys.stderr)
    return 1


def _last_command(payload: bytes, cmd_id: int) -> dict[str, Any] | None:
    """The status's ``last_command`` when it answers ``cmd_id`` (an older retained status,
    or another command's answer, is not this one's)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    last = doc.get("last_command") if isinstance(doc, dict) else None
    if not isinstance(last, dict):
        last = (doc.get("forwarding") or {}).get("last_command") if isinstance(doc, dict) \
            else None
    return last if isinstance(last, dict) and last.get("id") == cmd_id else None
