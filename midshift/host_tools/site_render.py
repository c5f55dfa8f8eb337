"""Rendering a gateway's site file from the integrator's template: the template says what
the gateway does (devices, uplink brokers, journal), provisioning says who it is (id,
site, board) and where its keys are. The result is TOML, checked by parsing it back.

Key paths are written relative to the site file (``keys/batch.key``), which the agent's
loader resolves against the file's own directory: the same file works on the card at
``/etc/midshift/site.toml`` and in a test tree flashed into a temporary directory.

Only what TOML 1.0 and ``tomllib`` agree on is written: tables, arrays of scalars or
inline tables, strings (JSON escapes are valid TOML basic-string escapes), integers,
floats, booleans. A template using anything else (dates) is refused by name.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from typing import Any

KEYS_DIR = "keys"
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class RenderError(ValueError):
    """The template cannot become this gateway's site file; the message says why."""


def render_site(template: dict[str, Any], gateway: str, site: str, board: str,
                allow_plain: bool = False) -> dict[str, Any]:
    """The site document for ``gateway``; ``template`` as read from the template file."""
    doc = copy.deepcopy(template)
    gw = dict(doc.get("gateway") or {})
    for key, want in (("id", gateway), ("site", site)):
        if key in gw and gw[key] != want:
            raise RenderError(f"gateway.{key} is {gw[key]!r} in the template but the bundle is "
                              f"for {want!r}: leave it out, provisioning fills it in")
    gw.update({"id": gateway, "site": site, "key_file": f"{KEYS_DIR}/batch.key",
               "command_key_file": f"{KEYS_DIR}/command.key"})
    rest = {k: v for k, v in doc.items() if k not in ("board_config", "gateway")}
    doc = {"board_config": board, "gateway": gw, **rest}  # identity first, for a reader
    uplinks = doc.get("uplinks") or {}
    if not isinstance(uplinks, dict) or not uplinks:
        raise RenderError("the template has no [uplinks.NAME] table: the gateway would "
                          "never forward")
    for name, table in uplinks.items():
        broker = str(table.get("broker", "")) if isinstance(table, dict) else ""
        if broker.startswith("mqtts://"):
            table.update({"ca": f"{KEYS_DIR}/ca.crt", "cert": f"{KEYS_DIR}/gateway.crt",
                          "key": f"{KEYS_DIR}/gateway.key"})
        elif not allow_plain:
            raise RenderError(f"uplinks.{name}.broker {broker!r} is not mqtts://: a "
                              "provisioned gateway authenticates by certificate "
                              "(--allow-plain-mqtt for a lab)")
    return doc


def _value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x, where) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x, where)}" for k, x in v.items()) + "}"
    raise RenderError(f"{where}: a {type(v).__name__} value cannot be rendered (use a string)")


def _key(k: str) -> str:
    return k if BARE_KEY.match(k) else json.dumps(k)


def to_toml(doc: dict[str, Any], header: str = "") -> str:
    """TOML text for ``doc``: scalars first, then a table per dict, nested dicts as
    ``[a.b]`` tables; verified by parsing it back."""
    out = [header] if header else []

    def table(path: list[str], t: dict[str, Any]) -> None:
        plain = {k: v for k, v in t.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in t.items() if isinstance(v, dict)}
        if path and (plain or not subs):
            out.append("\n[" + ".".join(_key(p) for p in path) + "]")
        for k, v in plain.items():
            out.append(f"{_key(k)} = {_value(v, '.'.join(path + [k]))}")
        for k, v in subs.items():
            table(path + [k], v)

    table([], doc)
    text = "\n".join(out) + "\n"
    if tomllib.loads(text) != doc:  # a renderer bug must never reach a card
        raise RenderError("rendered TOML does not read back as the same document")
    return text
