"""The node's configuration: board + site, merged on the host, checked on host and board.

There is no TOML parser on a board. The host (``midshift/host_tools/mpy_bundle.py``) reads the
board file (``midshift/board_configs/pico-w.toml``) and the site file, merges them with the core's
``site_config.merge``, rewrites file paths to the node's own (``gw.key``, ``journal``),
checks the result with ``validate`` below, and writes it as ``node.json``. The node reads
``node.json`` and runs the same ``validate`` again before anything starts, so a file edited
by hand on the board is held to the same rules. Errors are ``ConfigError`` naming the key.

``validate`` is the core loader (``site_config.validate``) with the node's device types
(a scanner or scale on a ``[uart.NAME]``, checked by the same core code as on a gateway;
Modbus and OPC UA have no driver on the node), plus what only the node requires: at most
one uplink, ``mqtt://`` (no TLS on the node yet), and ``[wifi]`` when there is an uplink.

Boot-only on a node: ``boot.release`` drops this module and the core's config checker
from RAM once the node is built (``boot.BOOT_ONLY``).
"""

import binascii
import json

from midshift.firmware.core import mtsics_config, scan_line_config
from midshift.firmware.core.config_fields import field
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import DeviceType
from midshift.firmware.core.site_config import validate as validate_site


def device_types(doc):
    """The node's device types, given the merged document (for its UARTs): a scanner or a
    scale on a ``[uart.NAME]``, checked by the core's ``scan_line`` and ``mtsics``."""
    uarts = doc.get("uart") if isinstance(doc.get("uart"), dict) else {}

    def port(table, path):
        names = ", ".join(sorted(uarts)) or "(the board file has no [uart] tables)"
        return field(table, "port", path, str, choices=sorted(uarts),
                     allowed="a UART named in the board file: " + names)

    return {"scanner": DeviceType(scan_line_config.DEFAULT_CLASS,
                                  lambda name, table, path: scan_line_config.check_config(
                                      table, path, port)),
            "scale": DeviceType(mtsics_config.DEFAULT_CLASS,
                                lambda name, table, path: mtsics_config.check_config(
                                    table, path, port))}


def validate(doc):
    """A ``SiteConfig`` for the node from the merged document; raises ConfigError."""
    cfg = validate_site(doc, device_types(doc))
    if len(cfg.uplinks) > 1:
        raise ConfigError("uplinks", "has %d uplinks" % len(cfg.uplinks),
                          "one uplink (Wi-Fi) on a MicroPython node")
    for u in cfg.uplinks:
        if u.tls:
            raise ConfigError("uplinks.%s.broker" % u.name, "mqtts:// is not supported on "
                              "the MicroPython node yet", "mqtt://HOST:PORT")
        if u.interface is not None or u.source_address is not None:
            raise ConfigError("uplinks.%s" % u.name, "interface and source_address do not "
                              "apply on a MicroPython node", "broker, priority, drain_rate")
    if cfg.status_page is not None:
        raise ConfigError("status_page.bind", "there is no status page on a MicroPython node",
                          "leave [status_page] out; the node's state is in its status")
    if cfg.metrics_bind is not None:
        raise ConfigError("metrics.bind", "there is no metrics endpoint on a MicroPython node",
                          "leave [metrics] out; the node's counters are in its status")
    if cfg.uplinks and cfg.wifi is None:
        raise ConfigError("wifi", "is required when an uplink is configured",
                          "a [wifi] table with ssid and key_file")
    if cfg.board.get("pin_factory") not in ("machine", "mock"):
        raise ConfigError("board.pin_factory", "%r is a Linux pin factory" % (
            cfg.board.get("pin_factory"),), "machine")
    return cfg


def load(path):
    """Read ``node.json`` and validate it; ConfigError names the file."""
    try:
        with open(path) as f:
            doc = json.loads(f.read())
    except OSError as exc:
        raise ConfigError("(file)", "cannot read %s: %s" % (path, exc), None, path)
    except ValueError as exc:
        raise ConfigError("(file)", "not valid JSON: %s" % exc, None, path)
    if not isinstance(doc, dict):
        raise ConfigError("(file)", "is not a JSON object", None, path)
    try:
        return validate(doc)
    except ConfigError as exc:
        raise exc.in_file(path)


def read_key(path, key_name):
    """A key from a file holding it as hex (never logged)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        raise ConfigError(key_name, "cannot read %s: %s" % (path, exc))
    try:
        key = binascii.unhexlify(text)
    except ValueError:  # odd length or not hex
        raise ConfigError(key_name, "%s does not hold a hex key" % path)
    if len(key) < 16:
        raise ConfigError(key_name, "%s: key of %d bytes is too short" % (path, len(key)),
                          "at least 16 bytes (32 recommended)")
    return key


def read_text(path, key_name):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(key_name, "cannot read %s: %s" % (path, exc))
