"""A gateway's flash bundle: everything ``flash.sh`` puts on its card, with a manifest.

Layout of the bundle directory (mode 0700: it holds the gateway's keys)::

    manifest.json   gateway, site, board, when, by whom, and every file's SHA-256 and mode
    SHA256SUMS      the same hashes in ``sha256sum -c`` form, manifest.json included
    root/           the tree as it lands on the card's root file system:
      opt/midshift/midshift/firmware/...          the agent (CPython; the MicroPython node excluded),
                                         unless --wheels: then the agent is the wheel's
      opt/midshift/midshift/board_configs/B.toml  the board file
      etc/midshift/site.toml             rendered from the template, then validated
      etc/midshift/keys/                 ca.crt, gateway.crt, gateway.key (unless the key
                                         was made on the device), batch.key, command.key
      etc/systemd/system/midshift.service
    and with ``--wheels DIR`` (a wheelhouse, ``midshift/host_tools/wheelhouse.py``), for an offline
    install on the gateway by ``/opt/midshift/install.sh`` (docs/install.md):
      opt/midshift/wheels/*.whl, wheelhouse.json   midshift and every dependency
      opt/midshift/install.sh                      user, venv (pip --no-index), keys, unit
      usr/lib/sysusers.d/midshift.conf             the midshift user and its groups

The rendered site file is validated by the agent's own loader against the bundled board
file before anything is written. The manifest proves integrity (a file changed or added
after the build is caught by ``flash.sh``), not authorship: anyone who can rewrite the
bundle can rewrite its manifest. Without ``--wheels`` the Python virtual environment at
``/opt/midshift/.venv`` (the unit's ExecStart) is the image's job.

Errors about the rendered site file name the template it came from, never the staging
directory; a missing parent of ``-o DIR`` is created.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import midshift.firmware
from midshift.host_tools.audit_log import AuditLog, os_user
from midshift.host_tools.provision.registry import Site
from midshift.host_tools.site_render import RenderError, render_site, to_toml

FIRMWARE_DIR = Path(midshift.firmware.__file__).resolve().parent
BOARD_DIR = FIRMWARE_DIR.parent / "board_configs"
MPY_BOARDS = ("pico-w", "esp32")  # bundled by midshift/host_tools/mpy_bundle.py, not here


class BundleError(ValueError):
    """Bad input for a bundle; the message says what and what is expected."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # 0600 from the start
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())
    os.chmod(dst, mode)


def source_version() -> str:
    """The commit the agent's files come from, ``+dirty`` when the working tree differs
    there (a bundle built from uncommitted code should say so), or ``unknown``."""
    repo = FIRMWARE_DIR.parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "midshift"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _firmware_files() -> list[Path]:
    out = []
    for p in sorted(FIRMWARE_DIR.rglob("*.py")):
        rel = p.relative_to(FIRMWARE_DIR)
        if rel.parts[0] == "mpy" or "__pycache__" in rel.parts:
            continue
        out.append(rel)
    return out


def _check_provisioned(site: Site, gateway: str, board: str) -> dict[str, Any]:
    """A bundle only for a gateway provisioned for this board and not revoked; its entry."""
    entry = site.gateway(gateway)
    if entry.get("revoked"):
        raise BundleError(f"gateway {gateway} is revoked: no bundle")
    if entry["board"] != board:
        raise BundleError(f"--board {board}: gateway {gateway} was provisioned for "
                          f"{entry['board']}")
    return entry


