"""Writing files that hold secrets: created 0600 from the first byte, never overwritten
unless the caller says so, replaced atomically.

The file is created with ``O_EXCL`` and mode 0600 (under any umask), written, fsynced and
renamed into place, so no other user ever sees the key, even for a moment, and a crash
leaves the old file or the new one, never half of one. Nothing here logs or prints the
contents; errors name the path only.
"""

from __future__ import annotations

import os
from pathlib import Path


class KeyExists(FileExistsError):
    """A key file is already there and the caller did not say ``--force``."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists: refusing to overwrite a key (use --force "
                         "to replace it; the old key is then gone)")
        self.path = path


def write_private(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` as a 0600 file; raise ``KeyExists`` if it exists and
    ``force`` is false."""
    path = Path(path)
    if path.exists() and not force:
        raise KeyExists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def write_public(path: str | Path, data: bytes) -> Path:
    """Certificates, CRLs, ACLs: world-readable, replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


def check_private(path: str | Path) -> None:
    """Refuse to use a key file others can read (as ssh does)."""
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} has mode {mode:04o}: a key file must be 0600 "
                              f"(chmod 600 {path})")
