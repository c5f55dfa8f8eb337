"""SIGTERM and SIGINT for the ledger: taken in one thread, and a stop that is bounded.

No Python signal handler is installed. A handler runs in the main thread between two
bytecodes, wherever that thread is: one that calls ``threading.Event.set()`` can land
inside the ``Event.wait()`` it is meant to end, while the main thread holds the Event's
lock, which is not reentrant, and the process hangs for good (Python's ``signal`` docs:
"synchronization primitives such as threading.Lock should not be used within signal
handlers"). And a handler waits while the main thread is inside C code that retries
``EINTR`` (a libpq call). Instead:

- ``install()``, called in the main thread before any other thread exists, blocks both
  signals there, so every thread started afterwards (paho's, the writer, the metrics
  server) inherits the block and none is ever interrupted;
- one daemon thread takes them with ``signal.sigtimedwait`` and sets ``requested``, on
  which the main thread waits (an ordinary Event, set from an ordinary thread);
- from that moment the stop has ``bound_s`` (10 s): if the process is still there then
  (the writer stuck in a call to a database that no longer answers, a network loop that
  does not end), ``give_up`` writes one line and ends the process with ``os._exit(3)``,
  without running cleanups that could wait on the stuck thread. The main thread calls
  ``give_up`` itself when ``LedgerService.stop()`` reports an unclean stop.

Later signals stay pending and are ignored: the stop under way finishes or hits the bound.
Processes started afterwards inherit the blocked mask (``--workers N`` workers are ledgers
that install their own ``StopSignals``, so they take their signals the same way).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_STUCK = 3  # documented with the ledger's other exit codes (midshift/host_tools/commands/ledger.py)
STOP_BOUND_S = 10.0


class StopSignals:
    def __init__(self, who: str = "ledger", bound_s: float = STOP_BOUND_S) -> None:
        self.who = who
        self.bound_s = bound_s
        self.requested = threading.Event()  # set once a stop signal has arrived
        self.signum: int | None = None
        self.deadline: float | None = None  # monotonic time of the bound
        self._closed = threading.Event()
        self._giving_up = threading.Lock()
        self._thread = threading.Thread(target=self._take, name="stop-signals", daemon=True)

    def install(self) -> StopSignals:
        """Block the signals in this (the main) thread and start taking them."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop taking signals and unblock them (for a caller that goes on living)."""
        self._closed.set()
        self._thread.join(2)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def remaining(self, default_s: float) -> float:
        """Seconds left before the bound (``default_s`` when no signal came)."""
        if self.deadline is None:
            return default_s
        return max(0.0, self.deadline - time.monotonic())

    def _take(self) -> None:
        while not self._closed.is_set():
            info = signal.sigtimedwait(SIGNALS, 0.5)
            if info is None:
                continue
            self.signum = info.si_signo
            self.deadline = time.monotonic() + self.bound_s
            log.info("%s: %s: stopping", self.who, signal.Signals(info.si_signo).name)
            self.requested.set()
            # The process normally ends long before: this thread ends with it.
            if not self._closed.wait(self.bound_s):
                self.give_up(f"not stopped {self.bound_s:g} s after "
                             f"{signal.Signals(info.si_signo).name}")
            return

    def give_up(self, why: str) -> None:
        """One line, then ``os._exit(EXIT_STUCK)``: no cleanup that could wait on a stuck
        thread (atexit handlers, joining threads, closing a connection in use). The line is
        written from a helper thread given a second, in case the stuck thread holds the log
        stream's lock (a pipe nobody reads)."""
        with self._giving_up:  # the main thread and this one may both get here: one line
            def say() -> None:
                log.error("%s: %s; exiting with code %d", self.who, why, EXIT_STUCK)
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):  # closed, or the pipe is gone
                        pass
            line = threading.Thread(target=say, name="stop-signals-last-line", daemon=True)
            line.start()
            line.join(1.0)
            os._exit(EXIT_STUCK)
