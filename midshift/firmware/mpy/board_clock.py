"""The node's two clocks: wall time for event stamps and the HLC, monotonic for timers.

``now_ms()`` is milliseconds since the Unix epoch whatever epoch the port's ``time`` uses
(some MicroPython ports count from 2000-01-01: the offset is found from ``gmtime(0)``).
``monotonic_ms()`` is ``time.ticks_ms()`` unwrapped into an integer that only grows: the
core's timers subtract plain integers, and ``ticks_ms`` wraps (every 2**30 ms, about 12
days, on most ports). It must be called at least once per wrap period; the main loop does
so on every step.

When the far end is gone: a board has no battery-backed clock, so after a power cut its
wall clock starts in 1970 or 2000 until NTP answers. ``synced()`` says whether the wall
clock is plausible; until it is, the pipeline refuses events with ``bad_time`` (counted),
and ``sync_ntp()`` is retried while Wi-Fi is up. On CPython (tests) the host clock is set,
so ``synced()`` is true from the start and ``ntptime`` is never imported.
"""

import time

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython: a monotonic clock that does not wrap
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

MIN_PLAUSIBLE_MS = 1000000000000  # 2001-09-09: the pipeline's own lower bound
_EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0


class BoardClock:
    def __init__(self):
        self._last_ticks = ticks_ms()
        self._mono = 0
        self.ntp_syncs = 0
        self.ntp_failures = 0

    def now_ms(self):
        try:
            ns = time.time_ns()
        except AttributeError:  # an old port without time_ns
            return (int(time.time()) + _EPOCH_OFFSET_S) * 1000
        return ns // 1000000 + _EPOCH_OFFSET_S * 1000

    def monotonic_ms(self):
        t = ticks_ms()
        self._mono += ticks_diff(t, self._last_ticks)
        self._last_ticks = t
        return self._mono

    def synced(self):
        return self.now_ms() >= MIN_PLAUSIBLE_MS

    def sync_ntp(self, host=None):
        """Set the wall clock from NTP (blocks up to ntptime's own 1 s timeout); True if set."""
        try:
            import ntptime
            if host:
                ntptime.host = host
            ntptime.settime()
        except Exception:  # noqa: BLE001 - ImportError off a board, OSError on a timeout
            self.ntp_failures += 1
            return False
        self.ntp_syncs += 1
        return True
