"""python -m midshift.firmware: the gateway agent.

  run   --config SITE [--board FILE] [--new-epoch]   start the agent until SIGTERM or Ctrl-C;
        SIGHUP reloads the config (checked first: a bad one is refused, the running one
        stays and the alarm config_rejected says why)
  check --config SITE [--board FILE]                validate the config and print what would run

Both check the same things (``midshift/firmware/edges/preflight.py``): every key, and on this
machine the key and TLS files, the serial lines and the journal's disk; ``check`` says ok
only where ``run`` would start. ``check`` also wants each serial device present (not with
``--offline``); ``run`` starts without one, whose driver waits for it.

Exit status: 0 ok, 2 a bad config or command line (one line naming file, key, problem and
what is allowed), 1 a failure while running: a journal that cannot be opened (gone
while this gateway's epoch mark says it had one: start again with ``--new-epoch`` to
abandon it), or a runtime loop that keeps crashing (systemd restarts the agent).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from midshift.firmware import __version__
from midshift.firmware.core.errors import ConfigError, MidshiftError
from midshift.firmware.core.site_config import SiteConfig
from midshift.firmware.edges.console_log import configure as configure_log
from midshift.firmware.edges.preflight import load_checked


def _describe(cfg: SiteConfig) -> dict[str, Any]:
    j = cfg.journal
    return {
        "gateway": cfg.gateway_id, "site": cfg.site, "board": cfg.board,
        "journal": {"path": j.path, "segment_size": j.segment_size,
                    "segment_count": j.segment_count,
                    "size_mib": round(j.segment_size * j.segment_count / 2**20, 1),
                    "max_body": j.max_body},
        "pins": cfg.pins,
        "devices": [{"name": d.name, "type": d.type, "class": d.cls, **d.settings}
                    for d in cfg.devices],
        "uplinks": [{"name": u.name, "broker": f"{'mqtts' if u.tls else 'mqtt'}://{u.host}:{u.port}",
                     "priority": u.priority, "interface": u.interface,
                     "source_address": u.source_address, "metered": u.metered}
                    for u in cfg.uplinks],
        "status": {"period_s": cfg.status_period_s, "no_ack_s": cfg.no_ack_s,
                   "device_down_s": cfg.device_down_s},
        "metrics": None if cfg.metrics_bind is None else "{}:{}".format(*cfg.metrics_bind),
        "store": cfg.store,
        "till_api": None if cfg.till_api is None else {
            "bind": f"{cfg.till_api.bind}:{cfg.till_api.port}",
            "tls": bool(cfg.till_api.tls_cert), "client_certs": bool(cfg.till_api.client_ca),
            "tokens_file": cfg.till_api.tokens_file},
        "sell_rules": cfg.sell_rules,
        "status_page": None if cfg.status_page is None
        else "{}:{}".format(*cfg.status_page.bind),
    }


def _check(args: argparse.Namespace) -> int:
    cfg = load_checked(args.config, args.board, need_devices=not args.offline)
    if args.json:
        print(json.dumps(_describe(cfg), indent=2, default=str))
        return 0
    d = _describe(cfg)
    print(f"config ok: gateway {d['gateway']} at site {d['site']} on {d['board']['name']}")
    j = d["journal"]
    print(f"  journal  {j['path']}  {j['segment_count']} x {j['segment_size']} bytes "
          f"({j['size_mib']} MiB), records up to {j['max_body']} bytes")
    for dev in d["devices"]:
        where = dev.get("endpoint") or (
            f"{dev.get('host')}:{dev.get('port')}" if dev.get("host") else dev.get("port", ""))
        state = "" if dev.get("enabled", True) else "  (disabled)"
        print(f"  device   {dev['name']:<12} {dev['type']:<8} {dev['class']:<9} {where}{state}")
    for u in d["uplinks"]:
        via = u["interface"] or u["source_address"] or "default route"
        print(f"  uplink   {u['name']:<12} {u['broker']}  priority {u['priority']}  via {via}"
              f"{'  metered' if u['metered'] else ''}")
    if not d["uplinks"]:
        print("  uplinks  none: events stay in the journal")
    if d["till_api"]:
        t, st = d["till_api"], d["store"] or {}
        auth = ", ".join(a for a, on in (("TLS", t["tls"]), ("client certificates",
                                          t["client_certs"]), ("tokens", t["tokens_file"])) if on)
        print(f"  tills    store {st.get('id')} ({st.get('tz')}), API on {t['bind']}"
              f"  {auth or 'no TLS, no credentials'}")
        rules = d["sell_rules"] or {}
        shown = [f"{k} {','.join(v) if isinstance(v, list | tuple) else v}"
                 for k, v in sorted(rules.items())
                 if v is not None and k != "manager_code_sha256"]
        if rules.get("manager_code_sha256"):
            shown.append("forced offline with a manager code")
        print("  offline  " + ("  ".join(shown) or "defaults (cash only)"))
    return 0


def _run(args: argparse.Namespace) -> int:
    from midshift.firmware.agent import Agent  # drivers and journal only when running

    cfg = load_checked(args.config, args.board, need_devices=False)  # see preflight.py
    configure_log(cfg.log, args.log_level)  # [log] of the site file; --log-level wins
    clock = None
    if args.clock_control:  # the simulator steers this agent's wall clock (skew, jumps)
        from midshift.firmware.edges.clock import FileControlledClock
        clock = FileControlledClock(args.clock_control)
    done, hup, wake = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        (hup if signum == signal.SIGHUP else done).set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    new_epoch = args.new_epoch
    while True:
        agent = Agent(cfg, clock=clock, new_epoch=new_epoch)
        # SIGHUP and the reload-config command take one path: Agent.request_reload.
        agent.config_loader = lambda: load_checked(args.config, args.board, need_devices=False)
        agent.start()
        new_epoch = False  # a reload keeps the epoch just started
        try:
            while (not done.is_set() and not agent.reload_requested.is_set()
                   and not agent.failed.is_set()):
                if hup.is_set():
                    hup.clear()
                    agent.request_reload("SIGHUP")
                    continue
                wake.wait(1.0)
                wake.clear()
        finally:
            agent.stop()
        if agent.failed.is_set():
            print(f"error: {agent.supervisor.failure}; exiting so that the agent is restarted",
                  file=sys.stderr)
            return 1
        if done.is_set() or agent.next_cfg is None:
            return 0
        cfg = agent.next_cfg
        configure_log(cfg.log, args.log_level)
        logging.getLogger("midshift.firmware").warning("config reloaded from %s", args.config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midshift.firmware",
                                     description="midshift gateway agent: reads devices, "
                                     "journals every event, forwards it to the ledger.")
    parser.add_argument("--version", action="version", version=f"midshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "start the agent until SIGTERM or Ctrl-C"),
                       ("check", "validate a config and print what would run")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, metavar="SITE",
                       help="site config (TOML); it names its board with board_config")
        p.add_argument("--board", metavar="FILE", help="board config, overriding board_config")
        if name == "check":
            p.add_argument("--json", action="store_true", help="print the merged config as JSON")
            p.add_argument("--offline", action="store_true",
                           help="do not require the serial devices to be present (a config "
                           "checked away from its gateway)")
        else:
            p.add_argument("--log-level", default=None,
                           choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                           help="the agent's own lines (default: [log] level of the site "
                           "file, INFO)")
            p.add_argument("--new-epoch", action="store_true",
                           help="start a new journal epoch although this gateway's journal is "
                           "gone (the ledger is told which epoch was abandoned and where)")
            p.add_argument("--clock-control", metavar="FILE",
                           help="simulation only: follow the wall-clock offset and drift the "
                           "simulator writes to FILE (see midshift/firmware/edges/clock.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", None) or "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _check(args) if args.command == "check" else _run(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except MidshiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
