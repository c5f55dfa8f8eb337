"""Build the bundle for a MicroPython node: compiled core and node, config, keys, manifest.

``build_mpy_bundle(gateway, board, out_dir, site_config=..., hmac_key=..., command_key=...)``
(called by ``python -m midshift.host_tools bundle GW --board pico-w``) writes into ``out_dir``:

| path | what |
| --- | --- |
| ``main.py`` | the boot entry (``midshift/firmware/mpy/board_main.py``), as source (MicroPython runs ``/main.py``, never a ``.mpy``); it runs the compiled ``midshift/firmware/mpy/main.mpy`` |
| ``midshift/firmware/__init__.mpy``, ``midshift/firmware/core/*.mpy``, ``midshift/firmware/mpy/*.mpy`` | compiled with ``mpy-cross`` |
| ``firmware.romfs`` | the same ``.mpy`` files as a ROMFS image (``mpy_flash --romfs``: used in place from flash, not loaded into RAM) |
| ``node.json`` | board + site merged, node paths, checked with the node's own validator |
| ``gw.key``, ``cmd.key``, ``wifi.key`` | batch HMAC key and command key (hex), Wi-Fi passphrase; 0600 |
| ``manifest.json`` | gateway, board, mpy-cross version, and the sha256 of every file above |

The node's config is the board file (``midshift/board_configs/<board>.toml``) overlaid by the site
file (TOML path or an already-read dict), merged by the core's ``site_config.merge``. Paths
become the node's: ``gateway.key_file = "gw.key"`` and so on; a Wi-Fi passphrase file named
by the site's ``wifi.key_file`` is read on the host (relative to the site file) and copied
as ``wifi.key``. The result is checked with ``midshift/firmware/mpy/node_config.validate``, the
function the node runs at boot, so a bundle that builds is a config the node accepts.
Errors are ``ConfigError`` (file, key, what is allowed) or ``BundleError``.

Sharp edges: ``.mpy`` files carry a bytecode version; the board's MicroPython must load
the version this ``mpy-cross`` writes (``mpy-cross --version`` is in the manifest).
umqtt.simple is not in the bundle: ``midshift.host_tools.mpy_flash`` installs it with ``mpremote
mip install umqtt.simple`` (micropython-lib's current release).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import merge
from midshift.firmware.mpy import node_config

ROOT = Path(__file__).resolve().parents[1]
BOARD_DIR = ROOT / "board_configs"
MANIFEST = "manifest.json"
KEY_FILES = {"hmac": "gw.key", "command": "cmd.key", "wifi": "wifi.key"}


class BundleError(RuntimeError):
    """The bundle cannot be built (mpy-cross failed, the output exists and is not ours)."""


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("(file)", f"{what} {path} does not exist", None, str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", None, str(path)) from None


def board_path(board: str | Path) -> Path:
    p = Path(board)
    if p.suffix != ".toml" and "/" not in str(board):
        return BOARD_DIR / f"{board}.toml"
    return p


def node_document(board: str | Path, site_config: dict[str, Any] | Path | str, *,
                  command_key: bool = False) -> tuple[dict[str, Any], str | None]:
    """(node.json document, Wi-Fi passphrase or None): board + site merged, node paths."""
    base = Path.cwd()
    if isinstance(site_config, dict):
        site = json.loads(json.dumps(site_config))  # a deep copy we may change
    else:
        site_path = Path(site_config)
        site = _read_toml(site_path, "site config")
        base = site_path.parent
    site.pop("board_config", None)
    doc = merge(_read_toml(board_path(board), "board config"), site)
    gw = dict(doc.get("gateway") or {})
    gw["key_file"] = KEY_FILES["hmac"]
    gw.pop("command_key_file", None)
    if command_key:
        gw["command_key_file"] = KEY_FILES["command"]
    doc["gateway"] = gw
    passphrase = None
    wifi = doc.get("wifi")
    if isinstance(wifi, dict):
        wifi = dict(wifi)
        source = wifi.pop("key_file", None)
        if isinstance(source, str):
            p = Path(source) if Path(source).is_absolute() else base / source
            try:
                passphrase = p.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError("wifi.key_file", f"cannot read {p}: {exc.strerror}") from None
            wifi["key_file"] = KEY_FILES["wifi"]
        doc["wifi"] = wifi
    status = doc.get("status")
    if isinstance(status, dict):  # no sync log file on the node: the status topic says it
        doc["status"] = {k: v for k, v in status.items() if not k.startswith("sync_log")}
    return doc, passphrase


def mpy_cross_version() -> str:
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"],
                          capture_output=True, text=True)
    return (proc.stdout or proc.stderr).strip()


# mpy-cross -O3: no line numbers in the bytecode, which a board loading its modules from
# the filesystem holds in RAM: 3.5 KiB less live heap for the node (bench node). A
# traceback on the board's console then names the functions but not the lines (the
# running node reports its loop errors as repr() in the status, with no line either way).
# It also compiles out assert statements and ``if __debug__`` blocks: the core and the
# node use neither (tests/micropython/test_mpy_node.py checks).
MPY_OPT = 3


def module_name(rel: str) -> str:
    """``midshift/firmware/core/wire.mpy`` -> ``midshift.firmware.core.wire`` (a package's
    ``__init__`` -> the package)."""
    return rel.rsplit(".", 1)[0].removesuffix("/__init__").replace("/", ".")


def compile_module(src: Path, out: Path, opt: int = MPY_OPT, name: str | None = None) -> None:
    """``name``: the source name the ``.mpy`` carries for tracebacks (default: ``src`` as
    given). The bundle passes the module's dotted name: MicroPython interns that name
    anyway, so it costs no RAM, where a path is one more interned string per module
    (about 1 KiB over the node's modules)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", f"-O{opt}", "-s",
                           name or str(src), "-o", str(out), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(f"mpy-cross failed on {src}: {proc.stderr.strip()}")


def _imported(src: Path) -> set[str]:
    """The ``midshift.*`` names ``src`` imports anywhere (inside functions too): modules,
    and ``from PACKAGE import NAME`` as ``PACKAGE.NAME`` (a module or not)."""
    out = set()
    for n in ast.walk(ast.parse(src.read_text(encoding="utf-8"), str(src))):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names)
    return {m for m in out if m.split(".")[0] == "midshift"}


