"""The node's configuration: board + site, merged on the host, checked on host and board.

There is no TOML parser on a board. The host (``host_tools/mpy_bundle.py``) reads the
board file (``board_configs/pico-w.toml``) and the site file, merges them with the core's
``site_config.merge``, rewrites file paths to the node's own (``gw.key``, ``journal``),
checks the result with ``validate`` below, and writes it as ``node.json``. The node reads
``node.json`` and runs the same ``validate`` again before anything starts, so a file edited
by hand on the board is held to the same rules. Errors are ``ConfigError`` naming the key.

``validate`` is the core loader (``site_config.validate``) with the node's device
validators (a scanner or scale on a ``[uart.NAME]``; Modbus and OPC UA have no driver on
the node), plus what only the node requires: at most one uplink, ``mqtt://`` (no TLS on
the node yet), and ``[wifi]`` when there is an uplink.
"""

import binascii
import json

from firmware.core.config_fields import field, no_unknown_keys
from firmware.core.errors import ConfigError
from firmware.core.scan_line import NAMED_CHARSETS, TERMINATORS, charset_table
from firmware.core.site_config import validate as validate_site

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
SCANNER_KEYS = ("port", "baudrate", "terminator", "prefix", "suffix", "min_length",
                "max_length", "charset", "aim_id", "inter_char_timeout_ms")
SCALE_KEYS = ("port", "baudrate", "mode", "poll_command", "poll_ms", "timeout_ms",
              "stable_only", "stale_s")


def _port(table, path, uarts):
    names = ", ".join(sorted(uarts)) or "(the board file has no [uart] tables)"
    return field(table, "port", path, str, choices=sorted(uarts),
                 allowed="a UART named in the board file: " + names)


def _latin1(table, key, path):
    text = field(table, key, path, str, default="")
    if len(text) > 16:
        raise ConfigError(path + "." + key, "%r is longer than 16 characters" % text,
                          "at most 16 8-bit characters")
    for ch in text:
        if ord(ch) > 0xFF:
            raise ConfigError(path + "." + key, "%r has a character above 0xFF" % text,
                              "8-bit characters")
    return text


def validators(doc):
    """Device type -> validator for the node, given the merged document (for its UARTs)."""
    uarts = doc.get("uart") if isinstance(doc.get("uart"), dict) else {}

    def scanner(name, table, path):
        no_unknown_keys(table, path, SCANNER_KEYS)
        cfg = {
            "port": _port(table, path, uarts),
            "baudrate": field(table, "baudrate", path, int, default=9600, choices=BAUDRATES),
            "terminator": field(table, "terminator", path, str, default="CR",
                                choices=("CR", "LF", "CRLF")),
            "prefix": _latin1(table, "prefix", path),
            "suffix": _latin1(table, "suffix", path),
            "min_length": field(table, "min_length", path, int, default=1,
                                check=lambda v: 1 <= v <= 4096, allowed="1 to 4096"),
            "max_length": field(table, "max_length", path, int, default=64,
                                check=lambda v: 1 <= v <= 4096, allowed="1 to 4096"),
            "charset": field(table, "charset", path, str, default="ascii_printable"),
            "aim_id": field(table, "aim_id", path, bool, default=False),
            "inter_char_timeout_ms": field(table, "inter_char_timeout_ms", path, int,
                                           default=200, check=lambda v: 1 <= v <= 60000,
                                           allowed="1 to 60000 ms"),
        }
        if cfg["min_length"] > cfg["max_length"]:
            raise ConfigError(path + ".min_length", "%d is above max_length %d" % (
                cfg["min_length"], cfg["max_length"]), "at most max_length")
        try:
            charset_table(cfg["charset"])
        except ValueError as exc:
            raise ConfigError(path + ".charset", str(exc),
                              ", ".join(NAMED_CHARSETS) + ", or chars:<7-bit characters>")
        term = TERMINATORS[cfg["terminator"]].decode()
        for key in ("prefix", "suffix"):
            if term in cfg[key]:
                raise ConfigError(path + "." + key, "%r contains the terminator %s" % (
                    cfg[key], cfg["terminator"]), "characters other than the terminator")
        return cfg

    def scale(name, table, path):
        no_unknown_keys(table, path, SCALE_KEYS)
        cfg = {
            "port": _port(table, path, uarts),
            "baudrate": field(table, "baudrate", path, int, default=9600, choices=BAUDRATES),
            "mode": field(table, "mode", path, str, default="poll", choices=("poll", "listen")),
            "poll_command": field(table, "poll_command", path, str, default="SI",
                                  choices=("SI", "S")),
            "poll_ms": field(table, "poll_ms", path, int, default=250,
                             check=lambda v: 10 <= v <= 600000, allowed="10 to 600000 ms"),
            "timeout_ms": field(table, "timeout_ms", path, int, default=1000,
                                check=lambda v: 10 <= v <= 600000, allowed="10 to 600000 ms"),
            "stable_only": field(table, "stable_only", path, bool, default=True),
            "stale_s": field(table, "stale_s", path, float, default=5.0,
                             check=lambda v: v > 0, allowed="a number of seconds above 0"),
        }
        if cfg["stale_s"] * 1000 <= cfg["timeout_ms"]:
            raise ConfigError(path + ".stale_s", "%r is not longer than timeout_ms %d" % (
                cfg["stale_s"], cfg["timeout_ms"]), "more than timeout_ms / 1000 seconds")
        return cfg

    return {"scanner": scanner, "scale": scale}


def validate(doc):
    """A ``SiteConfig`` for the node from the merged document; raises ConfigError."""
    cfg = validate_site(doc, validators(doc))
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
