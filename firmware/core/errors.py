"""Exceptions of the portable core.

    MidshiftError
     +-- ConfigError          a configuration value is wrong (file, key, value, expectation)
     +-- JournalError         the journal cannot do what was asked
     |    +-- JournalFull     no committed space left for this record class
     |    +-- JournalCorrupt  the superblock is unreadable: refuse to guess
     |    +-- JournalUnformatted  blank storage: format it first
     |    +-- RecordTooLarge  a body exceeds the journal's maximum record size
     +-- StorageError         the storage under the journal failed (I/O error, power cut)
          +-- PowerCut        raised by the crash-simulating storage when its power is cut

Each carries a stable ``code`` for counters, the status message and the sync log.
"""


class MidshiftError(Exception):
    code = "error"


class ConfigError(MidshiftError):
    code = "config"


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


class JournalCorrupt(JournalError):
    code = "journal_corrupt"


class JournalUnformatted(JournalError):
    code = "journal_unformatted"


class RecordTooLarge(JournalError):
    code = "record_too_large"


class StorageError(MidshiftError):
    code = "storage"


class PowerCut(StorageError):
    code = "power_cut"
