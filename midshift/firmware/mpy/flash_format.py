"""The node's journal at boot: on first boot make the segment files and format the
journal, then open it (``open_or_create_journal``).

Boot-only (``boot.BOOT_ONLY``): the running node keeps ``flash_storage.py`` (reads,
writes, the log) and not this, so boot's ``release`` frees it (bench node: about 1 KiB
of RAM with the modules on a filesystem). It goes through ``flash_storage``'s ``os``,
``open`` and ``_fsync``, so a test that points those at another filesystem (the littlefs
of ``bench/node_flash.py``) points this module at it too.
"""

from midshift.firmware.core.errors import JournalUnformatted, StorageError
from midshift.firmware.core.journal import DATA_START, Journal
from midshift.firmware.mpy import flash_storage as fs

_CHUNK = 512  # zero-fill in small writes: a board has little RAM


def _open(path, mode):
    return getattr(fs, "open", open)(path, mode)  # flash_storage's, where a test set one


def create(directory, segment_size, segment_count):
    """Write the files full of zeros (and commit each) and return their ``FlashStorage``;
    refuses to overwrite a journal."""
    try:
        fs.os.mkdir(directory)
    except OSError:
        pass  # exists
    if fs._size(directory + "/" + fs.HEAD_NAME) >= 0:
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
    if fs._size(directory + "/" + fs.HEAD_NAME) < 0:
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