def _read_template(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError(f"--config {path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"--config {path}: not valid TOML ({exc})") from None


def build_bundle(site: Site, gateway: str, board: str, template_path: Path, out: Path,
                 force: bool = False, allow_plain: bool = False,
                 wheels: Path | None = None) -> dict[str, Any]:
    """Build the bundle in ``out``; returns the manifest. ``site`` is loaded and locked.
    ``wheels``: a wheelhouse to carry for an offline install (``install.sh``)."""
    entry = _check_provisioned(site, gateway, board)
    wheelhouse = None
    if wheels is not None:
        from midshift.host_tools.wheelhouse import WheelhouseError, load_wheelhouse
        try:
            wheelhouse = load_wheelhouse(wheels)
        except WheelhouseError as exc:
            raise BundleError(str(exc)) from None
    template = _read_template(template_path)
    try:
        doc = render_site(template, gateway, site.name, board, allow_plain)
        text = to_toml(doc, f"# site file of gateway {gateway} at site {site.name}: "
                       "rendered by `python -m midshift.host_tools bundle`")
    except RenderError as exc:
        raise BundleError(f"--config {template_path}: {exc}") from None
    if out.exists() and any(out.iterdir()):
        if not force:
            raise BundleError(f"-o {out} is not empty: refusing to overwrite (it may hold "
                              "another gateway's keys); --force replaces a bundle there")
        if not (out / "manifest.json").exists():
            raise BundleError(f"-o {out} is not empty and holds no bundle: not touching it")
    try:  # staged beside ``out`` so that the final rename stays on one filesystem
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"-o {out}: cannot create {out.parent} ({exc.strerror})") from None
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        root = staging / "root"
        _stage(site, gateway, board, root, text, wheels if wheelhouse else None)
        _validate(root, template_path)
        manifest = _manifest(staging, gateway, site.name, board, entry,
                             {k: wheelhouse[k] for k in ("arch", "python")} if wheelhouse
                             else None)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out.chmod(0o700)
    AuditLog(site.audit_log).append("bundle", gateway, {
        "board": board, "out": str(out.resolve()),
        "manifest_sha256": sha256_file(out / "manifest.json"), "files": len(manifest["files"])})
    return manifest


def _stage(site: Site, gateway: str, board: str, root: Path, site_text: str,
           wheels: Path | None) -> None:
    if wheels is None:
        for rel in _firmware_files():
            _copy(FIRMWARE_DIR / rel, root / "opt/midshift/midshift/firmware" / rel, 0o644)
        _copy(FIRMWARE_DIR.parent / "__init__.py", root / "opt/midshift/midshift/__init__.py",
              0o644)
    else:
        for whl in sorted(wheels.glob("*.whl")) + [wheels / "wheelhouse.json"]:
            _copy(whl, root / "opt/midshift/wheels" / whl.name, 0o644)
        _copy(FIRMWARE_DIR / "install.sh", root / "opt/midshift/install.sh", 0o755)
        _copy(FIRMWARE_DIR / "midshift.sysusers", root / "usr/lib/sysusers.d/midshift.conf",
              0o644)
    _copy(BOARD_DIR / f"{board}.toml", root / f"opt/midshift/midshift/board_configs/{board}.toml", 0o644)
    _copy(FIRMWARE_DIR / "midshift.service", root / "etc/systemd/system/midshift.service", 0o644)
    etc = root / "etc/midshift"
    etc.mkdir(parents=True)
    (etc / "site.toml").write_text(site_text)
    (etc / "site.toml").chmod(0o644)
    gdir = site.gateway_dir(gateway)
    keys = etc / "keys"
    _copy(site.ca_cert, keys / "ca.crt", 0o644)
    _copy(gdir / "gateway.crt", keys / "gateway.crt", 0o644)
    _copy(gdir / "batch.key", keys / "batch.key", 0o600)
    _copy(site.command_key(gateway), keys / "command.key", 0o600)
    if (gdir / "gateway.key").exists():  # absent when the device made its own key
        _copy(gdir / "gateway.key", keys / "gateway.key", 0o600)
    keys.chmod(0o700)


def _validate(root: Path, template_path: Path) -> None:
    """The agent's own loader on the staged files: what the card will start with. Its
    errors name the staged file; the user wrote the template, so they name that."""
    from midshift.firmware.core.errors import ConfigError
    from midshift.firmware.edges.config_file import load_config
    site_file = root / "etc/midshift/site.toml"
    board_name = tomllib.loads(site_file.read_text())["board_config"]
    board_file = root / f"opt/midshift/midshift/board_configs/{board_name}.toml"
    try:
        load_config(site_file, board_file)
    except ConfigError as exc:
        text = (str(exc).replace(str(site_file), f"{template_path} (rendered)")
                .replace(str(board_file), str(BOARD_DIR / f"{board_name}.toml")))
        if str(template_path) not in text:
            text = f"--config {template_path}: {text}"
        raise BundleError(f"the rendered site file does not validate: {text}") from None


def _manifest(staging: Path, gateway: str, site: str, board: str,
              entry: dict[str, Any], wheelhouse: dict[str, str] | None) -> dict[str, Any]:
    files = {}
    for p in sorted((staging / "root").rglob("*")):
        if p.is_file():
            rel = p.relative_to(staging).as_posix()
            files[rel] = {"sha256": sha256_file(p), "mode": f"{p.stat().st_mode & 0o777:04o}"}
    cert = next(c for c in entry["certs"] if c["state"] == "active")
    manifest = {"format": 1, "gateway": gateway, "site": site, "board": board,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "created_by": os_user(), "source": source_version(),
                "certificate_serial": cert["serial"],
                "key_on_device": cert["key_origin"] == "device", "files": files}
    if wheelhouse:  # what the wheels fit: install.sh refuses another Python or machine
        manifest["wheelhouse"] = wheelhouse
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sums = [f"{v['sha256']}  {k}" for k, v in files.items()]
    sums.append(f"{sha256_file(staging / 'manifest.json')}  manifest.json")
    (staging / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return manifest


def is_mpy_board(board: str) -> bool:
    """A MicroPython board: named so, or its board file uses ``machine`` pins."""
    path = BOARD_DIR / f"{board}.toml"
    if board in MPY_BOARDS:
        return True
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return (doc.get("board") or {}).get("pin_factory") == "machine"


def build_mpy(site: Site, gateway: str, board: str, template_path: Path | None,
              out: Path) -> Path:
    """MicroPython boards: ``midshift/host_tools/mpy_bundle.py`` (another module, imported only
    here) builds those; this supplies the provisioned keys and logs the build."""
    try:
        mpy_bundle = importlib.import_module("midshift.host_tools.mpy_bundle")
    except ImportError:
        raise BundleError(f"--board {board} is a MicroPython board; its bundles are built by "
                          "midshift/host_tools/mpy_bundle.py, which is not in this build") from None
    from midshift.firmware.core.errors import ConfigError
    _check_provisioned(site, gateway, board)
    if template_path is None:
        raise BundleError("--config TEMPLATE is required: the node's site file")
    hmac_key = bytes.fromhex((site.gateway_dir(gateway) / "batch.key").read_text().strip())
    command_key = bytes.fromhex(site.command_key(gateway).read_text().strip())
    # The gateway's identity comes from the registry, as for Linux gateways: a template
    # need not repeat the site's name (nor, relative to itself, where the Wi-Fi key is).
    doc = _read_template(template_path)
    doc.setdefault("gateway", {}).setdefault("site", site.name)
    wifi = doc.get("wifi")
    if isinstance(wifi, dict) and isinstance(wifi.get("key_file"), str):
        wifi["key_file"] = str((template_path.parent / wifi["key_file"]).resolve())
    try:
        path = Path(mpy_bundle.build_mpy_bundle(gateway, board, out, site_config=doc,
                                                hmac_key=hmac_key, command_key=command_key))
    except (ConfigError, mpy_bundle.BundleError) as exc:
        raise BundleError(f"MicroPython bundle (midshift/host_tools/mpy_bundle.py): {exc}") from None
    AuditLog(site.audit_log).append("bundle", gateway, {"board": board, "out": str(path),
                                                         "builder": "midshift/host_tools/mpy_bundle.py"})
    return path
