"""Per-till bearer tokens for the gateway's till API.

``provision tills --store S --tills till-1,till-2 --out DIR`` writes one token per till
(``DIR/till-1.token``, 0600: it goes onto that till and nowhere else) and the hashes file
the gateway reads (``DIR/till-tokens.json``: ``{"till-1": "<sha256 hex>"}``, named by
``[till_api] tokens_file``). The gateway keeps only digests, so a copied gateway disk
gives nobody a till's credential. Adding tills later merges into the hashes file; an
existing till's token is replaced only with ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from midshift.host_tools.provision.secret_file import KeyExists, write_private, write_public

HASHES_FILE = "till-tokens.json"
TILL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_till_name(name: str) -> None:
    if not 0 < len(name) <= 32 or not set(name) <= TILL_CHARS:
        raise ValueError(f"{name!r} is not a till id (1 to 32 letters, digits, '_' or '-')")


def provision_tills(out: Path, store: str, tills: list[str],
                    force: bool = False) -> dict[str, str]:
    """Write the tokens and merge the hashes file; returns {till: token path}."""
    for t in [store, *tills]:
        check_till_name(t)
    hashes_path = out / HASHES_FILE
    hashes: dict[str, str] = {}
    if hashes_path.exists():
        hashes = json.loads(hashes_path.read_text(encoding="utf-8"))
    for till in tills:
        if till in hashes and not force:
            raise KeyExists(out / f"{till}.token")
    paths = {}
    for till in tills:
        token = f"{store}.{till}.{secrets.token_urlsafe(32)}"
        paths[till] = str(write_private(out / f"{till}.token", (token + "\n").encode(),
                                        force=True))
        hashes[till] = token_digest(token)
    write_public(hashes_path, (json.dumps(hashes, indent=2, sort_keys=True) + "\n").encode())
    return paths
