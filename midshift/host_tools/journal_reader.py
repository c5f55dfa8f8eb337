"""Reading a journal pulled from a gateway, offline, without changing a byte of it.

The journal is opened by the core (``Journal.open`` with ``repair=False``) over the agent's
own segment-file layout, opened read-only here: recovery, CRC checks, the chain, the
torn-tail cut and damage skipping are exactly the agent's (docs/journal-format.md), not a
second implementation. A copy on a read-only mount or write-protected card works; a
write attempt would raise.

What a report holds: the journal's identity (gateway, epoch, geometry), the commit point,
the records still held (the unacknowledged ones from the commit point on: acknowledged
records are reclaimed space, not history), the torn tail (position, bytes, reason), the
records lost to CRC failures or unreadable stretches, and the resulting seq gaps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import StorageError
from midshift.firmware.core.event import decode_body
from midshift.firmware.core.journal import Journal
from midshift.firmware.core.journal_open import JournalCorrupt, JournalUnformatted
from midshift.firmware.edges.flash import FileStorage


class JournalUnreadable(ValueError):
    """Not a journal, or one whose superblock cannot be trusted; the message says why."""


def open_journal(path: str | Path) -> Journal:
    try:
        storage = FileStorage(path, read_only=True)
    except (StorageError, OSError) as exc:
        raise JournalUnreadable(str(exc)) from None
    try:
        return Journal.open(storage, max_body=storage.segment_size, repair=False)
    except (JournalCorrupt, JournalUnformatted, StorageError) as exc:
        storage.close()
        raise JournalUnreadable(f"{path}: {exc}") from None


def record_row(r: rec.Record) -> dict[str, Any]:
    """One record as a flat dict: seq, class, HLC split into ms and counter, the body
    decoded (or ``body_error`` and the raw text when it does not decode)."""
    row: dict[str, Any] = {"seq": r.seq, "class": rec.CLASS_NAMES[r.cls] if r.cls < 2 else r.cls,
                           "hlc_ms": r.hlc >> 16, "hlc_counter": r.hlc & 0xFFFF,
                           "flags": r.flags}
    try:
        row.update(decode_body(r.body))
    except ValueError as exc:
        row.update({"source": None, "kind": None, "read_ms": None, "data": None,
                    "body_error": str(exc), "raw": bytes(r.body).decode("utf-8", "replace")})
    return row


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in ranges)


class JournalReport:
    """One pass over a journal: ``rows()`` yields each record as it is read (a 256 MiB
    ring is never held in memory), noting gaps and undecodable bodies on the way; the
    findings (``as_dict``, ``lines``, ``clean``) are complete once ``rows()`` is exhausted
    (``scan()`` does that without keeping the rows)."""

    MAX_LISTED = 100  # undecodable seqs listed by number; the count is always whole

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._journal = open_journal(path)
        j, r = self._journal, self._journal.recovery
        self.info: dict[str, Any] = {
            "path": str(self.path), "gateway": j.gateway_id, "epoch": f"{j.epoch:016x}",
            "segment_size": j.segment_size, "segment_count": j.segment_count,
            "tail_seq": j.tail_seq, "committed_seq": j.committed_seq,
            "durable_seq": j.durable_seq, "telemetry_dropped": j.dropped,
            "cursor_slot": r.cursor_slot, "cursor_fallback": r.cursor_fallback}
        self.torn_tail = None if r.cut_reason is None else {
            "pos": r.cut_pos, "bytes": r.cut_bytes, "reason": r.cut_reason,
            "seq": r.last_seq + 1}
        self.records = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.gaps: list[tuple[int, int]] = []
        self.undecodable: list[int] = []
        self.undecodable_count = 0
        self.crc_failures: list[tuple[int, int]] = []
        self.done = False

    def rows(self) -> Iterator[dict[str, Any]]:
        j = self._journal
        expect = j.tail_seq
        for r in j.records():
            row = record_row(r)
            if r.seq > expect:
                self.gaps.append((expect, r.seq - 1))
            expect = r.seq + 1
            self.records += 1
            self.first_seq = r.seq if self.first_seq is None else self.first_seq
            self.last_seq = r.seq
            if "body_error" in row:
                self.undecodable_count += 1
                if len(self.undecodable) < self.MAX_LISTED:
                    self.undecodable.append(r.seq)
            yield row
        if expect <= j.durable_seq:
            self.gaps.append((expect, j.durable_seq))
        # Damage is found at open (after the last commit point's hint) or while reading
        # (before it, where open trusts the frames): both land in ``damaged``.
        self.crc_failures = _merge([(s, s) for s in j.recovery.corrupt_seqs] + list(j.damaged))
        self.done = True

    def scan(self) -> JournalReport:
        for _ in self.rows():
            pass
        return self

    def close(self) -> None:
        self._journal.storage.close()

    def __enter__(self) -> JournalReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def clean(self) -> bool:
        return not (self.torn_tail or self.crc_failures or self.gaps
                    or self.info["cursor_fallback"] or self.undecodable_count)

    def as_dict(self) -> dict[str, Any]:
        if not self.done:
            raise RuntimeError("read every row (rows() or scan()) before asking for findings")
        return {**self.info, "records": self.records, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "torn_tail": self.torn_tail,
                "crc_failures": [list(x) for x in self.crc_failures],
                "gaps": [list(x) for x in self.gaps], "undecodable": self.undecodable,
                "undecodable_count": self.undecodable_count, "clean": self.clean}

    def lines(self) -> Iterator[str]:
        d = self.as_dict()
        yield (f"journal {d['path']}: gateway {d['gateway']}, epoch {d['epoch']}, "
               f"{d['segment_count']} x {d['segment_size']} bytes")
        yield (f"  commit point: tail seq {d['tail_seq']}, committed {d['committed_seq']} "
               f"(cursor slot {d['cursor_slot']}"
               f"{', newest slot torn: the older one was used' if d['cursor_fallback'] else ''})")
        span = f"seq {d['first_seq']}..{d['last_seq']}" if d["records"] else "none"
        yield f"  records held: {d['records']} ({span}); telemetry dropped: {d['telemetry_dropped']}"
        t = self.torn_tail
        yield ("  torn tail: none" if t is None else
               f"  torn tail: at byte {t['pos']}, {t['bytes']} bytes cut ({t['reason']}): the "
               f"write of seq {t['seq']} never completed")
        yield ("  CRC failures: none" if not self.crc_failures else
               "  CRC failures (records unreadable, lost): seq " + _ranges(self.crc_failures))
        yield "  gaps: none" if not self.gaps else "  gaps: seq " + _ranges(self.gaps)
        if self.undecodable_count:
            yield (f"  bodies that do not decode: {self.undecodable_count}, seq "
                   + ", ".join(map(str, self.undecodable))
                   + (" ..." if self.undecodable_count > len(self.undecodable) else ""))
        yield "  verdict: " + ("clean" if self.clean else "DAMAGED or torn (see above)")
