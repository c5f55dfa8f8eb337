"""The ``[devices.NAME]`` table of a ``canopen`` device, checked up front against the
node's EDS file: a TPDO or an object the EDS does not define is a config error with the
file, the key and what is allowed, not a surprise on the bus. Keys and meanings:
``midshift/firmware/edges/canopen.py`` and ``docs/configuration.md``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import canopen

from midshift.firmware.core.config_fields import field, no_unknown_keys, non_negative, positive
from midshift.firmware.core.errors import ConfigError

DEVICE_KEYS = ("interface", "channel", "bitrate", "node_id", "eds", "tpdos", "pdo_mapping",
               "heartbeat_ms", "start_node", "sdo_timeout_s", "objects")
OBJECT_KEYS = ("tag", "index", "subindex", "poll_ms", "scale", "deadband")
INTERFACES = ("socketcan", "slcan", "virtual")
BITRATES = (10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 800_000, 1_000_000)


def snake(name: str) -> str:
    """``Pack voltage`` -> ``pack_voltage``: the tag of an object without a table."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def load_eds(eds: str, node_id: int, where: str) -> Any:
    try:
        return canopen.import_od(eds, node_id)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(where, f"{eds!r} cannot be read as an EDS file: {exc}",
                          "the path of the node's EDS file") from None


def _object(o: Any, op: str, od: Any, tags: set[str]) -> dict[str, Any]:
    if not isinstance(o, dict):
        raise ConfigError(op, f"{o!r} is not a table", "a table with tag, index ...")
    no_unknown_keys(o, op, OBJECT_KEYS)
    obj = {"tag": field(o, "tag", op, str, check=lambda v: bool(v.strip()), allowed="a name"),
           "index": field(o, "index", op, int, check=lambda v: 0 < v <= 0xFFFF,
                          allowed="0x0001 to 0xFFFF"),
           "subindex": field(o, "subindex", op, int, default=0, check=lambda v: 0 <= v <= 255,
                             allowed="0 to 255"),
           "poll_ms": field(o, "poll_ms", op, int, default=None,
                            check=lambda v: 10 <= v <= 3_600_000, allowed="10 to 3600000"),
           "scale": field(o, "scale", op, float, default=1.0,
                          check=lambda v: v != 0 and math.isfinite(v),
                          allowed="a finite number other than 0"),
           "deadband": field(o, "deadband", op, float, default=0.0, check=non_negative,
                             allowed="0 or more")}
    if obj["tag"] in tags:
        raise ConfigError(op + ".tag", f"{obj['tag']!r} is used twice", "a unique tag")
    if od_variable(od, obj["index"], obj["subindex"]) is None:
        raise ConfigError(op + ".index", f"0x{obj['index']:04X}:{obj['subindex']:02X} is not "
                          "in the EDS", "an object of the node's EDS file")
    return obj


def od_variable(od: Any, index: int, subindex: int) -> Any:
    """The EDS's variable at ``index:subindex``, or None."""
    try:
        obj = od[index]
    except KeyError:
        return None
    if isinstance(obj, canopen.objectdictionary.ODVariable):
        return obj if subindex == 0 else None
    try:
        return obj[subindex]
    except KeyError:
        return None


def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
    """The ``[devices.NAME]`` table of a ``canopen`` device, checked against its EDS."""
    no_unknown_keys(table, path, DEVICE_KEYS)
    cfg = {
        "interface": field(table, "interface", path, str, choices=INTERFACES),
        "channel": field(table, "channel", path, str, check=lambda v: bool(v.strip()),
                         allowed="can0, a serial port path, a virtual channel name"),
        "bitrate": field(table, "bitrate", path, int, default=500_000, choices=BITRATES),
        "node_id": field(table, "node_id", path, int, check=lambda v: 1 <= v <= 127,
                         allowed="1 to 127"),
        "eds": field(table, "eds", path, str, check=lambda v: bool(v.strip()),
                     allowed="the path of the node's EDS file"),
        "pdo_mapping": field(table, "pdo_mapping", path, str, default="eds",
                             choices=("eds", "sdo")),
        "heartbeat_ms": field(table, "heartbeat_ms", path, int, default=1000,
                              check=lambda v: 10 <= v <= 65535, allowed="10 to 65535"),
        "start_node": field(table, "start_node", path, bool, default=True),
        "sdo_timeout_s": field(table, "sdo_timeout_s", path, float, default=0.5,
                               check=lambda v: positive(v) and v <= 10,
                               allowed="above 0, up to 10"),
    }
    tpdos = field(table, "tpdos", path, list, default=[], allowed="a list of TPDO numbers")
    od = load_eds(cfg["eds"], cfg["node_id"], path + ".eds")
    for i, n in enumerate(tpdos):
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 512:
            raise ConfigError(f"{path}.tpdos[{i}]", f"{n!r} is not a TPDO number",
                              "1 to 512")
        if 0x1800 + n - 1 not in od or 0x1A00 + n - 1 not in od:
            raise ConfigError(f"{path}.tpdos[{i}]", f"TPDO{n} is not in the EDS",
                              "a TPDO the EDS defines (0x1800 + n - 1, 0x1A00 + n - 1)")
    if len(set(tpdos)) != len(tpdos):
        raise ConfigError(path + ".tpdos", f"{tpdos!r} names a TPDO twice", "unique numbers")
    cfg["tpdos"] = list(tpdos)
    objs = field(table, "objects", path, list, default=[],
                 allowed="a list of [[objects]] tables")
    tags: set[str] = set()
    cfg["objects"] = []
    for i, o in enumerate(objs):
        obj = _object(o, f"{path}.objects[{i}]", od, tags)
        tags.add(obj["tag"])
        cfg["objects"].append(obj)
    if not cfg["tpdos"] and not any(o["poll_ms"] for o in cfg["objects"]):
        raise ConfigError(path + ".tpdos", "no TPDO and no polled object",
                          "at least one TPDO or one object with poll_ms")
    return cfg
