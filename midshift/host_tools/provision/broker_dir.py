"""A broker directory that Debian's mosquitto starts from as its own user, with nothing of
the site's secrets but the broker's own key (``provision broker --out DIR --owner USER``).

``DIR`` holds ``midshift.conf`` (every path in it points into ``DIR``, or into
``--conf-dir`` where ``DIR`` will be copied on the broker host), ``ca.crt``, ``crl.pem``,
``acl``, ``server.crt`` (0644) and ``server.key`` (0600); all owned by ``USER``, the user
mosquitto drops to when started as root (Debian: ``mosquitto``), the directory 0750. It
never holds the CA key: the site directory does, and ``DIR`` may not lie inside it.

The ACL and CRL change with every gateway provisioned, rotated or revoked; each
provisioning command copies them into ``DIR`` again (``refresh``) while ``DIR`` exists
on this host. mosquitto reads both at start: restart it after such a change.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

from midshift.host_tools.provision.secret_file import write_private, write_public

PUBLIC = ("ca.crt", "crl.pem", "acl", "server.crt")


class BrokerDirError(ValueError):
    """A bad ``--out``, ``--conf-dir`` or ``--owner``; the message says what is expected."""


def owner_ids(owner: str | None) -> tuple[int, int] | None:
    """``USER`` or ``USER:GROUP`` as numbers (None: leave owners alone)."""
    if owner is None:
        return None
    user, _, group = owner.partition(":")
    try:
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise BrokerDirError(f"--owner {owner}: no such user or group on this machine (the "
                             "broker's user: mosquitto on Debian)") from None
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise BrokerDirError(f"--owner {owner}: giving files to another user needs root "
                             "(run with sudo)")
    return pw.pw_uid, gid


def check_out(out: Path, site_dir: Path) -> None:
    o, s = out.resolve(), site_dir.resolve()
    if o == s or s in o.parents:
        raise BrokerDirError(f"--out {out} is inside the site directory {site_dir}, which "
                             "holds the CA key: choose a directory outside it")


def check_reachable(out: Path, ids: tuple[int, int] | None) -> None:
    """Every existing directory above ``out`` lets user ``ids`` pass (those made here are
    0755): else mosquitto, dropped to that user, cannot open its files."""
    if ids is None:
        return
    uid, gid = ids
    for d in reversed(out.resolve().parents):
        if not d.is_dir():
            break
        st = d.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)
                or (st.st_gid == gid and st.st_mode & 0o010)):
            raise BrokerDirError(f"--out {out}: the broker's user cannot reach it: {d} is "
                                 f"{st.st_mode & 0o777:04o} (uid {st.st_uid}); choose a path "
                                 "it can enter, such as /etc/mosquitto/midshift")


def export(out: Path, conf_text: str, site_files: dict[str, Path], server_key: Path,
           ids: tuple[int, int] | None) -> Path:
    """Write the broker directory; returns its ``midshift.conf``."""
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o750)
    for name in PUBLIC:
        write_public(out / name, site_files[name].read_bytes())
    write_private(out / "server.key", server_key.read_bytes(), force=True)
    write_public(out / "midshift.conf", conf_text.encode())
    if ids is not None:
        for p in (out, *(out / n for n in (*PUBLIC, "server.key", "midshift.conf"))):
            os.chown(p, *ids)
    return out / "midshift.conf"


def refresh(doc: dict[str, Any], site_files: dict[str, Path]) -> None:
    """Copy the ACL and CRL into an exported broker directory that is still there, keeping
    its owner (a provisioning command changed them)."""
    out = Path(doc.get("out") or "")
    if not doc.get("out") or not (out / "midshift.conf").is_file():
        return
    for name in ("acl", "crl.pem"):
        st = (out / name).stat() if (out / name).exists() else out.stat()
        write_public(out / name, site_files[name].read_bytes())
        shutil.chown(out / name, st.st_uid, st.st_gid)
