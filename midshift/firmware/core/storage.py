"""The storage interface the journal runs over, and an in-memory implementation.

A storage is a flat byte space with four methods:

    read(offset, n) -> bytes     n bytes at offset (zeros where never written)
    write(offset, data)          may be buffered by the OS until sync
    sync()                       everything written before it is durable after it returns
    size() -> int                total bytes

The journal never writes across a segment boundary in one call, so file-backed storages
can map segments to files. ``MemoryStorage`` is the fake used by tests, the simulator and
the MicroPython node's tests; ``CrashStorage`` (crash_storage.py) adds power cuts.
"""


class MemoryStorage:
    def __init__(self, size):
        self._buf = bytearray(size)
        self.syncs = 0
        self.writes = 0

    def read(self, offset, n):
        if offset < 0 or offset + n > len(self._buf):
            raise ValueError("read %d+%d outside storage of %d bytes" % (offset, n, len(self._buf)))
        return bytes(memoryview(self._buf)[offset:offset + n])

    def write(self, offset, data):
        if offset < 0 or offset + len(data) > len(self._buf):
            raise ValueError("write %d+%d outside storage of %d bytes" % (
                offset, len(data), len(self._buf)))
        self._buf[offset:offset + len(data)] = data
        self.writes += 1

    def sync(self):
        self.syncs += 1

    def size(self):
        return len(self._buf)

    def image(self):
        return bytes(self._buf)

    def close(self):
        pass
