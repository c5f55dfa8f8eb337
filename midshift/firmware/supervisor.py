"""Supervised threads: no runtime thread of the agent dies silently.

Each loop (the forwarder, the status loop) runs under ``Supervisor.spawn``. An unexpected
exception is logged with its traceback, counted, raised as the alarm ``thread_<name>``
(the status shows it) and the loop restarted after a backoff that doubles up to
``backoff_max_s``. A loop that crashes more than ``max_restarts`` times within
``window_s`` cannot be helped by another restart: the supervisor gives up, sets
``failed`` and the process exits non-zero (``python -m midshift.firmware run``) so systemd starts
it afresh. The alarm clears once the loop has run ``window_s`` without a crash.

Threads the agent does not own (each device driver's: the driver logs its own crash and
shows the device in ``error``) are ``watch``ed instead: ``tick`` (every status period)
finds one dead, counts and alarms it (``thread_driver-<name>``) and restarts it after the
same backoff. A driver is restarted forever: one broken device must not stop the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, on_alarm: Callable[[str, bool], None] | None = None,
                 max_restarts: int = 5, window_s: float = 60.0, backoff_s: float = 0.2,
                 backoff_max_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.on_alarm = on_alarm
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.monotonic = monotonic
        self.failed = threading.Event()
        self.failure = ""                           # why the supervisor gave up
        self.crashes: dict[str, int] = {}           # per loop, since start
        self._last_crash: dict[str, float] = {}
        self._lock = threading.Lock()
        # watched threads: name -> [alive(), restart(), restart due (None: running), delay]
        self._watched: dict[str, list] = {}

    def spawn(self, name: str, loop: Callable[[], None],
              stopping: threading.Event) -> threading.Thread:
        """Run ``loop`` in a daemon thread; it returns when ``stopping`` is set."""
        t = threading.Thread(target=self._guard, args=(name, loop, stopping), name=name,
                             daemon=True)
        t.start()
        return t

    def _guard(self, name: str, loop: Callable[[], None], stopping: threading.Event) -> None:
        recent: deque[float] = deque()
        delay = self.backoff_s
        while not stopping.is_set():
            try:
                loop()
                return  # a loop returns only when asked to stop
            except Exception as exc:  # noqa: BLE001 - the point: no exception goes unseen
                if stopping.is_set():
                    return
                now = self.monotonic()
                log.exception("thread %s crashed (%r); restarting in %.1f s", name, exc, delay)
                with self._lock:
                    self.crashes[name] = self.crashes.get(name, 0) + 1
                    self._last_crash[name] = now
                self._alarm(f"thread_{name}", True)
                recent.append(now)
                while recent and now - recent[0] > self.window_s:
                    recent.popleft()
                if len(recent) > self.max_restarts:
                    self.failure = (f"thread {name} crashed {len(recent)} times within "
                                    f"{self.window_s:.0f} s; last: {exc!r}")
                    log.critical("giving up: %s", self.failure)
                    self.failed.set()
                    return
                if stopping.wait(delay):
                    return
                delay = min(delay * 2, self.backoff_max_s)

    def _alarm(self, name: str, on: bool) -> None:
        if self.on_alarm is None:
            return
        try:
            self.on_alarm(name, on)
        except Exception:  # noqa: BLE001 - reporting must not kill the reporter
            log.exception("could not raise alarm %s", name)

    def watch(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        """Restart a thread someone else runs when ``tick`` finds it dead."""
        self._watched[name] = [alive, restart, None, self.backoff_s]

    def _check_watched(self, now: float) -> None:
        for name, w in self._watched.items():
            alive, restart, due, delay = w
            if due is None:
                if alive():
                    continue
                log.error("thread %s died; restarting in %.1f s", name, delay)
                with self._lock:
                    self.crashes[name] = self.crashes.get(name, 0) + 1
                    self._last_crash[name] = now
                self._alarm(f"thread_{name}", True)
                w[2] = now + delay
                w[3] = min(delay * 2, self.backoff_max_s)
            elif now >= due:
                w[2] = None
                try:
                    restart()
                except Exception:  # noqa: BLE001 - try again after the next backoff
                    log.exception("thread %s: restart failed", name)

    def tick(self) -> None:
        """Restart watched threads found dead, and clear the alarm of each thread that has
        run ``window_s`` without a crash (the status loop calls this every period)."""
        now = self.monotonic()
        self._check_watched(now)
        with self._lock:
            quiet = [n for n, t in self._last_crash.items() if now - t > self.window_s]
            for n in quiet:
                del self._last_crash[n]
        for n in quiet:
            if n in self._watched:
                self._watched[n][3] = self.backoff_s
            self._alarm(f"thread_{n}", False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.crashes)
