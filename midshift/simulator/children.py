"""Child processes that never outlive the simulator, and signals that stop it in order.

Everything the simulator starts as a process (mosquitto, the ledger, agents, PostgreSQL)
is started by ``spawn``:

- in a session and process group of its own (``start_new_session``), so a Ctrl-C typed at
  the terminal reaches only the runner, which then stops the children in order (agents
  first, then the ledger, then the broker) instead of all of them dying at once; and a
  ``killpg`` reaches whatever the child started itself;
- with a parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``): if the simulator dies
  without cleaning up (SIGKILL, a crash), the kernel sends the child ``death_signal``.
  An orphaned agent once kept reopening its serial links on ptys the next run had been
  given, and read that run's bytes; this is what prevents it;
- from one long-lived thread. The kernel sends the parent-death signal when the *thread*
  that forked the child ends, not the process: an agent restarted by the timeline's
  thread would otherwise be killed when that thread finishes.

Every child is remembered until it has exited; ``stop_all`` terminates what is left (the
last sweep after an orderly stop, which normally finds nothing; only children started
within the ``stop_on_signals`` block, so a command run in-process by a test leaves the
test's own broker alone).

``stop_on_signals`` turns SIGTERM and SIGINT into ``Stopped`` raised in the main thread,
once: the ``finally`` blocks that stop the site then run to their end, and a second
signal during that cleanup is ignored rather than cutting it short. Not handled: a child
that itself ignores its signals for longer than ``stop_all``'s timeout is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with(parent_pid: int, sig: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
        _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl: nobody will tell us
            os.kill(os.getpid(), sig)
    return preexec


class _Spawner:
    """One daemon thread that forks every child (see the module docstring for why)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue]] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()

    def _loop(self) -> None:
        while True:
            job, reply = self._jobs.get()
            try:
                reply.put((True, job()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                reply.put((False, exc))

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="spawner", daemon=True)
                self._thread.start()
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs.put((job, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value


_spawner = _Spawner()


def spawn(argv: list[str], death_signal: int = signal.SIGTERM, **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` in its own session, sent ``death_signal`` when
    this process dies. (``user=`` works: the signal is set after the switch of user, which
    would otherwise clear it.)"""
    def job() -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True,
                                preexec_fn=_die_with(os.getpid(), death_signal), **popen)
        _spawner.live.add(proc)
        return proc
    return _spawner.run(job)


def live() -> list[subprocess.Popen]:
    """Children spawned here that have not exited."""
    for p in list(_spawner.live):
        if p.poll() is not None:
            _spawner.live.discard(p)
    return list(_spawner.live)


def stop_all(timeout_s: float = 10.0, keep: frozenset[subprocess.Popen] = frozenset()) -> int:
    """SIGTERM every child still running (but those in ``keep``), SIGKILL its group after
    ``timeout_s``; returns how many there were."""
    left = [p for p in live() if p not in keep]
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    for p in left:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s: SIGKILL", p.pid, timeout_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    live()
    return len(left)


class Stopped(BaseException):  # noqa: N818 - reads as what happened: "Stopped by SIGTERM"
    """SIGTERM or SIGINT arrived: the run stops in order. A BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _Signals:
    fired: int | None = None  # the first stop signal
    raised = False
    shield = 0  # depth of deferred_stop blocks


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first SIGTERM/SIGINT raises ``Stopped`` in the main thread (at the end
    of a ``deferred_stop`` block if one is running), later ones are ignored: the cleanup
    already under way finishes."""
    def handler(signum: int, frame: Any) -> None:
        if _Signals.fired is not None:
            return
        _Signals.fired = signum
        if _Signals.shield == 0:
            _Signals.raised = True
            raise Stopped(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    before = frozenset(live())  # a caller's own children (a test's broker) are not ours
    try:
        yield
    finally:
        stop_all(keep=before)
        for s, h in old.items():
            signal.signal(s, h)
        _Signals.fired, _Signals.raised = None, False


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """A stop signal arriving within waits until the block has ended: for starts that a
    cut in half would leave in a state their stop cannot clean (an emulator's event loop
    with the server half up, whose pending tasks are then destroyed at exit)."""
    _Signals.shield += 1
    try:
        yield
    finally:
        _Signals.shield -= 1
    if _Signals.shield == 0 and _Signals.fired is not None and not _Signals.raised:
        _Signals.raised = True
        raise Stopped(_Signals.fired)
