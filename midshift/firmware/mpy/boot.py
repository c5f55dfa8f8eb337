"""The node's boot: read ``node.json``, open the journal, build the edges and the loop;
then drop from RAM everything that only boot needs (``release``).

``midshift/firmware/mpy/main.py`` calls ``build`` once and ``release`` right after. On a board
that loads its modules from the filesystem, every imported module's bytecode stays in
the heap for as long as anything refers to it, so what runs once (this module, the config
checker, the journal's opening and recovery) is kept apart from what the loop runs and
forgotten after boot. A function keeps its whole module alive, so nothing the running
node holds (a callback, an instance) may come from a ``BOOT_ONLY`` module.

Boot refuses to start on a config error (``ConfigError``: file, key, what is allowed) and
formats nothing before the config has been checked.
"""

import os
import sys

from midshift.firmware import __version__
from midshift.firmware.core import session
from midshift.firmware.core.health import DeviceWatch
from midshift.firmware.core.pipeline import Pipeline
from midshift.firmware.core.signing import Signer
from midshift.firmware.mpy import node_config
from midshift.firmware.mpy.board_clock import BoardClock
from midshift.firmware.mpy.flash_format import open_or_create_journal
from midshift.firmware.mpy.node import UPLINK_NAME, Node
from midshift.firmware.mpy.umqtt_uplink import UmqttUplink
from midshift.firmware.mpy.wifi import WifiStation

# The commit point (ring space reclaimed after acks) moves at most every 30 s, sooner when
# the ring runs short: each move rewrites the journal head, a whole flash block on
# littlefs, so at one event a second a move per ack doubled the node's erases (bench
# node). A power cut costs at most a resend of 30 s of acknowledged records, which the
# ledger drops as duplicates.
COMMIT_EVERY_MS = 30000
DEFAULTS = {"timeout_s": 1.0, "ping_ms": 2000, "keepalive_s": 10, "max_retry_ms": 4000,
            "ack_timeout_ms": 5000, "max_events": 50, "max_bytes": 8192, "window": 2,
            "idle_ms": 20, "status_period_ms": None, "commit_every_ms": COMMIT_EVERY_MS}
# Device type -> (module in midshift/firmware/mpy, class). Imported only for a type the config
# has: a scanner-only node never loads the scale's MT-SICS code (about 8 KiB of RAM).
EDGES = {"scanner": ("uart_scanner", "UartScanner"), "scale": ("uart_scale", "UartScale")}
# Needed only while booting: forgotten by ``release``, so the next collection frees their
# bytecode (bench node: about 40 KiB of RAM from a filesystem). The config checker
# (node_config and what it imports; the node keeps no ``SiteConfig``, whose class would
# pin it), the scanner's and scale's config checks and the scanner's character-set
# tables (the sessions, scan_line and mtsics, stay when a device needs them), the
# journal's opening and recovery and its damage path (loaded again if reading meets
# damage), the first-boot format of its files (flash_format), and this module.
BOOT_ONLY = ("midshift.firmware.mpy.boot", "midshift.firmware.mpy.node_config",
             "midshift.firmware.core.site_config", "midshift.firmware.core.config_fields",
             "midshift.firmware.core.broker_url", "midshift.firmware.core.bind_address",
             "midshift.firmware.core.scan_line_config", "midshift.firmware.core.scan_charset",
             "midshift.firmware.core.mtsics_config", "midshift.firmware.core.journal_open",
             "midshift.firmware.core.journal_damage", "midshift.firmware.mpy.flash_format")


def edge_class(kind):
    """The edge class for a device type of ``EDGES``, imported now."""
    module, name = EDGES[kind]
    return getattr(__import__("midshift.firmware.mpy." + module, None, None, [name]), name)


def open_uart(uart, baudrate):
    """A ``machine.UART`` from a ``[uart.NAME]`` table: non-blocking reads (timeout 0)."""
    import machine
    kw = {"baudrate": baudrate, "rxbuf": uart["rxbuf"], "timeout": 0}
    if uart["tx"] is not None:
        kw["tx"] = machine.Pin(uart["tx"])
    if uart["rx"] is not None:
        kw["rx"] = machine.Pin(uart["rx"])
    return machine.UART(uart["id"], **kw)


