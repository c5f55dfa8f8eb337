"""Put a MicroPython node's bundle on a board with mpremote, after checking its manifest.

    python -m midshift.host_tools.mpy_flash --bundle DIR --port PORT [--romfs] [--dry-run]

(``flash.sh --bundle DIR --target mpy:PORT`` delegates here.) The bundle is the directory
``midshift/host_tools/mpy_bundle.py`` built. First every file is checked against ``manifest.json``
(sha256): a file missing, changed, or not in the manifest stops everything before the
board is touched. Then the plan, one mpremote command per line:

1. ``mpremote connect PORT mip install umqtt.simple`` (mpremote fetches it on the host);
2. ``mpremote connect PORT fs cp -r firmware :`` (the compiled core and node);
3. ``mpremote connect PORT fs cp main.py node.json gw.key [cmd.key] [wifi.key] :``;
4. ``mpremote connect PORT exec ...``: writes ``/code_from`` (``fs``), which tells
   the board's ``/main.py`` to import the node from ``/firmware`` even where an older
   ROMFS image is mounted;
5. ``mpremote connect PORT reset`` (the node boots from ``/main.py``).

``--romfs`` (a board whose MicroPython has a ROM partition: ``vfs.rom_ioctl``, 1.25 and
later where the board enables it) puts the compiled modules there instead:
``romfs deploy firmware.romfs`` replaces step 2, and ``/code_from`` says ``rom``. The
modules then run in place from flash: their bytecode is not copied into the heap, which
more than halves the node's RAM (``docs/micropython-node.md``, "Measured"). mpremote
refuses a board without a ROM partition, and an image larger than it.

Nothing is deleted on the board: the journal (``/journal``) survives a re-flash, so records
not yet acknowledged are still sent after it. ``--dry-run`` prints the plan and runs
nothing. Exit status: 0 done, 2 bad bundle or arguments (one line saying what), 1 an
mpremote command failed (its exit status and the command are printed; later steps are
not run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

MANIFEST = "manifest.json"
ROOT_FILES = ("main.py", "node.json", "gw.key", "cmd.key", "wifi.key")
ROMFS_IMAGE = "firmware.romfs"  # midshift.host_tools.mpy_bundle.ROMFS_IMAGE
CODE_FROM = "code_from"  # read by the board's /main.py at boot (board_main.py): fs or rom


class BundleInvalid(ValueError):
    """The bundle does not match its manifest."""


def verify(bundle: Path) -> dict:
    """The manifest, once every file matches it; BundleInvalid names the first problem."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleInvalid(f"{bundle}: no {MANIFEST} (not a bundle from "
                            "midshift.host_tools.mpy_bundle)") from None
    except ValueError as exc:
        raise BundleInvalid(f"{bundle / MANIFEST}: not JSON: {exc}") from None
    files = manifest.get("files")
    if not isinstance(files, dict) or "main.py" not in files or "node.json" not in files:
        raise BundleInvalid(f"{bundle / MANIFEST}: no file list with main.py and node.json")
    for rel, digest in sorted(files.items()):
        p = bundle / rel
        if not p.is_file():
            raise BundleInvalid(f"{p}: listed in the manifest but missing")
        if hashlib.sha256(p.read_bytes()).hexdigest() != digest:
            raise BundleInvalid(f"{p}: sha256 does not match the manifest (changed after "
                                "the bundle was built)")
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in files:
            raise BundleInvalid(f"{p}: not in the manifest; refusing to copy it to a board")
    return manifest


def plan(bundle: Path, port: str, manifest: dict, romfs: bool = False) -> list[list[str]]:
    files = manifest["files"]
    base = ["mpremote", "connect", port]
    top = [f for f in ROOT_FILES if f in files]
    if romfs and ROMFS_IMAGE not in files:
        raise BundleInvalid(f"{bundle}: no {ROMFS_IMAGE} (built by an older mpy_bundle)")
    code = (base + ["romfs", "deploy", ROMFS_IMAGE]) if romfs else \
        (base + ["fs", "cp", "-r", "midshift", ":"])
    where = "rom" if romfs else "fs"
    return [base + ["mip", "install", "umqtt.simple"],
            code,
            base + ["fs", "cp", *top, ":"],
            base + ["exec", f'f = open("{CODE_FROM}", "w"); f.write("{where}"); f.close()'],
            base + ["reset"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midshift.host_tools.mpy_flash",
                                     description="copy a MicroPython node bundle to a board")
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    parser.add_argument("--port", required=True,
                        help="the board's serial port, as mpremote takes it (/dev/ttyACM0)")
    parser.add_argument("--romfs", action="store_true",
                        help="the compiled modules into the board's ROM partition (ROMFS)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    try:
        manifest = verify(args.bundle)
        steps = plan(args.bundle, args.port, manifest, args.romfs)
    except BundleInvalid as exc:
        print(f"mpy_flash: {exc}", file=sys.stderr)
        return 2
    print(f"bundle {args.bundle}: gateway {manifest.get('gateway')}, board "
          f"{manifest.get('board')}, {len(manifest['files'])} files verified")
    for cmd in steps:
        print(("would run: " if args.dry_run else "run: ") + shlex.join(cmd))
    if args.dry_run:
        return 0
    exe = shutil.which("mpremote")
    if exe is None:
        print("mpy_flash: mpremote not found on PATH (pip install mpremote)", file=sys.stderr)
        return 2
    for cmd in steps:
        proc = subprocess.run([exe, *cmd[1:]], cwd=args.bundle)
        if proc.returncode != 0:
            print(f"mpy_flash: exit status {proc.returncode} from: {shlex.join(cmd)}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
