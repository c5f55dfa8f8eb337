"""Reading the agent's configuration from TOML: a site file and the board file it names.

The site file names its board with a top-level ``board_config = "NAME"`` (a file in
``midshift/board_configs/``) or a path (relative to the site file); ``--board`` overrides it.
Relative paths inside the files (journal directory) are taken relative to the file that
set them. Errors name the file the offending key came from. Device types are found by
name (``midshift/firmware/edges/device_types.py``): only the types the config uses are imported.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import SiteConfig, merge, validate
from midshift.firmware.edges.device_types import EdgeDeviceTypes

BOARD_DIR = Path(__file__).resolve().parents[2] / "board_configs"


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("(file)", f"{what} {path} does not exist", None, str(path)) from None
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {what}: {exc.strerror}", None,
                          str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", None, str(path)) from None


def _board_path(ref: str, site_path: Path) -> Path:
    p = Path(ref)
    if p.suffix != ".toml" and "/" not in ref:
        return BOARD_DIR / f"{ref}.toml"
    return p if p.is_absolute() else site_path.parent / p


def load_config(site_path: str | Path, board_path: str | Path | None = None,
                then: Callable[[SiteConfig], None] | None = None) -> SiteConfig:
    """The validated config; ``then(cfg)`` checks more (the preflight, ``preflight.py``)
    and its ``ConfigError`` names the file too."""
    site_path = Path(site_path)
    site = _read_toml(site_path, "site config")
    ref = site.pop("board_config", None)
    if board_path is None:
        if not isinstance(ref, str):
            raise ConfigError("board_config", "is required (or pass --board FILE)",
                              "a board name from midshift/board_configs/ "
                              f"({', '.join(sorted(p.stem for p in BOARD_DIR.glob('*.toml')))}) "
                              "or a path", str(site_path))
        board_path = _board_path(ref, site_path)
    board_path = Path(board_path)
    board = _read_toml(board_path, "board config")
    _relative_paths(board, board_path)
    _relative_paths(site, site_path)
    doc = merge(board, site)
    try:
        cfg = validate(doc, EdgeDeviceTypes())
        if cfg.pins:
            from midshift.firmware.edges.gpio import (
                validate_pins,  # gpiozero only for boards with pins
            )
            cfg.pins = validate_pins(cfg.pins)
        if then is not None:
            then(cfg)
        return cfg
    except ConfigError as exc:
        raise exc.in_file(str(_origin(exc.key, site_path, site, board_path, board))) from None


def _relative_paths(doc: dict[str, Any], path: Path) -> None:
    """Relative paths (journal, keys, sync log, TLS files) are relative to the file
    setting them."""
    for section, key in (("journal", "path"), ("gateway", "key_file"),
                         ("gateway", "command_key_file"), ("status", "sync_log")):
        t = doc.get(section)
        if isinstance(t, dict) and isinstance(t.get(key), str) and t[key] and not Path(
                t[key]).is_absolute():
            t[key] = str((path.parent / t[key]).resolve())
    uplinks = doc.get("uplinks")
    for table in (uplinks.values() if isinstance(uplinks, dict) else ()):
        for key in ("ca", "cert", "key"):
            if isinstance(table, dict) and isinstance(table.get(key), str) and not Path(
                    table[key]).is_absolute():
                table[key] = str((path.parent / table[key]).resolve())
    devices = doc.get("devices")
    for table in (devices.values() if isinstance(devices, dict) else ()):
        if isinstance(table, dict) and isinstance(table.get("eds"), str) and table["eds"] \
                and not Path(table["eds"]).is_absolute():  # a CANopen node's EDS file
            table["eds"] = str((path.parent / table["eds"]).resolve())
    for section in ("till_api", "status_page"):
        api = doc.get(section)
        for key in ("tls_cert", "tls_key", "client_ca", "tokens_file", "token_file"):
            if isinstance(api, dict) and isinstance(api.get(key), str) and api[key] and \
                    not Path(api[key]).is_absolute():
                api[key] = str((path.parent / api[key]).resolve())


def _origin(key: str, site_path: Path, site: dict[str, Any], board_path: Path,
            board: dict[str, Any]) -> Path:
    """Which file set ``key`` (the site file wins where both did). A key neither file set
    (a required one missing) is the site file's to add; an unknown table (a header typo,
    ``(top level).gatway``) is named in the file that has it."""
    parts = key.replace("[", ".").split(".")
    if parts[0] == "(top level)" and len(parts) > 1:
        parts = parts[1:]
    top = parts[0]
    if top not in site:
        return board_path if top in board else site_path
    if len(parts) > 1 and isinstance(site[top], dict) and parts[1] not in site[top]:
        in_board = isinstance(board.get(top), dict) and parts[1] in board[top]
        return board_path if in_board else site_path
    return site_path
