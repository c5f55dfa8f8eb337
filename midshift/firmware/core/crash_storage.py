"""A crash-simulating storage, in the manner of SQLite's crash-testing file layer.

``CrashStorage`` behaves like ``MemoryStorage`` and records every write and sync in a
trace. From the trace, ``image_at`` rebuilds what the medium could hold if power had
failed after any prefix of it: writes before the last sync are whole; writes after it
may each be lost, survive, or be reordered, and one of them may be torn at a byte.
``cut_after_bytes`` cuts power during a live run: the write that crosses the budget is
torn there and ``PowerCut`` is raised, as is every later call.

Not modelled: a sync that reports success without being durable (lying flash), and
damage to bytes other than the ones being written (flash page-erase neighbours).
"""

from midshift.firmware.core.errors import StorageError
from midshift.firmware.core.storage import MemoryStorage


class PowerCut(StorageError):
    """This storage's power was cut (``cut_after_bytes``)."""

    code = "power_cut"


class CrashStorage:
    def __init__(self, size, base=None, cut_after_bytes=None):
        self._mem = MemoryStorage(size)
        if base is not None:
            self._mem.write(0, base)
        self.base = self._mem.image()
        self.trace = []  # ("w", offset, bytes) or ("s",)
        self.cut_after_bytes = cut_after_bytes
        self.bytes_written = 0
        self.powered = True

    def read(self, offset, n):
        self._check_power()
        return self._mem.read(offset, n)

    def write(self, offset, data):
        self._check_power()
        data = bytes(data)
        if self.cut_after_bytes is not None:
            room = self.cut_after_bytes - self.bytes_written
            if len(data) > room:
                if room > 0:
                    self._mem.write(offset, data[:room])
                    self.trace.append(("w", offset, data[:room]))
                    self.bytes_written += room
                self.powered = False
                raise PowerCut("power cut at byte %d" % self.cut_after_bytes)
        self._mem.write(offset, data)
        self.trace.append(("w", offset, data))
        self.bytes_written += len(data)

    def sync(self):
        self._check_power()
        self.trace.append(("s",))

    def size(self):
        return self._mem.size()

    def image(self):
        return self._mem.image()

    def close(self):
        pass

    def _check_power(self):
        if not self.powered:
            raise PowerCut("storage has no power")

    def image_at(self, n_ops, rng=None, lose_unsynced=False, reorder=False, tear=False):
        """The medium's bytes after a power cut following the first ``n_ops`` trace entries.

        With no options, every write in the prefix survives in order. ``tear`` cuts the
        last surviving unsynced write at a random byte; ``lose_unsynced`` drops a random
        subset of the writes since the last sync; ``reorder`` applies them in random order.
        ``rng`` needs ``randrange(n)`` (e.g. random.Random).
        """
        ops = self.trace[:n_ops]
        last_sync = -1
        for i in range(len(ops)):
            if ops[i][0] == "s":
                last_sync = i
        buf = bytearray(self.base)
        for op in ops[:last_sync + 1]:
            if op[0] == "w":
                buf[op[1]:op[1] + len(op[2])] = op[2]
        pending = [op for op in ops[last_sync + 1:] if op[0] == "w"]
        if rng is not None and lose_unsynced:
            pending = [op for op in pending if rng.randrange(2)]
        if rng is not None and reorder:
            for i in range(len(pending) - 1, 0, -1):  # Fisher-Yates
                j = rng.randrange(i + 1)
                pending[i], pending[j] = pending[j], pending[i]
        for k in range(len(pending)):
            off, data = pending[k][1], pending[k][2]
            if tear and rng is not None and k == len(pending) - 1 and len(data) > 1:
                data = data[:rng.randrange(len(data))]
            buf[off:off + len(data)] = data
        return bytes(buf)

    def sync_points(self):
        """Trace indices just after each sync: prefixes at which a flush had completed."""
        return [i + 1 for i in range(len(self.trace)) if self.trace[i][0] == "s"]
