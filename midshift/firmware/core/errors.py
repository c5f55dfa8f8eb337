"""Exceptions of the portable core.

    MidshiftError
     +-- ConfigError          a configuration value is wrong (file, key, value, expectation)
     +-- JournalError         the journal cannot do what was asked
     |    +-- JournalFull     no committed space left for this record class
     |    +-- JournalCorrupt  the superblock is unreadable: refuse to guess (journal_open.py)
     |    +-- JournalUnformatted  blank storage: format it first (journal_open.py)
     |    +-- RecordTooLarge  a body exceeds the journal's maximum record size
     +-- StorageError         the storage under the journal failed (I/O error, power cut)
          +-- PowerCut        raised by the crash-simulating storage when its power is cut
                              (crash_storage.py)

Each carries a stable ``code`` for counters, the status message and the sync log. The
three marked with a module live there: only opening a journal raises the first two, only
the crash-simulating storage the third, so a MicroPython node, which keeps this module
loaded, never holds them after boot.
"""


class MidshiftError(Exception):
    code = "error"


class ConfigError(MidshiftError):
    """``FILE: KEY: PROBLEM; allowed: ALLOWED``: names the file, the key, what is wrong, what is allowed.

    ``key`` is the dotted path inside the merged config (``devices.plc1.registers[2].type``);
    ``file`` may be filled in later by the loader, which knows where the key came from.
    """

    code = "config"

    def __init__(self, key, problem, allowed=None, file=None):
        self.key = key
        self.problem = problem
        self.allowed = allowed
        self.file = file
        super().__init__(self._text())

    def _text(self):
        text = "%s: %s" % (self.key, self.problem)
        if self.allowed:
            text += "; allowed: %s" % self.allowed
        if self.file:
            text = "%s: %s" % (self.file, text)
        return text

    def in_file(self, file):
        """The same error, naming ``file``."""
        return ConfigError(self.key, self.problem, self.allowed, file)


class JournalError(MidshiftError):
    code = "journal"


class JournalFull(JournalError):
    """Raised when a record cannot be stored without overwriting unacknowledged data."""

    code = "journal_full"

    def __init__(self, cls_name, need_bytes, free_bytes):
        super().__init__(
            "journal full: %s record of %d bytes refused, %d bytes free; "
            "waiting for the ledger to acknowledge older records" % (cls_name, need_bytes, free_bytes),
        )
        self.cls_name = cls_name
        self.need_bytes = need_bytes
        self.free_bytes = free_bytes


class RecordTooLarge(JournalError):
    code = "record_too_large"


class StorageError(MidshiftError):
    code = "storage"
