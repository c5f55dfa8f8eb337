"""A barcode scanner's ``[devices.NAME]`` table, checked, and the framer made from it
(``framer_for``): the boot-time half of ``scan_line.py``, shared by
``midshift/firmware/edges/scanner.py`` and the node's ``node_config.py`` and
``uart_scanner.py``.

Apart from the framer so that a MicroPython node, which checks its config at boot only,
can drop this module from RAM afterwards (``midshift/firmware/mpy/boot.py``'s ``release``); the
framer and the session it keeps (``scan_line.py``) run all day.
"""

from midshift.firmware.core.config_fields import (
    baudrate_field,
    field,
    latin1_field,
    no_unknown_keys,
)
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.scan_charset import NAMED_CHARSETS, charset_table
from midshift.firmware.core.scan_line import ScanLineFramer

TERMINATORS = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n"}
DEFAULT_CLASS = "txn"  # a scan is a sale line or a goods-in: a transaction
CONFIG_KEYS = ("port", "baudrate", "terminator", "prefix", "suffix", "min_length",
               "max_length", "charset", "aim_id", "inter_char_timeout_ms")


def check_config(table, path, port, extra_keys=()):
    """A scanner's ``[devices.NAME]`` table, normalized; ``ConfigError`` names the key.

    ``port(table, path)`` checks the ``port`` key the runtime's way (a pyserial URL on a
    gateway, a ``[uart.NAME]`` on a node); ``extra_keys`` are the runtime's own keys, left
    for the caller to read."""
    no_unknown_keys(table, path, CONFIG_KEYS + tuple(extra_keys))
    cfg = {
        "port": port(table, path),
        "baudrate": baudrate_field(table, path),
        "terminator": field(table, "terminator", path, str, default="CR",
                            choices=("CR", "LF", "CRLF")),
        "prefix": latin1_field(table, "prefix", path),
        "suffix": latin1_field(table, "suffix", path),
        "min_length": field(table, "min_length", path, int, default=1,
                            check=lambda v: 1 <= v <= 4096, allowed="1 to 4096"),
        "max_length": field(table, "max_length", path, int, default=64,
                            check=lambda v: 1 <= v <= 4096, allowed="1 to 4096"),
        "charset": field(table, "charset", path, str, default="ascii_printable",
                         allowed=", ".join(NAMED_CHARSETS) + ", or chars:<characters>"),
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


def _latin1(text):
    return bytes(ord(c) for c in text)


def framer_for(settings):
    """The ``ScanLineFramer`` for a scanner's checked settings."""
    return ScanLineFramer(
        terminator=TERMINATORS[settings["terminator"]], prefix=_latin1(settings["prefix"]),
        suffix=_latin1(settings["suffix"]), min_length=settings["min_length"],
        max_length=settings["max_length"], charset=settings["charset"],
        aim_id=settings["aim_id"], inter_char_timeout_ms=settings["inter_char_timeout_ms"])
