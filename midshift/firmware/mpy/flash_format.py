"""The node's journal at boot: on first boot make the segment files and format the
journal, then open it (``open_or_create_journal``); what opening a ``FlashStorage`` does
once (``attach``: find the segment files, read the log).

Boot-only (``boot.BOOT_ONLY``): the running node keeps ``flash_storage.py`` (reads,
writes, the log) and not this, so boot's ``release`` frees it (bench node: about 1 KiB
of RAM with the modules on a filesystem). It goes through ``flash_storage``'s ``os``,
``open`` and ``_fsync``, so a test that points those at another filesystem (the littlefs
of ``bench/node_flash.py``) points this module at it too.
"""

import struct

from midshift.firmware.core.errors import StorageError
from midshift.firmware.core.journal import DATA_START, Journal
from midshift.firmware.core.journal_open import JournalUnformatted
from midshift.firmware.mpy import flash_storage as fs

_CHUNK = 512  # zero-fill in small writes: a board has little RAM


def _open(path, mode):
    return getattr(fs, "open", open)(path, mode)  # flash_storage's, where a test set one


def _size(path):
    try:
        return fs.os.stat(path)[6]
    except OSError:
        return -1


def attach(storage):
    """``FlashStorage(directory)``'s opening: the geometry from the files' sizes and what
    the log holds; StorageError when the directory holds no journal."""
    directory = storage.directory
    if _size(storage._path(0)) != DATA_START:
        raise StorageError("%s: no journal here (missing %s)" % (directory, fs.HEAD_NAME))
    count = 0
    storage.segment_size = _size(storage._path(1))
    while _size(storage._path(count + 1)) == storage.segment_size \
            and storage.segment_size > 0:
        count += 1
    if count < 2:
        raise StorageError("%s: journal has fewer than two equal segment files" % directory)
    storage.segment_count = count
    storage._size = DATA_START + storage.segment_size * count
    storage._log = read_log(directory)  # [(offset, bytes)] committed in the log file


def read_log(directory):
    path = directory + "/" + fs.LOG_NAME
    try:
        with _open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return []  # none yet (or a journal made before the log existed)
    if len(raw) < 4 or fs._crc(raw[:-4]) != struct.unpack("<I", raw[-4:])[0]:
        # littlefs commits the file whole; only a damaged flash gets here. What the
        # log held reads as a torn tail, which the journal cuts at recovery.
        return []
    out, at = [], 0
    while at < len(raw) - 4:
        offset, n = struct.unpack_from(fs._ENTRY, raw, at)
        at += fs._ENTRY_SIZE
        out.append((offset, raw[at:at + n]))
        at += n
    return out


def create(directory, segment_size, segment_count):
    """Write the files full of zeros (and commit each) and return their ``FlashStorage``;
    refuses to overwrite a journal."""
    try:
        fs.os.mkdir(directory)
    except OSError:
        pass  # exists
    if _size(directory + "/" + fs.HEAD_NAME) >= 0:
        raise StorageError("%s: a journal already exists here; refusing to overwrite it"
                           % directory)
    try:
        fs.os.mkdir(directory + "/" + fs.LOG_DIR)
    except OSError:
        pass  # exists
    zeros = bytes(_CHUNK)
    names = [fs.segment_name(i) for i in range(segment_count)] + [fs.HEAD_NAME]
    for name in names:  # the head last: without it the directory is not a journal
        size = DATA_START if name == fs.HEAD_NAME else segment_size
        with _open(directory + "/" + name, "wb") as f:
            done = 0
            while done < size:
                n = min(_CHUNK, size - done)
                f.write(zeros if n == _CHUNK else bytes(n))
                done += n
            f.flush()
            if fs._fsync is not None:
                fs._fsync(f.fileno())
    return fs.FlashStorage(directory)


def random_epoch():
    """A random non-zero 64-bit epoch id (``os.urandom`` exists on the RP2040 and ESP32)."""
    epoch = 0
    while epoch == 0:
        raw = fs.os.urandom(8)
        for b in raw:
            epoch = (epoch << 8) | b
    return epoch


def open_or_create_journal(directory, segment_size, segment_count, gateway_id, wall_ms=0,
                           max_body=4096, epoch=None):
    """The journal in ``directory``, formatted with a fresh epoch when none is there."""
    if _size(directory + "/" + fs.HEAD_NAME) < 0:
        storage = create(directory, segment_size, segment_count)
        Journal.format(storage, segment_size, epoch or random_epoch(), gateway_id,
                       created_ms=wall_ms)
    else:
        storage = fs.FlashStorage(directory)
    try:
        return Journal.open(storage, max_body=max_body, read_window=512)
    except JournalUnformatted:  # power cut between creating the files and formatting
        Journal.format(storage, storage.segment_size, epoch or random_epoch(), gateway_id,
                       created_ms=wall_ms)
        return Journal.open(storage, max_body=max_body, read_window=512)
