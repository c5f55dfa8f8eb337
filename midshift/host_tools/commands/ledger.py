"""``ledger serve`` and ``ledger migrate``: the reference ledger and its schema.

``serve --workers N`` starts N worker processes on the MQTT 5 shared subscription
``$share/GROUP/midshift/v1/+/+/events`` (GROUP ``ledger`` unless ``--shared`` says), so the
broker spreads gateways over them; N processes on N machines started with ``--shared``
do the same. On PostgreSQL a worker does not migrate: run ``ledger migrate`` first (or
pass ``--migrate`` to a single serve), so that workers starting together never race DDL.

The ledger's MQTT session outlives its connection, so batches published while the
ledger is away (a broker restart, a ledger restart) wait at the broker instead of for
the gateways' ack timeout. Its client id (``--client-id``) is ``midshift-ledger`` for a
single worker and ``midshift-ledger-GROUP-wI`` for worker I of ``--workers N``; two
ledgers running with one id knock each other off the broker, so a second ledger on the
same broker needs an id of its own. A ``--shared`` worker started by hand keeps a
session only with ``--client-id`` (one per worker; without it its session is clean, as
several such workers often run on one host). ``--client-id ''`` asks for a clean
session (the broker then forgets the ledger at each disconnect). A shared worker's
session expires ``--session-expiry-s`` after it leaves. Across a broker restart the
session lasts only with the broker's persistence on (mosquitto: ``persistence true``);
when the broker comes back without it, the ledger subscribes again and asks the gateways
it has heard from to resend what they have in flight.

Against a provisioned broker the ledger connects over TLS with its own certificate:
``--broker mqtts://HOST:8884 --site SITE_DIR`` (which finds ``ca/ca.crt``,
``ledger/ledger.crt``, ``ledger/ledger.key`` and, unless ``--keys`` says otherwise,
``ledger/keys.toml``), or ``--ca/--cert/--key`` one by one.

With ``--erp-url URL`` each committed till transaction also goes to the ERP's webhook
(rate-limited, retried, refused ones parked for ``review``), and with ``--feed`` it is
published as plain JSON on ``midshift/v1/ledger/feed/STORE/txn``: ``docs/erp.md``.

SIGTERM or SIGINT stops ``serve``: the group being stored is finished, the broker left,
the store closed (``midshift/host_tools/ledger/stop_signals.py`` takes the signals). Exit codes:

  0  stopped by SIGTERM or SIGINT after a clean stop
  1  no subscription at the broker within 10 s of starting
  2  bad configuration or arguments (one line on stderr); a supervisor does not restart
     a worker that exits 2
  3  could not stop within 10 s of the signal (the store did not answer: a database
     that hangs, a link that went silent): one line saying so, then the process ends
     without closing the store; the batches not yet acknowledged come again
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from midshift.host_tools.ledger.stop_signals import STOP_BOUND_S, StopSignals

if TYPE_CHECKING:
    from midshift.host_tools.ledger.store import LedgerStore

DB_HELP = "sqlite:///PATH (embedded, the default kind) or postgresql://USER@HOST:PORT/DB"


def register(sub: argparse._SubParsersAction) -> None:
    ledger = sub.add_parser("ledger", help="the reference ledger",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = ledger.add_subparsers(dest="action", required=True)
    serve = lsub.add_parser("serve", help="verify, store and acknowledge batches until Ctrl-C")
    serve.add_argument("--db", required=True, help=DB_HELP)
    serve.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    serve.add_argument("--keys",
                       help='gateway key registry (TOML: [gateways] gw-01 = "hex"); '
                       "default SITE/ledger/keys.toml with --site")
    serve.add_argument("--site", metavar="DIR",
                       help="a provisioned site directory: the ledger's TLS files and keys")
    serve.add_argument("--ca", help="CA certificate the broker's certificate chains to")
    serve.add_argument("--cert", help="the ledger's TLS client certificate")
    serve.add_argument("--key", help="the ledger's TLS client key")
    serve.add_argument("--shared", metavar="GROUP",
                       help="join the MQTT 5 shared subscription $share/GROUP/... as one worker")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N worker processes on a shared subscription (PostgreSQL only; "
                            "group 'ledger' unless --shared says)")
    serve.add_argument("--client-id", metavar="ID",
                       help="the MQTT client id of a session kept across disconnects and "
                       "broker restarts (default midshift-ledger; with --shared none: a "
                       "clean session); '' for a clean session")
    serve.add_argument("--session-expiry-s", type=int, default=300, metavar="S",
                       help="a --shared worker's session (and the batches queued for it) "
                       "outlives the worker by S seconds (default 300)")
    serve.add_argument("--migrate", action="store_true",
                       help="bring a PostgreSQL schema up to date before serving")
    serve.add_argument("--clock-control", metavar="PATH",
                       help="follow a simulator's clock control file (JSON offset and drift, "
                       "as the agent's --clock-control) instead of the host's wall clock: "
                       "for the simulator, whose site clock the ledger must share")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    serve.add_argument("--metrics", metavar="HOST:PORT",
                       help="serve OpenMetrics on http://HOST:PORT/metrics (off by default; "
                       "docs/metrics.md). One worker's counters: not with --workers N > 1")
    erp = serve.add_argument_group("out to the ERP and the feed (docs/erp.md)")
    erp.add_argument("--erp-url", metavar="URL",
                     help="post each committed till transaction to this webhook "
                     "(http(s)://HOST[:PORT]/PATH); off when not given")
    erp.add_argument("--erp-token-file", metavar="FILE",
                     help="a file holding the ERP's bearer token (sent as Authorization)")
    erp.add_argument("--erp-rate", type=float, default=10.0, metavar="REQ_PER_S",
                     help="requests per second at most, over this worker (default 10)")
    erp.add_argument("--erp-batch", type=int, default=1, metavar="N",
                     help="transactions per request (default 1: the ERP takes one at a "
                     "time; more only if it accepts {\"transactions\": [...]})")
    erp.add_argument("--erp-sanitize", default="lines", choices=("lines", "totals"),
                     help="what leaves: lines and tenders with masked PANs (default), or "
                     "only totals per tender")
    erp.add_argument("--erp-concurrency", type=int, default=1, metavar="N",
                     help="requests in flight at once (default 1)")
    erp.add_argument("--erp-lease-s", type=float, default=30.0, metavar="S",
                     help="a claimed transaction goes to another worker S seconds after "
                     "this one died (default 30)")
    erp.add_argument("--erp-refuse-limit", type=int, default=3, metavar="N",
                     help="park a transaction for review after N refusals (4xx) (default 3)")
    erp.add_argument("--erp-timeout-s", type=float, default=10.0, metavar="S",
                     help="one request's bound (default 10)")
    erp.add_argument("--feed", action="store_true",
                     help="publish each committed transaction as plain JSON on "
                     "midshift/v1/ledger/feed/STORE/txn (sanitized as --erp-sanitize)")
    serve.set_defaults(run=serve_ledger)
    migrate = lsub.add_parser("migrate", help="apply the schema migrations not yet applied")
    migrate.add_argument("--db", required=True, help=DB_HELP)
    migrate.set_defaults(run=migrate_ledger)


def _open(db: str, migrate: bool, who: str) -> LedgerStore | None:
    """The store, or None after one line on stderr saying why not."""
    from midshift.host_tools.ledger.opener import open_store
    from midshift.host_tools.ledger.store import StoreError
    try:
        return open_store(db, migrate=migrate)
    except (ValueError, StoreError) as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return None


def migrate_ledger(args: argparse.Namespace) -> int:
    store = _open(args.db, True, "ledger migrate")
    if store is None:
        return 2
    try:
        version = store.schema_version()
    finally:
        store.close()
    print(f"ledger migrate: {store.description} is at schema version {version}")
    return 0


def _tls_files(args: argparse.Namespace) -> tuple[str, str, str] | None:
    """(CA, certificate, key) from --ca/--cert/--key, each defaulting from --site; None
    when none is given. Fills --keys from --site too. ValueError names what is missing."""
    from pathlib import Path
    site = Path(args.site) if args.site else None
    if site is not None and args.keys is None:
        args.keys = str(site / "ledger" / "keys.toml")
    if args.keys is None:
        raise ValueError("--keys FILE or --site DIR: the gateways' key registry")
    given = {"ca": args.ca, "cert": args.cert, "key": args.key}
    if site is not None:
        found = {"ca": site / "ca" / "ca.crt", "cert": site / "ledger" / "ledger.crt",
                 "key": site / "ledger" / "ledger.key"}
        given = {k: v or str(found[k]) for k, v in given.items()}
    if not any(given.values()):
        return None
    for name, path in given.items():
        if not path:
            raise ValueError(f"--{name}: needed with the other TLS files (or --site DIR)")
        if not Path(path).is_file():
            raise ValueError(f"--{name} {path}: no such file")
    return given["ca"], given["cert"], given["key"]


def serve_ledger(args: argparse.Namespace) -> int:
    from midshift.host_tools.ledger.service import LedgerService, load_keys
    from midshift.host_tools.ledger.store import backend_of

    # Before any thread starts, so that every thread inherits the blocked signals.
    stops = StopSignals().install()
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tls_files = _tls_files(args)
        keys = load_keys(args.keys)
        backend = backend_of(args.db)
    except OSError as exc:
        print(f"ledger: --keys {args.keys}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:  # not TOML, no [gateways] table, or a --db of another kind
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"ledger: --workers {args.workers}: must be 1 or more", file=sys.stderr)
        return 2
    if args.session_expiry_s < 0:
        print(f"ledger: --session-expiry-s {args.session_expiry_s}: must be 0 or more",
              file=sys.stderr)
        return 2
    try:
        erp_config = _erp_config(args)
    except ValueError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    if args.client_id is None:
        args.client_id = default_client_id(args.shared, args.workers)
    bind = None
    if args.metrics is not None:
        from midshift.firmware.core.bind_address import BIND_FORM, parse_bind
        try:
            bind = parse_bind(args.metrics)
        except ValueError as exc:
            print(f"ledger: --metrics: {exc}; expected {BIND_FORM}", file=sys.stderr)
            return 2
        if args.workers > 1:
            print("ledger: --metrics with --workers N > 1: each worker counts alone; start "
                  "workers with --shared GROUP and a --metrics port each", file=sys.stderr)
            return 2
    if args.workers > 1:
        if backend != "postgresql":
            print("ledger: --workers N > 1 needs --db postgresql://... (a SQLite file has "
                  "one writer)", file=sys.stderr)
            return 2
        return _supervise(args, tls_files, stops)
    store = _open(args.db, args.migrate, "ledger")
    if store is None:
        return 2
    try:
        service = LedgerService(store, keys, args.broker, args.shared,
                                client_id=args.client_id, tls_files=tls_files,
                                clock=_clock(args.clock_control),
                                session_expiry_s=args.session_expiry_s).start()
    except ValueError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        store.close()
        return 2
    except RuntimeError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        store.close()
        return 1
    endpoint = None
    if bind is not None:
        from midshift.firmware.core.errors import ConfigError
        from midshift.firmware.edges.metrics import MetricsEndpoint
        from midshift.host_tools.ledger.metrics import LedgerCollector
        try:
            endpoint = MetricsEndpoint(LedgerCollector(service), bind, "--metrics").start()
        except ConfigError as exc:
            print(f"ledger: {exc}", file=sys.stderr)
            service.stop()
            store.close()
            return 2
        print(f"ledger: metrics on http://{bind[0]}:{endpoint.port}/metrics", flush=True)
    try:
        outgoing = _start_outgoing(args, erp_config, service)
    except Exception as exc:  # noqa: BLE001 - its database connection: one line, exit 2
        print(f"ledger: the outbox for --erp-url/--feed: {type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        service.stop()
        store.close()
        return 2
    print(f"ledger: serving {len(keys)} gateway(s) from {args.broker} into "
          f"{store.description}" + (f" as a worker of $share/{args.shared}" if args.shared
                                    else ""), flush=True)
    try:
        while not stops.requested.wait(5):
            logging.getLogger("ledger").info("counters %s", service.counters | {
                k: v for w in outgoing for k, v in w.snapshot().items()})
    finally:
        for worker in outgoing:
            worker.stop()
        if endpoint is not None:
            endpoint.stop()
        # A second short of the bound, so that an unclean stop is reported from here.
        if not service.stop(timeout_s=max(0.5, stops.remaining(STOP_BOUND_S) - 1.0)):
            # The writer may be inside a call on the store's connection: closing it under
            # the writer is not safe, and waiting could be for ever.
            stops.give_up("the writer did not finish (the store does not answer)")
        store.close()
    print(f"ledger: stopped; {service.counters}", flush=True)
    return 0


def _erp_config(args: argparse.Namespace) -> Any:
    """The ERP link's settings from the flags, None when ``--erp-url`` is not given;
    ValueError (one line) for a bad value or an unreadable token file."""
    from pathlib import Path

    from midshift.host_tools.ledger.erp_delivery import ErpConfig
    if args.erp_url is None:
        if args.erp_token_file:
            raise ValueError("--erp-token-file goes with --erp-url URL")
        return None
    token = None
    if args.erp_token_file:
        try:
            token = Path(args.erp_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--erp-token-file {args.erp_token_file}: cannot read: "
                             f"{exc.strerror}") from None
        if not token:
            raise ValueError(f"--erp-token-file {args.erp_token_file}: empty")
    return ErpConfig(args.erp_url, token, rate_per_s=args.erp_rate, batch=args.erp_batch,
                     sanitize=args.erp_sanitize, concurrency=args.erp_concurrency,
                     lease_s=args.erp_lease_s, refuse_limit=args.erp_refuse_limit,
                     timeout_s=args.erp_timeout_s)


def _start_outgoing(args: argparse.Namespace, erp_config: Any, service: Any) -> list[Any]:
    """The ERP delivery and the feed, when configured, woken by each commit."""
    out: list[Any] = []
    if erp_config is not None:
        from midshift.host_tools.ledger.erp_delivery import ErpDelivery
        out.append(ErpDelivery(args.db, erp_config).start())
        print(f"ledger: delivering to the ERP at {args.erp_url} (at most {args.erp_rate:g} "
              f"requests/s, {args.erp_batch} per request)", flush=True)
    if args.feed:
        from midshift.host_tools.ledger.ledger_feed import LedgerFeed
        out.append(LedgerFeed(args.db, service.client, args.erp_sanitize).start())
    service.after_commit += [w.wake for w in out]
    return out


def default_client_id(shared_group: str | None, workers: int) -> str:
    """The ledger's client id when ``--client-id`` is not given: ``midshift-ledger`` for
    the one ledger of a broker; the base of the slot ids (``-wI``) for ``--workers N``;
    none (a clean session) for a ``--shared`` worker started by hand, since several of
    them on one host would otherwise share an id and knock each other off the broker."""
    if workers > 1:
        return f"midshift-ledger-{shared_group or 'ledger'}"
    return "" if shared_group else "midshift-ledger"


def _clock(control: str | None) -> Any:
    """The ledger's wall clock: the host's, or one following a control file."""
    from midshift.firmware.edges.clock import FileControlledClock, SystemClock
    return SystemClock() if control is None else FileControlledClock(control)


def _supervise(args: argparse.Namespace, tls_files: tuple[str, str, str] | None,
               stops: StopSignals) -> int:
    """N worker processes; a worker that dies is started again (the broker has already
    given its unacknowledged batches to the others). A broker without MQTT 5 is found
    before any worker starts: one line, exit 2, no restart loop."""
    from midshift.host_tools.ledger.service import check_mqtt5
    group = args.shared or "ledger"
    try:
        check_mqtt5(args.broker, tls_files)
    except ValueError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    if args.migrate:
        store = _open(args.db, True, "ledger")
        if store is None:
            return 2
        store.close()
    argv = [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", args.db,
            "--broker", args.broker, "--keys", args.keys, "--shared", group,
            "--log-level", args.log_level, "--session-expiry-s", str(args.session_expiry_s)]
    for flag in ("site", "ca", "cert", "key", "clock_control", "erp_url", "erp_token_file"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.erp_url:
        argv += ["--erp-rate", str(args.erp_rate / args.workers), "--erp-batch",
                 str(args.erp_batch), "--erp-sanitize", args.erp_sanitize,
                 "--erp-concurrency", str(args.erp_concurrency), "--erp-lease-s",
                 str(args.erp_lease_s), "--erp-refuse-limit", str(args.erp_refuse_limit),
                 "--erp-timeout-s", str(args.erp_timeout_s)]
    if args.feed:
        argv += ["--feed", "--erp-sanitize", args.erp_sanitize]
    # One id per slot, kept when the slot's worker is restarted: the new worker takes
    # over the session and the batches the broker queued for the one that died.
    argvs = [argv + ["--client-id", f"{args.client_id}-w{i}" if args.client_id else ""]
             for i in range(args.workers)]
    workers = [subprocess.Popen(a) for a in argvs]
    print(f"ledger: {args.workers} workers on $share/{group} (pids "
          f"{', '.join(str(w.pid) for w in workers)})", flush=True)
    status = 0
    try:
        while status == 0 and not stops.requested.wait(0.5):
            for i, w in enumerate(workers):
                code = w.poll()
                if code is None:
                    continue
                if code == 2:  # bad configuration: every restart would fail the same way
                    print(f"ledger: worker pid {w.pid} refused to start; stopping",
                          file=sys.stderr)
                    status = 2
                    break
                print(f"ledger: worker pid {w.pid} exited ({code}); starting another",
                      file=sys.stderr, flush=True)
                workers[i] = subprocess.Popen(argvs[i])
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        # Each worker bounds its own stop (exit 3); whatever is left a second and a half
        # before this process's bound is killed, so no worker outlives its supervisor.
        deadline = time.monotonic() + max(0.5, stops.remaining(STOP_BOUND_S) - 1.5)
        for w in workers:
            try:
                w.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(1)
    return status
