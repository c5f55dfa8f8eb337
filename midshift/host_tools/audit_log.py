"""The site's audit log: one JSON line per state-changing host_tools action, hash-chained.

Each line holds ``seq`` (1, 2, ...), ``time`` (UTC), ``user`` (the OS user, and the sudo
caller when there is one), ``action``, ``subject``, ``details``, ``prev`` (the previous
line's hash) and ``hash``: SHA-256 over ``prev`` and the line's own canonical JSON without
``hash``. Editing a line breaks its hash; deleting or reordering lines breaks the seq and
``prev`` chain. Deleting lines *from the end* leaves a shorter chain that is still whole,
so the head (last seq and hash) is also kept in ``audit.head`` beside the log, and
``audit verify --expect-head SEQ:HASH`` checks against a head recorded somewhere else
(a ticket, a second machine): the chain proves order and integrity, only an outside copy
of the head proves nothing was cut *and* the head file was not rewritten with it.

Appends take an exclusive ``flock`` on the log, so two host_tools commands running at
once still produce one chain. Never holds secrets: callers pass ids, serials, paths.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(str(entry.get("prev", "")).encode() + b"\n" + _canonical(entry)).hexdigest()


def os_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")  # who ran sudo, which getuser() hides
    return f"{user} (sudo by {sudo})" if sudo and sudo != user else user


class AuditLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.stem + ".head")

    def append(self, action: str, subject: str, details: dict[str, Any] | None = None,
               ) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            last = None
            for line in f:  # small files: a site logs a few lines a day
                if line.strip():
                    last = line
            seq, prev = 0, GENESIS
            if last is not None:
                try:
                    doc = json.loads(last)
                    seq, prev = int(doc["seq"]), str(doc["hash"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{self.path}: the last line is not an audit entry; run "
                                     "`python -m midshift.host_tools audit verify`") from None
            entry = {"seq": seq + 1,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "user": os_user(), "action": action, "subject": subject,
                     "details": details or {}, "prev": prev}
            entry["hash"] = entry_hash(entry)
            f.seek(0, os.SEEK_END)
            f.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            tmp = self.head_path.with_suffix(".tmp")
            tmp.write_text(f"{entry['seq']}:{entry['hash']}\n")
            os.replace(tmp, self.head_path)
        return entry

    def verify(self, expect_head: str | None = None) -> tuple[int, str, list[str]]:
        """(entries, head "SEQ:HASH", problems); no problems means the log is whole."""
        problems: list[str] = []
        if not self.path.exists():
            return 0, f"0:{GENESIS}", [f"{self.path} does not exist"]
        seq, prev = 0, GENESIS
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    if not isinstance(doc, dict):
                        raise ValueError
                except ValueError:
                    problems.append(f"line {lineno}: not a JSON audit entry")
                    continue
                if doc.get("seq") != seq + 1:
                    problems.append(f"line {lineno}: seq {doc.get('seq')} where {seq + 1} was "
                                    "expected: a line was deleted, inserted or moved")
                if doc.get("prev") != prev:
                    problems.append(f"line {lineno}: does not chain to the line before it")
                if doc.get("hash") != entry_hash(doc):
                    problems.append(f"line {lineno}: its hash does not match its content: "
                                    "the line was edited")
                seq = doc["seq"] if isinstance(doc.get("seq"), int) else seq + 1
                prev = str(doc.get("hash"))
        head = f"{seq}:{prev}"
        recorded = self.head_path.read_text().strip() if self.head_path.exists() else None
        if recorded is None:
            problems.append(f"{self.head_path} is missing: cannot tell if lines were cut from "
                            "the end")
        elif recorded != head:
            problems.append(f"the log ends at {head[:20]}... but {self.head_path.name} "
                            f"records {recorded[:20]}...: lines were deleted from the end "
                            "or the head file was replaced")
        if expect_head is not None and expect_head != head:
            problems.append(f"the log ends at {head} but the expected head is {expect_head}")
        return seq, head, problems
