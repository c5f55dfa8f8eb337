"""File-backed journal storage on the gateway's flash: a directory of preallocated files.

The journal's flat byte space maps onto ``journal.head`` (superblock and the two cursor
slots, the first 4096 bytes) and ``seg-00000.dat`` ... one file per segment. Files are
preallocated and zero-filled once, then fsynced together with the directory, so later
writes never change a file's size and ``fdatasync`` does not have to flush metadata.
The journal never writes across a segment boundary, so one ``os.pwrite`` serves a call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from firmware.core.errors import StorageError
from firmware.core.journal import DATA_START, Journal

log = logging.getLogger(__name__)

HEAD_NAME = "journal.head"


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
        self._fds = [os.open(head, mode)]
        self._fds += [os.open(p, mode) for p in segs]
        self._dirty: set[int] = set()
        self._size = DATA_START + self.segment_size * len(segs)

    @classmethod
    def create(cls, directory: str | Path, segment_size: int, segment_count: int) -> FileStorage:
        """Preallocate the files (zero-filled), fsync them and the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if (d / HEAD_NAME).exists():
            raise StorageError(f"{d}: a journal already exists here; refusing to overwrite it")
        zeros = bytes(min(segment_size, 1 << 20))
        for name, size in [(HEAD_NAME, DATA_START)] + [
                (_segment_name(i), segment_size) for i in range(segment_count)]:
            fd = os.open(d / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                done = 0
                while done < size:  # write real zeros: flash filesystems may not fallocate
                    done += os.pwrite(fd, zeros[: size - done], done)
                os.fsync(fd)
            finally:
                os.close(fd)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return cls(d)

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
        self._dirty.add(f)

    def sync(self) -> None:
        for f in sorted(self._dirty):
            os.fdatasync(self._fds[f])
        self._dirty.clear()

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
    journal = Journal.open(storage, max_body=max_body)
    if (journal.segment_size, journal.segment_count) != (segment_size, segment_count):
        log.warning("journal %s keeps its geometry %d x %d bytes; the config asks for %d x %d "
                    "(reformat to change it)", d, journal.segment_count, journal.segment_size,
                    segment_count, segment_size)
    r = journal.recovery
    if r.cut_reason or r.corrupt_seqs:
        log.warning("journal %s recovered with damage: %s", d, r.as_dict())
    return journal
