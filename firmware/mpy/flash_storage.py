"""The journal's storage on the board's own filesystem (littlefs): a directory of files.

Same layout as the gateway's ``firmware/edges/flash.py`` (``docs/journal-format.md``):
``journal.head`` holds bytes [0, 4096) of the flat space (superblock, commit points) and
``seg-00000.dat`` ... one file per segment. The files are created full size (zeros) once,
so a write never grows a file. The journal never writes across a segment end, so one
``seek`` + ``write`` serves a call. At most ``max_open`` files are open at a time (each
open littlefs file holds a cache buffer in RAM); closing a dirty one commits it early,
which only makes data durable sooner.

What a power cut can and cannot tear here (littlefs is copy-on-write):

- It cannot tear a write inside one file: a file's changes become visible atomically at
  ``flush()`` (``lfs_file_sync``) or close. Cut before that, the whole file reads as it
  was at its previous sync; cut after, as written. A half-written frame never appears.
- It can separate files: ``sync()`` commits the dirty files one after another, so a cut
  in between leaves, say, a segment committed and the head not, or the first of two
  segments a flush touched committed and the second not. The journal is built for that:
  its commit points alternate and carry a CRC, and recovery accepts only whole, chained
  frames, so what was not all synced reads as a torn tail (never reported durable) and a
  stale commit point only means a resend the ledger's unique key absorbs.
- Flash wear and bad blocks are littlefs's job (it relocates worn blocks). A board
  formatted with FAT instead (some older ESP32 images) gives none of this: a cut during a
  FAT write can tear a sector, which the journal's CRCs detect but cannot undo.

Cost: littlefs rewrites a file from a changed block to its end, so segments are kept
small (``segment_size`` 4096, one erase block on the Pico W and ESP32) and each sync
rewrites at most a block or two. On CPython (tests) the same code runs on ordinary files
and ``sync()`` adds ``os.fsync``.

When the far end is gone: there is none; a failed read or write (flash full, I/O error)
is a ``StorageError`` to the caller, which counts it and goes on.
"""

import os

from firmware.core.errors import JournalUnformatted, StorageError
from firmware.core.journal import DATA_START, Journal

HEAD_NAME = "journal.head"
_CHUNK = 512  # zero-fill in small writes: a board has little RAM
_fsync = getattr(os, "fsync", None)  # CPython only; littlefs commits at flush()


def segment_name(i):
    return "seg-%05d.dat" % i


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


class FlashStorage:
    """The journal storage interface (read, write, sync, size) over segment files."""

    def __init__(self, directory, max_open=3):
        self.directory = directory
        self.max_open = max_open
        if _size(self._path(0)) != DATA_START:
            raise StorageError("%s: no journal here (missing %s)" % (directory, HEAD_NAME))
        count = 0
        self.segment_size = _size(self._path(1))
        while _size(self._path(count + 1)) == self.segment_size and self.segment_size > 0:
            count += 1
        if count < 2:
            raise StorageError("%s: journal has fewer than two equal segment files" % directory)
        self.segment_count = count
        self._size = DATA_START + self.segment_size * count
        self._open = []   # [(index, file)], most recently used last
        self._dirty = []  # indexes written since the last sync

    @classmethod
    def create(cls, directory, segment_size, segment_count):
        """Write the files full of zeros (and commit each); refuses to overwrite a journal."""
        try:
            os.mkdir(directory)
        except OSError:
            pass  # exists
        if _size(directory + "/" + HEAD_NAME) >= 0:
            raise StorageError("%s: a journal already exists here; refusing to overwrite it"
                               % directory)
        zeros = bytes(_CHUNK)
        names = [segment_name(i) for i in range(segment_count)] + [HEAD_NAME]
        for name in names:  # the head last: without it the directory is not a journal
            size = DATA_START if name == HEAD_NAME else segment_size
            with open(directory + "/" + name, "wb") as f:
                done = 0
                while done < size:
                    n = min(_CHUNK, size - done)
                    f.write(zeros if n == _CHUNK else bytes(n))
                    done += n
                f.flush()
                if _fsync is not None:
                    _fsync(f.fileno())
        return cls(directory)

    def _path(self, i):
        if i == 0:
            return self.directory + "/" + HEAD_NAME
        return self.directory + "/" + segment_name(i - 1)

    def _locate(self, offset, n):
        if offset < DATA_START:
            if offset + n > DATA_START:
                raise StorageError("access %d+%d crosses the journal head" % (offset, n))
            return 0, offset
        i, off = divmod(offset - DATA_START, self.segment_size)
        if off + n > self.segment_size or i >= self.segment_count:
            raise StorageError("access %d+%d crosses a segment end or the storage end" % (
                offset, n))
        return i + 1, off

    def _file(self, i):
        for k in range(len(self._open)):
            if self._open[k][0] == i:
                entry = self._open.pop(k)
                self._open.append(entry)
                return entry[1]
        if len(self._open) >= self.max_open:
            j, f = self._open.pop(0)
            f.close()  # commits it if dirty: durable early, never late
            if j in self._dirty:
                self._dirty.remove(j)
        try:
            f = open(self._path(i), "r+b")
        except OSError as exc:
            raise StorageError("%s: cannot open: %s" % (self._path(i), exc))
        self._open.append((i, f))
        return f

    def read(self, offset, n):
        i, off = self._locate(offset, n)
        f = self._file(i)
        try:
            f.seek(off)
            data = f.read(n)
        except OSError as exc:
            raise StorageError("read at %d failed: %s" % (offset, exc))
        if data is None or len(data) != n:
            raise StorageError("short read at %d: %d of %d bytes" % (
                offset, 0 if data is None else len(data), n))
        return data

    def write(self, offset, data):
        i, off = self._locate(offset, len(data))
        f = self._file(i)
        try:
            f.seek(off)
            done = f.write(data)
        except OSError as exc:
            raise StorageError("write at %d failed: %s" % (offset, exc))
        if done is not None and done != len(data):
            raise StorageError("short write at %d: %d of %d bytes" % (offset, done, len(data)))
        if i not in self._dirty:
            self._dirty.append(i)

    def sync(self):
        for i, f in self._open:
            if i in self._dirty:
                try:
                    f.flush()
                    if _fsync is not None:
                        _fsync(f.fileno())
                except OSError as exc:
                    raise StorageError("sync failed: %s" % exc)
        self._dirty = []

    def size(self):
        return self._size

    def close(self):
        for _, f in self._open:
            try:
                f.close()
            except OSError:
                pass
        self._open = []
        self._dirty = []


def random_epoch():
    """A random non-zero 64-bit epoch id (``os.urandom`` exists on the RP2040 and ESP32)."""
    epoch = 0
    while epoch == 0:
        raw = os.urandom(8)
        for b in raw:
            epoch = (epoch << 8) | b
    return epoch


def open_or_create_journal(directory, segment_size, segment_count, gateway_id, wall_ms=0,
                           max_body=4096, epoch=None):
    """The journal in ``directory``, formatted with a fresh epoch when none is there."""
    if _size(directory + "/" + HEAD_NAME) < 0:
        storage = FlashStorage.create(directory, segment_size, segment_count)
        Journal.format(storage, segment_size, epoch or random_epoch(), gateway_id,
                       created_ms=wall_ms)
    else:
        storage = FlashStorage(directory)
    try:
        return Journal.open(storage, max_body=max_body, read_window=512)
    except JournalUnformatted:  # power cut between creating the files and formatting
        Journal.format(storage, storage.segment_size, epoch or random_epoch(), gateway_id,
                       created_ms=wall_ms)
        return Journal.open(storage, max_body=max_body, read_window=512)
