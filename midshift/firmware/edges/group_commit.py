"""Group commit for the journal on CPython: leader/follower, plus a background flusher.

Producers append under a lock and get their seq at once. A producer that then waits for
durability becomes the leader if no flush is in flight: it takes everything queued (up to
two segments' worth, the journal's bound on unsynced writes), writes it and syncs once,
without the lock, then wakes the followers that queued meanwhile; they share the next
sync. So the sync rate adapts to the load (at low rates each append gets its own sync at
once, at high rates hundreds share one) and no thread hand-off sits on the latency path.
Records nobody waits for (telemetry, the open-loop benchmark) are flushed by a background
thread the same way. ``window_ms`` adds an optional linger before a sync to batch more at
the price of latency (default 0: the in-flight sync is the window).

Commit points (the ledger's acks, ``commit``; the head hint a segment's worth of durable
records calls for) are synced outside the lock too, one at a time: a producer appending
meanwhile is not held up by that sync (at 1,000 events/s one was held up every half
second, for the length of a sync of the head file, by the ack commit alone). Only an
append that might have to drop telemetry for room (which writes a cursor itself) waits
for one in flight.

A full filesystem (ENOSPC on a write or sync) is not the end: the journal refuses new
records with ``JournalNoSpace`` and the flusher retries the same writes every
``RETRY_S`` until they succeed, then takes records again. Any other storage failure,
and journal files found deleted or replaced (``check_storage``), stop appends for good.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from collections.abc import Callable

from midshift.firmware.core.errors import JournalFull, StorageError
from midshift.firmware.core.hlc import HybridLogicalClock
from midshift.firmware.core.journal import Journal
from midshift.firmware.core.record import HEADER_SIZE, TXN

RETRY_S = 1.0  # how often writes that hit a full filesystem are retried
SYNC_SAMPLES = 4096  # flush times kept for ``sync_ms``


class JournalNoSpace(StorageError):
    code = "journal_no_space"


class JournalLost(StorageError):
    code = "journal_lost"


class GroupCommitJournal:
    """Thread-safe facade over a Journal; the only object the agent's threads share."""

    def __init__(self, journal: Journal, window_ms: float = 0.0, max_batch: int = 1024,
                 hlc: HybridLogicalClock | None = None) -> None:
        self.journal = journal
        # Stamping under the append lock keeps HLC order and seq order the same.
        self._hlc = hlc
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.lock = threading.Lock()
        # Two conditions on one lock: appends wake only the flusher, syncs wake the waiters.
        self._queued = threading.Condition(self.lock)
        self._changed = threading.Condition(self.lock)
        self._error: BaseException | None = None
        self._no_space: OSError | None = None  # a full filesystem: retrying ``_retry``
        self._retry: tuple[list, int, int] | None = None
        self.lost: str | None = None            # the journal files are gone: why
        self.on_commit: Callable[[int], None] | None = None  # the epoch mark's update
        self._holds: dict[int, int] = {}  # token -> the first seq the holder may append
        self._next_hold = 0
        self._closing = False
        self._flushing = False
        self._cursor_busy = False  # a commit point is being written outside the lock
        self._hint_failed_seq = -1  # the durable seq at which a hint last failed to write
        self.syncs = 0
        # The last flushes' write-and-sync times (ms): what the flash made producers wait.
        self.sync_ms: deque[float] = deque(maxlen=SYNC_SAMPLES)
        self._thread = threading.Thread(target=self._run, name="journal-commit", daemon=True)
        self._thread.start()

    # producers -----------------------------------------------------------------------

    def append(self, body: bytes, cls: int = TXN, hlc: int | None = None) -> int:
        """Queue a record; durable once ``wait_durable(seq)`` returns True. ``hlc`` None:
        stamped now by the HLC (0 without one)."""
        with self.lock:
            self._wait_cursor_if_short(len(body))
            seq = self._append_locked(body, cls, hlc)
            if not self._flushing:  # a flush in flight wakes the flusher when it ends
                self._queued.notify()
            return seq

    def append_many(self, records: list[tuple[bytes, int]]) -> list[int | JournalFull]:
        """Queue ``(body, cls)`` records under one lock hold, in order: a driver that read
        many values at once hands them over together, so they share one sync and no other
        producer's record lands between them. Per record its seq, or the ``JournalFull``
        that refused it (the others still go in); any other storage error refuses all."""
        out: list[int | JournalFull] = []
        with self.lock:
            self._wait_cursor_if_short(sum(len(body) + HEADER_SIZE for body, _ in records))
            for body, cls in records:
                try:
                    out.append(self._append_locked(body, cls, None))
                except JournalFull as exc:
                    out.append(exc)
            if not self._flushing:
                self._queued.notify()
        return out

    def _wait_cursor_if_short(self, size: int) -> None:
        """Appending ``size`` bytes may drop telemetry for room only when less than that
        and two segments (the padding and a record at most) are free, and a drop writes a
        cursor of its own: not while another is in flight."""
        need = size + 2 * self.journal.segment_size
        while self._cursor_busy and self.journal.free_bytes() < need:
            self._changed.wait()

    def _append_locked(self, body: bytes, cls: int, hlc: int | None) -> int:
        if self._error is not None:
            raise StorageError(f"journal storage failed: {self._error}")
        if self.lost is not None:
            raise JournalLost(f"journal lost ({self.lost}): new records refused")
        if self._no_space is not None:
            raise JournalNoSpace(f"journal storage full ({self._no_space.strerror}): new "
                                 "records refused until space returns")
        if hlc is None:
            hlc = self._hlc.now() if self._hlc is not None else 0
        return self.journal.append(body, cls, hlc)

    def wait_durable(self, seq: int, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.journal.durable_seq < seq:
                if self._error is not None:
                    raise StorageError(f"journal storage failed: {self._error}")
                if self._no_space is not None:
                    raise JournalNoSpace(f"record {seq} not durable: journal storage full "
                                         f"({self._no_space.strerror}); it is written when "
                                         "space returns")
                if not self._flushing:
                    self._flush_locked()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def append_durable(self, body: bytes, cls: int = TXN, hlc: int | None = None,
                       timeout_s: float = 5.0) -> int:
        """Append and return only once the record is on flash (the device may be told OK)."""
        seq = self.append(body, cls, hlc)
        if not self.wait_durable(seq, timeout_s):
            raise StorageError(f"record {seq} not durable within {timeout_s} s")
        return seq

    def wait_for_durable_after(self, seq: int, timeout_s: float) -> int:
        """Block until something beyond ``seq`` is durable (or timeout); returns durable seq."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.journal.durable_seq <= seq and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self.journal.durable_seq

    # the committer -------------------------------------------------------------------

    def _flush_locked(self) -> None:
        """Lead one flush: called with the lock held, returns with it held."""
        if self._retry is not None:
            runs, seq, pos = self._retry
        else:
            runs, seq, pos = self.journal.take_pending()
        if not runs:
            return
        self._flushing = True
        self.lock.release()
        t0 = time.monotonic()
        try:
            # Write and sync without the lock, so producers keep appending and their
            # records share the next sync.
            for offset, data in runs:
                self.journal.storage.write(offset, data)
            self.journal.storage.sync()
        except OSError as exc:
            self.lock.acquire()
            self._flushing = False
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._fail(exc)
            # A full filesystem: keep the frames, refuse new ones, retry the same writes.
            self._retry, self._no_space = (runs, seq, pos), exc
            self._changed.notify_all()
            self._queued.notify()  # the flusher retries
            return
        except Exception as exc:  # storage died: every waiter must hear it
            self.lock.acquire()
            self._fail(exc)
        self.sync_ms.append((time.monotonic() - t0) * 1000.0)
        self.lock.acquire()
        self._flushing = False
        self._retry, self._no_space = None, None
        self.journal.mark_durable(seq, pos, hint=False)  # the flusher writes the hint
        self.syncs += 1
        self._changed.notify_all()
        self._queued.notify()  # the flusher may take what queued during this sync

    def _fail(self, exc: BaseException) -> None:
        """Storage died (lock held): every waiter must hear it."""
        self._error = exc
        self._flushing = False
        self._changed.notify_all()
        self._queued.notify_all()
        raise StorageError(f"journal storage failed: {exc}") from exc

    def _run(self) -> None:
        with self.lock:
            while True:
                while self._no_space is not None and not self._closing:
                    self._queued.wait(RETRY_S)  # a full filesystem: retry the same writes
                    if self._flushing or self._closing:
                        continue
                    try:
                        self._flush_locked()
                    except StorageError:
                        return
                while ((not self.journal.pending() or self._flushing)
                       and not self._hint_ready()
                       and self._no_space is None and not self._closing):
                    self._queued.wait()
                if self._hint_ready() and not self._closing:
                    self._write_hint_locked()
                    continue
                if self.window_s and not self._closing:
                    deadline = time.monotonic() + self.window_s
                    while self.journal.pending() < self.max_batch and not self._closing:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._queued.wait(left)
                if self._flushing:
                    continue
                try:
                    self._flush_locked()
                except StorageError:
                    return
                if self._closing and not self.journal.pending():
                    return

    def _hint_ready(self) -> bool:
        return (not self._cursor_busy and self._error is None and self._no_space is None
                and self.journal.hint_due()
                and self._hint_failed_seq != self.journal.durable_seq)  # once per flush

    def _write_hint_locked(self) -> None:
        """The head hint a segment's worth of durable records calls for, synced without
        the lock (called with it held, returns with it held). A failure costs only the
        hint: recovery scans further instead."""
        cursor = self.journal.prepare_hint()
        self._cursor_busy = True
        self.lock.release()
        try:
            self.journal.write_cursor(cursor)
            written = True
        except Exception:  # noqa: BLE001 - see above; the next segment's hint tries again
            written = False
        self.lock.acquire()
        self._cursor_busy = False
        if written:
            self.journal.apply_cursor(cursor)
        else:  # not again before the next flush: a failing flash is not spun on
            self._hint_failed_seq = self.journal.durable_seq
        self._changed.notify_all()

    # consumers -----------------------------------------------------------------------

    def read(self, pos=None, seq=None, max_records: int = 256, max_bytes: int = 1 << 20):
        with self.lock:
            return self.journal.read(pos, seq, max_records, max_bytes)

    # Read-only state for the link session, each under the lock: the producers and the
    # flusher move it meanwhile (a telemetry drop moves the tail, a sync the durable end).
    @property
    def epoch(self) -> int:
        return self.journal.epoch  # fixed when the journal was formatted

    @property
    def data_size(self) -> int:
        return self.journal.data_size

    @property
    def durable_seq(self) -> int:
        with self.lock:
            return self.journal.durable_seq

    def tail(self) -> tuple[int, int]:
        with self.lock:
            return self.journal.tail()

    def durable(self) -> tuple[int, int]:
        with self.lock:
            return self.journal.durable()

    def backlog(self) -> tuple[int, int]:
        with self.lock:
            return self.journal.backlog()

    def free_bytes(self) -> int:
        with self.lock:
            return self.journal.free_bytes()

    def observe(self, remote_hlc: int) -> None:
        """Merge a peer's HLC timestamp (the ledger's, from an ack) under the lock that
        stamps appends, so seq order and HLC order stay the same."""
        with self.lock:
            if self._hlc is not None:
                self._hlc.observe(remote_hlc)

    def hold(self) -> int:
        """Keep the commit point below every record appended from now until ``release``
        (returns the token): for a caller that keeps its own durable note of the append
        (the till API's key index, rebuilt at start from the records not yet reclaimed).
        Without it, a power cut between the append and that note lost the key once the
        ledger's ack had reclaimed the record, and the till's retry was taken twice."""
        with self.lock:
            self._next_hold += 1
            self._holds[self._next_hold] = self.journal.next_seq
            return self._next_hold

    def release(self, token: int) -> None:
        with self.lock:
            self._holds.pop(token, None)

    def commit(self, seq: int, next_pos: int | None = None) -> None:
        """Persist the commit point up to ``seq``; the sync runs outside the lock (module
        docstring). Raises what the write raised, with nothing moved."""
        with self.lock:
            while self._cursor_busy:  # one cursor at a time: they alternate slots
                self._changed.wait()
            if self._holds:  # held back: the next ack's commit catches up after release
                floor = min(self._holds.values())
                if seq >= floor:
                    seq, next_pos = floor - 1, None
            cursor = self.journal.prepare_commit(seq, next_pos)
            if cursor is not None:
                self._cursor_busy = True
            self._changed.notify_all()
        if cursor is not None:
            try:
                self.journal.write_cursor(cursor)
            except BaseException:
                with self.lock:
                    self._cursor_busy = False
                    self._changed.notify_all()
                    self._queued.notify()
                raise
            with self.lock:
                self.journal.apply_cursor(cursor)
                self._cursor_busy = False
                self._changed.notify_all()
                self._queued.notify()  # the flusher may have a hint waiting
        if self.on_commit is not None:
            self.on_commit(seq)

    def check_storage(self) -> str | None:
        """Are the journal's files still the ones open? (None: yes.) Once they are not,
        new records are refused: they would go to files nobody will ever read."""
        check = getattr(self.journal.storage, "check", None)
        problem = check() if check is not None else None
        if problem is not None:
            with self.lock:
                self.lost = problem
        return problem

    def no_space(self) -> bool:
        """True while a full filesystem keeps records from becoming durable."""
        with self.lock:
            return self._no_space is not None

    def stats(self) -> dict:
        with self.lock:
            s = self.journal.stats()
        s["syncs"] = self.syncs
        return s

    def close(self) -> None:
        with self.lock:
            self._closing = True
            self._changed.notify_all()
            self._queued.notify_all()
        self._thread.join(timeout=10)
        with self.lock:
            if self._error is None and self.journal.pending() and not self._flushing:
                self._flush_locked()
            if self._error is None:
                self.journal.close()
