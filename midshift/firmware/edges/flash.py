"""File-backed journal storage on the gateway's flash: a directory of preallocated files.

The journal's flat byte space maps onto ``journal.head`` (superblock and the two cursor
slots, the first 4096 bytes) and ``seg-00000.dat`` ... one file per segment. Files are
preallocated and zero-filled once, then fsynced together with the directory, so later
writes never change a file's size and ``fdatasync`` does not have to flush metadata.
The journal never writes across a segment boundary, so one ``os.pwrite`` serves a call.

Formatting checks the free space first and removes whatever it created when it fails.
``FileStorage.check()`` compares the open files with the paths (deleted, replaced,
truncated), which the agent does every status period. Beside the journal directory, the
epoch mark ``<dir>.epoch`` remembers that this gateway has had a journal (its epoch and
last acknowledged seq): a journal found gone on start is refused unless the operator
asks for a new epoch (``open_gateway_journal``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from midshift.firmware.core.errors import StorageError
from midshift.firmware.core.journal import DATA_START, Journal

log = logging.getLogger(__name__)

HEAD_NAME = "journal.head"
# The journal's read window on CPython (the core's default, 4 KiB, is for the node's
# heap): a drain reads 1,000-record batches, and with 4 KiB each took some 35 reads and
# as many frame-by-frame steps at the window's edge (each read gives the interpreter lock
# away); 64 KiB is one read per segment. Measured on 120,000 records: 197 -> 158 ms.
READ_WINDOW = 65536


def _segment_name(i: int) -> str:
    return f"seg-{i:05d}.dat"


class FileStorage:
    """The journal storage interface (read, write, sync, size) over segment files."""

    def __init__(self, directory: str | Path, read_only: bool = False) -> None:
        """``read_only``: open the files O_RDONLY (a journal pulled from a dead gateway,
        inspected by host_tools); a write then raises ``StorageError``."""
        self.directory = Path(directory)
        self.read_only = read_only
        head = self.directory / HEAD_NAME
        if not head.exists():
            raise StorageError(f"{self.directory}: no journal here (missing {HEAD_NAME})")
        segs = sorted(self.directory.glob("seg-*.dat"))
        if not segs:
            raise StorageError(f"{self.directory}: journal has no segment files")
        self.segment_size = segs[0].stat().st_size
        for i, p in enumerate(segs):
            if p.name != _segment_name(i) or p.stat().st_size != self.segment_size:
                raise StorageError(f"{p}: segment files must be seg-00000.dat... of equal size "
                                   f"({self.segment_size} bytes)")
        mode = os.O_RDONLY if read_only else os.O_RDWR
        self._paths = [head, *segs]
        self._fds = [os.open(p, mode) for p in self._paths]
        # The group commit's flusher writes and syncs outside the journal lock while the
        # commit point (the head file) is written and synced under it. A file is clean
        # again only when no write came after the one its sync began from, so a sync that
        # returns has every write made before it on flash (a shared set cleared after a
        # sync could drop a segment another thread had just written: unsynced, marked
        # durable). Syncs need not wait for each other.
        self._dirty: dict[int, int] = {}  # file -> number of its last write
        self._writes = 0
        self._dirty_lock = threading.Lock()
        self._size = DATA_START + self.segment_size * len(segs)

    @classmethod
    def create(cls, directory: str | Path, segment_size: int, segment_count: int) -> FileStorage:
        """Preallocate the files (zero-filled), fsync them and the directory."""
        d = Path(directory)
        made_dir = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
        if (d / HEAD_NAME).exists():
            raise StorageError(f"{d}: a journal already exists here; refusing to overwrite it")
        need = DATA_START + segment_size * segment_count
        free = shutil.disk_usage(d).free
        if need > free:
            if made_dir:
                d.rmdir()
            raise StorageError(f"{d}: a journal of {need} bytes does not fit: {free} bytes free "
                               f"on its filesystem (lower journal.segment_count or segment_size)")
        zeros = bytes(min(segment_size, 1 << 20))
        created: list[Path] = []
        try:
            for name, size in [(HEAD_NAME, DATA_START)] + [
                    (_segment_name(i), segment_size) for i in range(segment_count)]:
                fd = os.open(d / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                created.append(d / name)
                try:
                    done = 0
                    while done < size:  # write real zeros: flash filesystems may not fallocate
                        done += os.pwrite(fd, zeros[: size - done], done)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(d)
        except OSError as exc:  # leave nothing half-formatted behind
            for f in created:
                f.unlink(missing_ok=True)
            if made_dir:
                shutil.rmtree(d, ignore_errors=True)
            raise StorageError(f"{d}: formatting a journal of {need} bytes failed: "
                               f"{exc.strerror or exc}; nothing was left behind") from None
        return cls(d)

    def check(self) -> str | None:
        """What happened to the files under the open journal (None: nothing): deleted,
        replaced by another file, or truncated."""
        for path, fd in zip(self._paths, self._fds, strict=False):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"{path} was deleted"
            except OSError as exc:
                return f"{path}: {exc.strerror}"
            mine = os.fstat(fd)
            if (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev) or mine.st_nlink == 0:
                return f"{path} was replaced"
            want = DATA_START if path.name == HEAD_NAME else self.segment_size
            if st.st_size < want:
                return f"{path} was truncated to {st.st_size} bytes"
        return None

    def _locate(self, offset: int, n: int) -> tuple[int, int]:
        if offset < DATA_START:
            if offset + n > DATA_START:
                raise StorageError(f"access {offset}+{n} crosses the journal head")
            return 0, offset
        i, off = divmod(offset - DATA_START, self.segment_size)
        if off + n > self.segment_size or i >= len(self._fds) - 1:
            raise StorageError(f"access {offset}+{n} crosses a segment end or the storage end")
        return i + 1, off

    def read(self, offset: int, n: int) -> bytes:
        f, off = self._locate(offset, n)
        data = os.pread(self._fds[f], n, off)
        if len(data) != n:
            raise StorageError(f"short read at {offset}: {len(data)} of {n} bytes")
        return data

    def write(self, offset: int, data: bytes) -> None:
        if self.read_only:
            raise StorageError(f"{self.directory}: the journal is opened read-only")
        f, off = self._locate(offset, len(data))
        mv, done = memoryview(data), 0
        while done < len(data):
            done += os.pwrite(self._fds[f], mv[done:], off + done)
        with self._dirty_lock:
            self._writes += 1
            self._dirty[f] = self._writes

    def sync(self) -> None:
        self._sync(None)

    def sync_head(self) -> None:
        """Sync the head file alone (the commit point): the journal writes a cursor only
        once everything it names is on flash."""
        self._sync(0)

    def _sync(self, only: int | None) -> None:
        with self._dirty_lock:
            todo = sorted(i for i in self._dirty.items() if only is None or i[0] == only)
        for f, n in todo:  # a failure leaves them dirty: the next sync tries them again
            os.fdatasync(self._fds[f])
            with self._dirty_lock:
                if self._dirty.get(f) == n:
                    del self._dirty[f]

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def open_or_create_journal(directory: str | Path, segment_size: int, segment_count: int,
                           gateway_id: str, epoch_source=None, wall_ms=None,
                           max_body: int = 16384) -> Journal:
    """Open the journal in ``directory``, formatting a new one (fresh random epoch) when the
    directory holds none. ``epoch_source`` returns 8 random bytes (default ``os.urandom``)."""
    d = Path(directory)
    if not (d / HEAD_NAME).exists():
        storage = FileStorage.create(d, segment_size, segment_count)
        epoch = 0
        while epoch == 0:
            epoch = int.from_bytes((epoch_source or os.urandom)(8), "little")
        Journal.format(storage, segment_size, epoch, gateway_id,
                       created_ms=int(wall_ms()) if wall_ms else 0)
        log.info("journal formatted in %s: %d x %d bytes, epoch %016x", d, segment_count,
                 segment_size, epoch)
    else:
        storage = FileStorage(d)
    journal = Journal.open(storage, max_body=max_body, read_window=READ_WINDOW)
    if (journal.segment_size, journal.segment_count) != (segment_size, segment_count):
        log.warning("journal %s keeps its geometry %d x %d bytes; the config asks for %d x %d "
                    "(reformat to change it)", d, journal.segment_count, journal.segment_size,
                    segment_count, segment_size)
    r = journal.recovery
    if r.cut_reason or r.corrupt_seqs or r.ghost_frames:
        log.warning("journal %s recovered with damage: %s", d, r.as_dict())
    return journal


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class EpochMark:
    """``<journal dir>.epoch``: this gateway's journal epoch and last acknowledged seq,
    outside the ring, so a journal that vanished is noticed on the next start. Written
    durably at format time; ``update`` (at each commit) is a cheap rename without sync:
    a slightly stale seq only understates what the ledger has."""

    def __init__(self, journal_dir: str | Path) -> None:
        d = Path(journal_dir)
        self.path = d.with_name(d.name + ".epoch")
        self.epoch = 0
        self.acked_seq = 0
        self.failed: str | None = None  # the last write failed: why

    def read(self) -> bool:
        """Load the mark; False when there is none."""
        try:
            doc = json.loads(self.path.read_text())
            self.epoch = int(doc["epoch"], 16)
            self.acked_seq = int(doc["acked_seq"])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{self.path}: unreadable epoch mark ({exc}); the journal "
                               f"history is unknown, start with --new-epoch") from None
        return True

    def write(self, epoch: int, acked_seq: int, durable: bool = True) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"epoch": f"{epoch:016x}", "acked_seq": acked_seq}, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if durable:
            _fsync_dir(self.path.parent)
        self.epoch, self.acked_seq = epoch, acked_seq

    def update(self, acked_seq: int) -> None:
        """Record a new acknowledged seq (raises OSError: the caller alarms)."""
        if acked_seq > self.acked_seq:
            self.write(self.epoch, acked_seq, durable=False)


def _move_aside(d: Path, epoch: int) -> Path | None:
    """Move what is left of an abandoned journal out of the way, never deleting it."""
    left = [p for p in d.glob("seg-*.dat")] + [p for p in (d / HEAD_NAME,) if p.exists()]
    if not left:
        return None
    aside = d.with_name(f"{d.name}.abandoned-{epoch:016x}-{int(time.time())}")
    aside.mkdir()
    for p in left:
        os.replace(p, aside / p.name)
    return aside


def open_gateway_journal(directory: str | Path, segment_size: int, segment_count: int,
                         gateway_id: str, wall_ms=None, max_body: int = 16384,
                         new_epoch: bool = False) -> tuple[Journal, EpochMark, dict | None]:
    """The agent's journal with its epoch mark: (journal, mark, abandoned). A gateway whose
    mark says it had a journal and finds it gone (missing, unreadable, another epoch)
    refuses to start unless ``new_epoch``; then ``abandoned`` is ``{"epoch", "acked_seq"}``
    of the lost one, for the ledger to hear as the new journal's first record."""
    d = Path(directory)
    mark = EpochMark(d)
    had = mark.read()
    problem = None
    journal = None
    if (d / HEAD_NAME).exists():
        try:
            journal = open_or_create_journal(d, segment_size, segment_count, gateway_id,
                                             wall_ms=wall_ms, max_body=max_body)
        except StorageError as exc:
            if not had:
                raise
            problem = str(exc)
        if journal is not None and had and journal.epoch != mark.epoch:
            problem = f"{d} holds epoch {journal.epoch:016x}, not this gateway's {mark.epoch:016x}"
            journal.close()
            journal = None
    elif had:
        problem = f"{d}: the journal is gone"
    abandoned = None
    if problem is not None:
        if not new_epoch:
            raise StorageError(
                f"journal lost: {problem}; {mark.path} says epoch {mark.epoch:016x} was here, "
                f"acknowledged up to seq {mark.acked_seq}. Events after that may be lost; "
                "to start a new epoch anyway run with --new-epoch")
        aside = _move_aside(d, mark.epoch)
        log.error("journal lost: %s; starting a new epoch (abandoned %016x at acked seq %d%s)",
                  problem, mark.epoch, mark.acked_seq, f", remains moved to {aside}" if aside
                  else "")
        abandoned = {"epoch": f"{mark.epoch:016x}", "acked_seq": mark.acked_seq}
    if journal is None:
        journal = open_or_create_journal(d, segment_size, segment_count, gateway_id,
                                         wall_ms=wall_ms, max_body=max_body)
    if not had or abandoned is not None:
        try:
            mark.write(journal.epoch, journal.committed_seq)
        except OSError as exc:  # the journal works without it; the agent alarms
            mark.epoch, mark.failed = journal.epoch, f"{exc.strerror or exc}"
            log.error("cannot write the epoch mark %s: %s; a lost journal would go unnoticed "
                      "on the next start", mark.path, mark.failed)
    else:
        mark.acked_seq = max(mark.acked_seq, journal.committed_seq)
    return journal, mark, abandoned
