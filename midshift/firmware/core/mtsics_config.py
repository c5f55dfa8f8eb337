"""A scale's ``[devices.NAME]`` table, checked: the boot-time half of ``mtsics.py``,
shared by ``midshift/firmware/edges/scale.py`` and the node's ``midshift/firmware/mpy/node_config.py``.

Apart from the MT-SICS session so that a MicroPython node, which checks its config at
boot only, can drop this module from RAM afterwards (``midshift/firmware/mpy/boot.py``'s
``release``), and a scanner-only node never loads the scale's session at all.
"""

from midshift.firmware.core.config_fields import baudrate_field, field, no_unknown_keys
from midshift.firmware.core.errors import ConfigError

DEFAULT_CLASS = "txn"  # a weighed item is a sale line or a goods-in: a transaction
CONFIG_KEYS = ("port", "baudrate", "mode", "poll_command", "poll_ms", "timeout_ms",
               "stable_only", "stale_s")


def check_config(table, path, port):
    """A scale's ``[devices.NAME]`` table, normalized; ``ConfigError`` names the key.
    ``port(table, path)`` checks the ``port`` key the runtime's way."""
    no_unknown_keys(table, path, CONFIG_KEYS)
    cfg = {
        "port": port(table, path),
        "baudrate": baudrate_field(table, path),
        "mode": field(table, "mode", path, str, default="poll", choices=("poll", "listen")),
        "poll_command": field(table, "poll_command", path, str, default="SI",
                              choices=("SI", "S")),
        "poll_ms": field(table, "poll_ms", path, int, default=250,
                         check=lambda v: 10 <= v <= 600000, allowed="10 to 600000 ms"),
        "timeout_ms": field(table, "timeout_ms", path, int, default=1000,
                            check=lambda v: 10 <= v <= 600000, allowed="10 to 600000 ms"),
        "stable_only": field(table, "stable_only", path, bool, default=True),
        "stale_s": field(table, "stale_s", path, float, default=5.0, check=lambda v: v > 0,
                         allowed="a number of seconds above 0"),
    }
    if cfg["stale_s"] * 1000 <= cfg["timeout_ms"]:
        raise ConfigError(path + ".stale_s", "%r is not longer than timeout_ms %d" % (
            cfg["stale_s"], cfg["timeout_ms"]), "more than timeout_ms / 1000 seconds")
    return cfg