def _last_command_id(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def build(base="", options=None, save_command_id=None):
    """The node, started: journal opened (formatted on first boot), devices on their
    UARTs, Wi-Fi and the uplink configured (not yet connected). ``save_command_id``:
    what the node calls to persist a command id (it must not live in this module)."""
    opts = dict(DEFAULTS)
    if options:
        opts.update(options)
    cfg = node_config.load(base + "node.json")
    clock = BoardClock()
    jc = cfg.journal
    journal = open_or_create_journal(base + jc.path, jc.segment_size, jc.segment_count,
                                     cfg.gateway_id, clock.now_ms(), jc.max_body)
    devices = []
    for d in cfg.devices:
        if d.settings.get("enabled", True):
            uart = open_uart(cfg.uart[d.settings["port"]], d.settings["baudrate"])
            devices.append(edge_class(d.type)(d.name, uart, d.settings))
    gate = None
    if cfg.command_key_file:
        from midshift.firmware.core.commands import CommandGate  # not loaded without a command key
        key = node_config.read_key(base + cfg.command_key_file, "gateway.command_key_file")
        gate = CommandGate(Signer(key), cfg.gateway_id,
                           _last_command_id(base + "last-command-id"))
    subscriptions = session.subscriptions(cfg.site, cfg.gateway_id, gate is not None)
    boot_id = _nonce()  # new at every boot: the status tells a restart from a silence
    will = session.last_will(cfg.site, cfg.gateway_id, __version__, boot_id)
    u = cfg.uplinks[0]
    uplink = UmqttUplink(u.host, u.port, "%s-%s-%s" % (cfg.gateway_id, u.name, boot_id),
                         subscriptions,
                         timeout_s=opts["timeout_s"], ping_ms=opts["ping_ms"],
                         keepalive_s=opts["keepalive_s"], max_retry_ms=opts["max_retry_ms"],
                         will=will)
    wifi = None
    if cfg.wifi is not None:
        passphrase = ""
        if cfg.wifi["key_file"]:
            passphrase = node_config.read_text(base + cfg.wifi["key_file"], "wifi.key_file")
        wifi = WifiStation(cfg.wifi["ssid"], passphrase)
    signer = Signer(node_config.read_key(base + cfg.key_file, "gateway.key_file"))
    return new_node(cfg, journal, devices, uplink, wifi, clock, signer, command_gate=gate,
                command_state=save_command_id if gate else None,
                max_events=opts["max_events"], max_bytes=opts["max_bytes"],
                window=opts["window"], ack_timeout_ms=opts["ack_timeout_ms"],
                idle_ms=opts["idle_ms"], status_period_ms=opts["status_period_ms"],
                boot_id=boot_id, commit_every_ms=opts["commit_every_ms"])


def new_node(cfg, journal, devices, uplink, wifi, clock, signer, command_gate=None,
             command_state=None, max_events=50, max_bytes=8192, window=2,
             ack_timeout_ms=5000, idle_ms=20, status_period_ms=None, boot_id="",
             commit_every_ms=COMMIT_EVERY_MS):
    """The ``Node`` for a checked config, around its link session, pipeline and device
    watch. ``cfg`` is not kept: its class pins the boot-only config checker in RAM
    (``release``); what the loop needs is copied out here."""
    now = clock.monotonic_ms()
    sess = session.LinkSession(
        journal, cfg.site, cfg.gateway_id, signer, [UPLINK_NAME], now, gate=command_gate,
        status_period_ms=(int(cfg.status_period_s * 1000) if status_period_ms is None
                          else status_period_ms),
        runtime="micropython", max_events=max_events, max_bytes=max_bytes, linger_ms=0,
        window=window, ack_timeout_ms=ack_timeout_ms, no_ack_ms=int(cfg.no_ack_s * 1000),
        commit_every_ms=commit_every_ms,
        version=__version__, boot_id=boot_id)
    classes = {}
    limits = {}
    for d in cfg.devices:
        classes[d.name] = d.cls
        if d.settings.get("stale_s") is not None:
            limits[d.name] = int(d.settings["stale_s"] * 1000)
    pipeline = Pipeline(classes, journal.max_body)
    watch = DeviceWatch(limits, int(cfg.device_down_s * 1000), now)
    return Node(journal, devices, uplink, wifi, clock, sess, pipeline, watch,
                command_state=command_state, idle_ms=idle_ms)


def _nonce():
    """Eight hex digits, new at every boot: the client id cannot be guessed and taken."""
    try:
        raw = os.urandom(4)
    except (AttributeError, NotImplementedError):  # a port without a hardware RNG
        import random
        raw = bytes(random.getrandbits(8) for _ in range(4))
    return "".join("%02x" % b for b in raw)


def release():
    """After boot, on MicroPython: forget the ``BOOT_ONLY`` modules so the next
    collection frees their bytecode. The caller must hold nothing of them (no
    ``SiteConfig``, no reference to a module or a function of theirs). On CPython
    nothing is dropped (a later import would make new classes beside the old)."""
    if sys.implementation.name != "micropython":
        return
    for name in BOOT_ONLY:
        sys.modules.pop(name, None)
        parent, _, leaf = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is not None and leaf in package.__dict__:
            delattr(package, leaf)  # an imported submodule is an attribute of its package
