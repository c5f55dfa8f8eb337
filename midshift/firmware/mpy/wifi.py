"""Wi-Fi station management (``network.WLAN``): join, notice a drop, rejoin with a backoff.

``WifiStation.check(mono_ms)`` never blocks: ``WLAN.connect()`` only starts an
association on MicroPython, and the result shows up in ``isconnected()`` on later
checks. The main loop calls it every step; the uplink is used only while it is up.

When the far end is gone (access point down, out of range, wrong passphrase): the
station is ``down``, a join is retried after 0.5 s, doubling to ``max_retry_ms`` (default
8 s), and each attempt that does not associate within ``join_timeout_ms`` is abandoned
(``WLAN.disconnect()``) before the next. Counters: ``joins`` (attempts), ``ups``,
``drops`` (lost after being up). Sockets that were open when the link dropped fail or time
out on their own; the uplink notices that, not this module.
"""

try:
    import network
except ImportError:  # not a board and no test shim on the path
    network = None

FIRST_RETRY_MS = 500


class WifiStation:
    def __init__(self, ssid, passphrase, wlan=None, max_retry_ms=8000, join_timeout_ms=15000):
        if wlan is None:
            wlan = network.WLAN(network.STA_IF)
        self.wlan = wlan
        self.ssid = ssid
        self.passphrase = passphrase
        self.max_retry_ms = max_retry_ms
        self.join_timeout_ms = join_timeout_ms
        self.up = False
        self._joining_since = None
        self._next_try_ms = 0
        self._retry_ms = FIRST_RETRY_MS
        self.counters = {"joins": 0, "ups": 0, "drops": 0}

    def check(self, mono_ms):
        """True while associated (and holding an address); starts a join when due."""
        try:
            connected = bool(self.wlan.isconnected())
        except OSError:
            connected = False
        if connected:
            if not self.up:
                self.up = True
                self.counters["ups"] += 1
                self._joining_since = None
                self._retry_ms = FIRST_RETRY_MS
            return True
        if self.up:
            self.up = False
            self.counters["drops"] += 1
            self._next_try_ms = mono_ms  # rejoin at once after a drop
        if self._joining_since is not None:
            if mono_ms - self._joining_since < self.join_timeout_ms:
                return False
            self._abandon(mono_ms)
        if mono_ms >= self._next_try_ms:
            self._join(mono_ms)
        return False

    def _join(self, mono_ms):
        self.counters["joins"] += 1
        self._joining_since = mono_ms
        try:
            self.wlan.active(True)
            self.wlan.connect(self.ssid, self.passphrase)
        except OSError:
            self._abandon(mono_ms)

    def _abandon(self, mono_ms):
        self._joining_since = None
        try:
            self.wlan.disconnect()
        except OSError:
            pass
        self._next_try_ms = mono_ms + self._retry_ms
        self._retry_ms = min(self._retry_ms * 2, self.max_retry_ms)

    def status(self):
        return {"up": self.up, "counters": dict(self.counters)}

    def close(self):
        try:
            self.wlan.disconnect()
        except OSError:
            pass