def sources() -> list[tuple[Path, str]]:
    """(source, path in the bundle) for every module the node can import: all of
    ``midshift/firmware/mpy/`` (boot imports the device edges by name) and what they import,
    lazily too, followed through the core, with the packages on the way. A core module
    only the gateway or the ledger imports (till transactions, sell rules, the ledger's
    side of the wire, ...) is not shipped: flash, and room in a ROM partition."""
    base = ROOT.parent  # the directory holding the midshift package
    todo = [p for p in sorted((ROOT / "firmware" / "mpy").glob("*.py"))
            if p.name != "board_main.py"]  # the board's /main.py, kept as source
    seen: set[Path] = set()
    while todo:
        src = todo.pop()
        if src in seen:
            continue
        seen.add(src)
        parts = src.relative_to(base).with_suffix("").parts
        for i in range(1, len(parts)):  # the packages on the way
            todo.append(base.joinpath(*parts[:i], "__init__.py"))
        for name in _imported(src):
            path = base.joinpath(*name.split("."))
            if path.with_suffix(".py").is_file():
                todo.append(path.with_suffix(".py"))
            elif (path / "__init__.py").is_file():
                todo.append(path / "__init__.py")
    return sorted((src, src.relative_to(base).with_suffix(".mpy").as_posix())
                  for src in seen)


ROMFS_IMAGE = "firmware.romfs"


def romfs_image(tree: Path, skip: tuple[str, ...] = ()) -> bytes:
    """A ROMFS image of the ``.mpy`` files under ``tree`` (paths kept; top-level names in
    ``skip`` left out), made with mpremote's own writer, as ``mpremote romfs build`` makes
    one. A board with a ROM partition mounts it at ``/rom`` and imports its modules in
    place: their bytecode and constants stay in flash instead of being copied into the
    heap."""
    try:
        from mpremote.romfs import VfsRomWriter
    except ImportError:
        raise BundleError("mpremote is not installed (pip install mpremote): it writes the "
                          "bundle's ROMFS image and flashes the board") from None
    writer = VfsRomWriter()

    def add(folder: Path) -> None:
        for p in sorted(folder.iterdir()):
            if folder == tree and p.name in skip:
                continue
            if p.is_dir():
                writer.opendir(p.name)
                add(p)
                writer.closedir()
            elif p.suffix == ".mpy":
                writer.mkfile(p.name, p.read_bytes())

    add(tree)
    return bytes(writer.finalise())


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")


def build_mpy_bundle(gateway: str, board: str, out_dir: Path, *,
                     site_config: dict[str, Any] | Path, hmac_key: bytes,
                     command_key: bytes | None) -> Path:
    """Write the node's bundle into ``out_dir`` (created; must be empty or absent)."""
    out_dir = Path(out_dir)
    doc, passphrase = node_document(board, site_config, command_key=command_key is not None)
    gw = doc["gateway"]
    if gw.get("id") is None:
        gw["id"] = gateway
    elif gw["id"] != gateway:
        raise ConfigError("gateway.id", f"{gw['id']!r} is not the gateway being bundled "
                          f"({gateway!r})", gateway)
    node_config.validate(doc)  # the node's own check, before anything is written
    for name, key in (("hmac_key", hmac_key), ("command_key", command_key)):
        if key is not None and len(key) < 16:
            raise ConfigError(name, f"key of {len(key)} bytes is too short", "at least 16 bytes")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} is not empty; refusing to mix bundles")
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, rel in sources():
        compile_module(src, out_dir / rel, name=module_name(rel))
    (out_dir / ROMFS_IMAGE).write_bytes(romfs_image(out_dir))
    (out_dir / "main.py").write_bytes((ROOT / "firmware" / "mpy" / "board_main.py").read_bytes())
    (out_dir / "node.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    _write_secret(out_dir / KEY_FILES["hmac"], hmac_key.hex())
    if command_key is not None:
        _write_secret(out_dir / KEY_FILES["command"], command_key.hex())
    if passphrase is not None:
        _write_secret(out_dir / KEY_FILES["wifi"], passphrase)
    files = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(out_dir).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    manifest = {"version": 1, "gateway": gateway, "board": str(board),
                "mpy_cross": mpy_cross_version(), "mpy_cross_opt": MPY_OPT, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out_dir
