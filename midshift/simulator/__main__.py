"""python -m midshift.simulator: the lab's parts from the command line.

  proxy LISTEN UPSTREAM [--name NAME] [--mode MODE]   a TCP fault proxy, until Ctrl-C
  proxy-set NAME MODE [--ms N] [--jitter-ms N] ...    switch a running proxy's mode
  proxy-show NAME                                     a running proxy's mode and counters
  broker [--port N] [--persistence]                   a local mosquitto, until Ctrl-C
  devices --config FILE                               device emulators from a TOML file
  fleet [--gateways N] [--backlog N] [--keys-out F]  virtual gateways against a broker
  run SCENARIO [--speed X] [--gateways N] [--short] [--json] [--report DIR]
                                                      play a scenario, judge the ledger
  dst --seeds N [--budget-s S] | --seed X --trace     deterministic simulation, seeded

Fault proxies are found by name through control sockets in $MIDSHIFT_RUNTIME_DIR
(default: <tmp>/midshift-sim).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from midshift.firmware import __version__
from midshift.simulator import devices as device_types
from midshift.simulator.children import Stopped, deferred_stop, stop_on_signals
from midshift.simulator.network import (
    DOWN_MODES,
    MODES,
    PARAM_HELP,
    PARAMS,
    FaultProxy,
    runtime_dir,
    send_control,
)

# ---- devices: type T is midshift/simulator/devices/T.py, its EMULATOR class providing
# from_config(name, cfg_dict, ground_truth_dir), start(), stop() and describe() -> dict;
# cfg_dict is the [devices.NAME] table without its "type" key. DEVICE_TYPES adds types
# from elsewhere (a test's stand-in, a plug-in): type name -> "module:Class".
DEVICE_TYPES: dict[str, str] = {}


class UsageError(Exception):
    """Bad input from the person at the keyboard: printed as one line, exit status 2."""


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host or "127.0.0.1", int(port)


def _number(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def _wait_for_ctrl_c() -> None:
    """Until Ctrl-C or SIGTERM (``main`` turns them into ``Stopped``): a normal end here."""
    try:
        while True:
            time.sleep(3600)
    except Stopped:
        return


def cmd_proxy(args: argparse.Namespace) -> int:
    try:
        proxy = FaultProxy(args.upstream, listen=args.listen, name=args.name).start()
    except (ValueError, RuntimeError, OSError) as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.mode != "pass":
            proxy.set_mode(args.mode)
        if args.json:
            print(json.dumps(proxy.describe()), flush=True)
        else:
            d = proxy.describe()
            print(f"fault proxy {d['name']}: listening on {d['listen']}, forwarding to "
                  f"{d['upstream']}, mode {d['mode']}\ncontrol socket: {d['control']}\n"
                  f"switch with: python -m midshift.simulator proxy-set {d['name']} MODE ...  "
                  "(Ctrl-C stops)", flush=True)
        _wait_for_ctrl_c()
    finally:
        proxy.stop()
    return 0


def _ask_proxy(name: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = send_control(name, request)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if not reply.pop("ok", False):
        raise UsageError(str(reply.get("error")))
    return reply


def cmd_proxy_set(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"mode": args.mode}
    for key in PARAM_HELP:
        value = getattr(args, key)
        if value is not None:
            request[key] = value
    print(json.dumps(_ask_proxy(args.name, request)))
    return 0


def cmd_proxy_show(args: argparse.Namespace) -> int:
    print(json.dumps(_ask_proxy(args.name, {})))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from midshift.simulator.broker import Broker, BrokerUnavailable

    try:
        broker = Broker(args.dir, port=args.port, persistence=args.persistence,
                        backend="amqtt" if args.amqtt else "auto").start()
    except (BrokerUnavailable, OSError) as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.json:
            print(json.dumps(broker.describe()), flush=True)
        else:
            print(f"{broker.backend} broker at {broker.url} (persistence "
                  f"{'on' if broker.persistence else 'off'}), files in {broker.directory}; "
                  "Ctrl-C stops", flush=True)
        _wait_for_ctrl_c()
    finally:
        broker.close()
    return 0


def load_devices(config: Path, ground_truth_dir: Path,
                 registry: dict[str, str] | None = None) -> dict[str, Any]:
    """Build (not start) the devices a TOML file describes, by name, in file order;
    UsageError says what is wrong."""
    registry = DEVICE_TYPES if registry is None else registry
    known = [*registry, *(t for t in device_types.known() if t not in registry)]
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{config}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{config}: not valid TOML: {exc}") from None
    tables = doc.get("devices")
    if not isinstance(tables, dict) or not tables:
        raise UsageError(f"{config}: no [devices.NAME] tables")
    devices: dict[str, Any] = {}
    for name, table in tables.items():
        where = f"{config}: devices.{name}"
        if not isinstance(table, dict):
            raise UsageError(f"{where}: is not a table")
        cfg = dict(table)
        kind = cfg.pop("type", None)
        cfg.pop("class", None)  # the agent's record class: nothing to emulate
        if cfg.pop("enabled", True) is False:
            continue  # the agent's table of a device switched off: nothing to serve
        if kind in registry:
            module_name, _, class_name = registry[kind].partition(":")
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as exc:
                raise UsageError(f"{where}: device type {kind!r} is not available "
                                 f"({registry[kind]}): {exc}") from None
        else:
            module = device_types.find(kind)
            if module is None:
                raise UsageError(f"{where}.type: {kind!r} is not one of {', '.join(known)}")
            cls = module.EMULATOR
        try:
            devices[name] = _shared_line(devices, cls.from_config(name, cfg, ground_truth_dir))
        except (ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"{where}: {exc}") from None
    return devices


def _shared_line(devices: dict[str, Any], device: Any) -> Any:
    """Modbus RTU units naming one port are one emulated line (one server on one pty):
    the device built for a later table joins the line of the first."""
    if not hasattr(device, "absorb"):
        return device
    for other in devices.values():
        if hasattr(other, "absorb") and other.link_path == device.link_path:
            return other.absorb(device)
    return device


def cmd_devices(args: argparse.Namespace) -> int:
    ground_truth = args.ground_truth or runtime_dir() / "ground-truth"
    ground_truth.mkdir(parents=True, exist_ok=True)
    devices = load_devices(args.config, ground_truth)
    started: list[Any] = []
    try:
        for name, device in devices.items():
            if any(device is d for d in started):
                continue  # a second unit of an RTU line already serving
            try:
                with deferred_stop():  # Ctrl-C waits until the device is up, then stops it
                    device.start()
                    started.append(device)
            except Exception as exc:  # one line for the operator; the others are stopped below
                raise UsageError(f"device {name} did not start: {exc}") from None
            print(json.dumps(device.describe()), flush=True)
        print(f"{len(started)} device(s) running; ground truth in {ground_truth}; Ctrl-C stops",
              flush=True)
        _wait_for_ctrl_c()
    finally:
        for device in reversed(started):
            device.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m midshift.simulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"midshift {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mode_help = "\n".join(
        f"  {m:10} {', '.join(f'{k}={v}' for k, v in PARAMS[m].items())}".rstrip()
        for m in MODES)
    sp = sub.add_parser("proxy", help="run one TCP fault proxy in the foreground",
                        description="Forward LISTEN to UPSTREAM with switchable faults, until "
                        "Ctrl-C. Switch it from another shell with proxy-set.")
    sp.add_argument("listen", type=_hostport, metavar="LISTEN",
                    help="HOST:PORT to listen on (port 0: any free port)")
    sp.add_argument("upstream", type=_hostport, metavar="UPSTREAM",
                    help="HOST:PORT to forward to, e.g. the broker")
    sp.add_argument("--name", help="name used by proxy-set (default: generated, printed)")
    sp.add_argument("--mode", default="pass", choices=[m for m in MODES if m != "reset"],
                    help="starting mode, with default parameters (default: pass)")
    sp.add_argument("--json", action="store_true", help="print the description as JSON")
    sp.set_defaults(func=cmd_proxy)

    ss = sub.add_parser("proxy-set", help="switch a running proxy's mode",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Switch a running fault proxy's mode. Modes, and their "
                        f"parameters with defaults:\n{mode_help}\n(reset cuts every open "
                        "connection with an RST and keeps the mode)")
    ss.add_argument("name", metavar="NAME", help="the proxy's --name")
    ss.add_argument("mode", metavar="MODE", choices=MODES,
                    help=f"one of {', '.join(MODES)}")
    for key, what in PARAM_HELP.items():  # the modes' parameters: midshift/simulator/network.py
        flag = "--" + key.replace("_", "-")
        if key == "down_mode":
            ss.add_argument(flag, choices=DOWN_MODES, help=what)
        else:
            ss.add_argument(flag, type=_number, metavar="N", help=what)
    ss.set_defaults(func=cmd_proxy_set)

    sw = sub.add_parser("proxy-show", help="print a running proxy's mode and counters")
    sw.add_argument("name", metavar="NAME")
    sw.set_defaults(func=cmd_proxy_show)

    sb = sub.add_parser("broker", help="run a local mosquitto in the foreground",
                        description="Run mosquitto on loopback from a generated config "
                        "(an in-process amqtt broker where mosquitto is not installed).")
    sb.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    sb.add_argument("--persistence", action="store_true",
                    help="keep sessions, queued and retained messages across restarts")
    sb.add_argument("--dir", type=Path, help="config, log and database directory "
                    "(default: a temporary one, removed on exit)")
    sb.add_argument("--amqtt", action="store_true", help="use the amqtt fallback even if "
                    "mosquitto is installed (MQTT 3.1.1 only)")
    sb.add_argument("--json", action="store_true", help="print the description as JSON")
    sb.set_defaults(func=cmd_broker)

    # The device emulators arrive with their own issue; this dispatches to them by type.
    sd = sub.add_parser("devices", help="run device emulators from a TOML file",
                        description="Start every [devices.NAME] table's emulator (type: "
                        f"{', '.join(device_types.known())}), print what each serves, run until "
                        "Ctrl-C, then stop them all.")
    sd.add_argument("--config", type=Path, required=True, metavar="FILE",
                    help="TOML file with [devices.NAME] tables, each with a 'type' key")
    sd.add_argument("--ground-truth", type=Path, metavar="DIR",
                    help="where devices log what they produced (default: "
                    "$MIDSHIFT_RUNTIME_DIR/ground-truth)")
    sd.set_defaults(func=cmd_devices)

    from midshift.simulator.fleet_cli import (
        register as register_fleet,  # virtual gateways (issue 10)
    )
    register_fleet(sub)

    from midshift.simulator.dst.cli import register as register_dst  # deterministic simulation (22)
    register_dst(sub)

    sr = sub.add_parser("run", help="play a scenario and reconcile the ledger",
                        description="Start a broker, the reference ledger, each gateway's "
                        "emulated devices, fault proxies and agent process; play the "
                        "scenario's timeline; stop everything; compare the devices' ground "
                        "truth with the ledger. Exit status 0 only when every assertion holds.")
    sr.add_argument("scenario", metavar="SCENARIO",
                    help="a name from midshift.simulator/scenarios/ (shift, partition-2min, ...) or "
                    "a path to a .toml file")
    sr.add_argument("--speed", type=float, default=1.0, metavar="X",
                    help="play scenario time X times faster (capped by the scenario's "
                    "max_speed; device rates grow by X, agents run at real speed)")
    sr.add_argument("--gateways", type=int, metavar="N", help="gateways (default: the "
                    "scenario's count)")
    sr.add_argument("--short", action="store_true",
                    help="the scenario's short version (its [short] time_scale), as CI runs it")
    sr.add_argument("--json", action="store_true",
                    help="print one JSON object on stdout (progress goes to stderr)")
    sr.add_argument("--report", type=Path, metavar="DIR",
                    help="write report.html, result.json and the run's files to DIR")
    sr.add_argument("--quiet", action="store_true", help="no progress lines")
    sr.set_defaults(func=cmd_run)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from midshift.simulator import scenario as scenarios
    from midshift.simulator.runner import Progress, run, summary_table, to_json

    try:
        sc = scenarios.load(args.scenario)
    except scenarios.ScenarioError as exc:
        raise UsageError(str(exc)) from None
    if args.speed <= 0:
        raise UsageError(f"--speed {args.speed:g}: must be above 0")
    if args.gateways is not None and not 1 <= args.gateways <= 500:
        raise UsageError(f"--gateways {args.gateways}: must be from 1 to 500")
    if args.short:
        sc = sc.shortened()
    if args.speed > sc.max_speed:
        print(f"note: {sc.path.name} allows speed {sc.max_speed:g} at most; using it",
              file=sys.stderr)
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The OPC UA emulator's server warns when a power-cut agent's session expires and its
    # asyncio tasks are dropped at stop; expected in a scenario, noise in its progress.
    for name in ("asyncua", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    progress = Progress(sys.stderr if args.json else sys.stdout, quiet=args.quiet)
    result = run(sc, args.speed, args.gateways, args.report, progress)
    if args.json:
        print(to_json(result))
    else:
        print(summary_table(result))
        if args.report:
            print(f"report: {args.report / 'report.html'}")
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM/SIGINT stop the command in order; every child process is gone on return.
    with stop_on_signals():
        try:
            return args.func(args)
        except UsageError as exc:
            print(f"python -m midshift.simulator {args.command}: {exc}", file=sys.stderr)
            return 2
        except Stopped as exc:
            print(f"python -m midshift.simulator {args.command}: {exc}; stopped everything it "
                  "started", file=sys.stderr)
            return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
