"""`python -m simulator`: the lab's parts from the command line.

    python -m simulator proxy LISTEN UPSTREAM [--name NAME] [--mode MODE]
    python -m simulator proxy-set NAME MODE [--ms N] [--jitter-ms N] [--bytes-per-s N] ...
    python -m simulator broker [--port N] [--persistence]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from simulator.network import MODES, FaultProxy, send_control


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host or "127.0.0.1", int(port)


def _wait_for_signal() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    while not stop.wait(3600):  # until Ctrl-C or SIGTERM
        pass


def cmd_proxy(args: argparse.Namespace) -> int:
    proxy = FaultProxy(args.upstream, listen=args.listen, name=args.name).start()
    try:
        if args.mode != "pass":
            proxy.set_mode(args.mode)
        print(json.dumps(proxy.describe()), flush=True)
        _wait_for_signal()
    finally:
        proxy.stop()
    return 0


def cmd_proxy_set(args: argparse.Namespace) -> int:
    req: dict = {"mode": args.mode}
    for key in ("ms", "jitter_ms", "bytes_per_s", "every_ms", "up_ms", "down_ms", "down_mode"):
        value = getattr(args, key)
        if value is not None:
            req[key] = value
    try:
        reply = send_control(args.name, req)
    except (ValueError, OSError) as exc:
        print(f"proxy-set: {exc}", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"proxy-set: {reply.get('error')}", file=sys.stderr)
        return 2
    reply.pop("ok")
    print(json.dumps(reply))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from simulator.broker import Broker
    broker = Broker(port=args.port, persistence=args.persistence).start()
    try:
        print(json.dumps({"url": broker.url, "config": str(broker.config_path),
                          "log": str(broker.log_path)}), flush=True)
        _wait_for_signal()
    finally:
        broker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("proxy", help="run one TCP fault proxy in the foreground")
    sp.add_argument("listen", type=_hostport, help="HOST:PORT to listen on (port 0: any free)")
    sp.add_argument("upstream", type=_hostport, help="HOST:PORT to forward to")
    sp.add_argument("--name", help="name for proxy-set (default: generated)")
    sp.add_argument("--mode", default="pass", choices=[m for m in MODES if m != "reset"])
    sp.set_defaults(func=cmd_proxy)

    ss = sub.add_parser("proxy-set", help="switch a running proxy's mode")
    ss.add_argument("name")
    ss.add_argument("mode", choices=MODES)
    for flag, kind in (("--ms", float), ("--jitter-ms", float), ("--bytes-per-s", float),
                       ("--every-ms", float), ("--up-ms", float), ("--down-ms", float)):
        ss.add_argument(flag, type=kind)
    ss.add_argument("--down-mode", choices=("blackhole", "refuse"))
    ss.set_defaults(func=cmd_proxy_set)

    sb = sub.add_parser("broker", help="run a local mosquitto in the foreground")
    sb.add_argument("--port", type=int, default=0)
    sb.add_argument("--persistence", action="store_true")
    sb.set_defaults(func=cmd_broker)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
