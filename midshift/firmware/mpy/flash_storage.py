"""The journal's storage on the board's own filesystem (littlefs): a directory of files.

Same layout as the gateway's ``midshift/firmware/edges/flash.py`` (``docs/journal-format.md``):
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

Cost, and the log in front of the segments: littlefs never programs a flash page twice
between erases, so a sync of a segment file copies the whole block the change is in
(4096 bytes, one erase) however small the change. At one event a second that was a
block erased per event for the segment and one for the head (``bench node``). So small
writes go first to ``log/recent``, a file of at most ``LOG_MAX`` bytes, which littlefs
keeps inline in the metadata log of its own directory: a sync rewrites only that file,
appended to the metadata log, and erases a block only when that log fills (every ten
or so syncs). When the log is full, its entries are written to their segment files,
which are synced, and the log is replaced by the new writes (or emptied): a segment
block is rewritten every few events instead of every event. Reads see the segment files
with the log's entries laid over them. The log is committed atomically (one file), so a
sync that fits the log is atomic as a whole; entries go to the segment files only
before the log is replaced, so a file never holds data newer than a log entry for the
same bytes, and replaying the log after a cut only writes what was already there.
Making the files and formatting the journal on first boot is in ``flash_format.py``,
which boot releases.

On CPython (tests) the same code runs on ordinary files, ``sync()`` adds ``os.fsync``
and the log is replaced by rename.

When the far end is gone: there is none; a failed read or write (flash full, I/O error)
is a ``StorageError`` to the caller, which counts it and goes on.
"""

import binascii
import os
import struct

from midshift.firmware.core.errors import StorageError
from midshift.firmware.core.journal import DATA_START

HEAD_NAME = "journal.head"
LOG_DIR = "log"        # a directory of its own: its littlefs metadata pair holds one file
LOG_NAME = "log/recent"
# What the log file may hold: under littlefs's inline limit (min(cache_size 1024,
# block_size / 8 = 512) on a Pico W), so the file lives inside its directory's metadata
# log and rewriting it erases nothing until that log fills.
LOG_MAX = 448
_ENTRY = "<IH"  # storage offset, length; then the bytes. The file ends with a CRC-32.
_ENTRY_SIZE = 6
_fsync = getattr(os, "fsync", None)  # CPython only; littlefs commits at flush()


def segment_name(i):
    return "seg-%05d.dat" % i


# Each open littlefs file holds its cache in the heap (1 KiB on a Pico W). Two suffice for
# the loop (the head and the segment in use): with three, the same 3,000 events on
# littlefs programmed and erased exactly as much (bench/node_flash.py); with one, 18% more.
MAX_OPEN = 2


class FlashStorage:
    """The journal storage interface (read, write, sync, size) over segment files."""

    def __init__(self, directory, max_open=MAX_OPEN):
        self.directory = directory
        self.max_open = max_open
        self._open = []   # [(index, file)], most recently used last
        self._dirty = []  # indexes written since the last sync
        self._pending = []  # [(offset, bytes)] written since the last sync
        # Finding the files and reading the log run once, at boot: in flash_format.py,
        # which the node drops from RAM after boot.
        from midshift.firmware.mpy.flash_format import attach
        attach(self)

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
        data = self._read_file(i, off, n)
        for entries in (self._log, self._pending):  # newer writes over older, in order
            for at, raw in entries:
                lo, hi = max(at, offset), min(at + len(raw), offset + n)
                if lo < hi:
                    if not isinstance(data, bytearray):
                        data = bytearray(data)
                    data[lo - offset:hi - offset] = raw[lo - at:hi - at]
        return bytes(data)

    def _read_file(self, i, off, n):
        f = self._file(i)
        try:
            f.seek(off)
            data = f.read(n)
        except OSError as exc:
            raise StorageError("read at %d failed: %s" % (off, exc))
        if data is None or len(data) != n:
            raise StorageError("short read in %s at %d: %d of %d bytes" % (
                self._path(i), off, 0 if data is None else len(data), n))
        return data

    def write(self, offset, data):
        self._locate(offset, len(data))  # checked now, written at sync
        self._pending.append((offset, bytes(data)))

    def sync(self):
        """Make every write since the last sync durable: into the log when it fits,
        otherwise the log's entries to their files first, then the new writes."""
        if not self._pending:
            return
        pending = self._pending
        if _log_size(self._log) + _log_size(pending) - 4 <= LOG_MAX:
            entries = self._log + pending
            self._write_log(entries)
        else:
            if self._log:
                self._to_files(self._log)  # older than anything written since
            if _log_size(pending) <= LOG_MAX:
                entries = pending
                self._write_log(entries)  # replaces the old entries, now in their files
            else:
                entries = []
                if self._log:
                    self._write_log(entries)  # before newer bytes reach the same files
                self._to_files(pending)
        self._log = entries
        self._pending = []

    def _to_files(self, entries):
        for offset, data in entries:
            i, off = self._locate(offset, len(data))
            f = self._file(i)
            try:
                f.seek(off)
                done = f.write(data)
            except OSError as exc:
                raise StorageError("write at %d failed: %s" % (offset, exc))
            if done is not None and done != len(data):
                raise StorageError("short write at %d: %d of %d bytes" % (
                    offset, done, len(data)))
            if i not in self._dirty:
                self._dirty.append(i)
        for i, f in self._open:
            if i in self._dirty:
                try:
                    f.flush()
                    if _fsync is not None:
                        _fsync(f.fileno())
                except OSError as exc:
                    raise StorageError("sync failed: %s" % exc)
        self._dirty = []

    def _write_log(self, entries):
        parts = []
        for offset, data in entries:
            parts.append(struct.pack(_ENTRY, offset, len(data)))
            parts.append(data)
        body = b"".join(parts)
        body += struct.pack("<I", _crc(body))
        path = self.directory + "/" + LOG_NAME
        try:
            if _fsync is None:  # littlefs: the file is committed whole at close
                with open(path, "wb") as f:
                    f.write(body)
                return
            with open(path + ".new", "wb") as f:  # CPython files: write, fsync, rename
                f.write(body)
                f.flush()
                _fsync(f.fileno())
            os.replace(path + ".new", path)
        except OSError as exc:
            if exc.args and exc.args[0] == 2:  # ENOENT: a journal made before the log
                os.mkdir(self.directory + "/" + LOG_DIR)
                return self._write_log(entries)
            raise StorageError("log write failed: %s" % exc)

    def size(self):
        return self._size

    def close(self):
        """Close the files; writes not yet synced are dropped, as at a power cut."""
        for _, f in self._open:
            try:
                f.close()
            except OSError:
                pass
        self._open = []
        self._dirty = []
        self._pending = []


def _log_size(entries):
    n = 4  # the CRC
    for _, data in entries:
        n += _ENTRY_SIZE + len(data)
    return n


def _crc(data):
    return binascii.crc32(data) & 0xFFFFFFFF
