"""An MT-SICS scale on a ``machine.UART``: stable weights become ``weight`` events.

The MicroPython counterpart of ``midshift/firmware/edges/scale.py``: the conversation (requests by
the clock, what a reply means, the "one settled load, one event" rule) is the core's
``ScaleSession`` (``midshift/firmware/core/mtsics.py``), the same on both runtimes; this module
moves bytes and keeps the state. ``poll(mono_ms, wall_ms)`` never blocks: a command is a
few bytes into the UART's transmit buffer.

When the far end is gone: an unplugged scale is a request without a reply, counted
``timeouts``; after ``stale_s`` without any reply the state is ``stale`` (in listen mode
``SIR`` goes out again). The last stable reading is remembered across the silence (an
item left on the pan is not a new item). Overload, underload, error replies and
unparsable lines are counted per kind and set the state to ``error`` until the next weight.

Not modelled: tare and zero (the node never changes the scale), MT-SICS levels 2 and 3.
"""

from midshift.firmware.core.event import Event
from midshift.firmware.core.mtsics import ScaleSession

READ_MAX = 256


class UartScale:
    kind = "scale"

    def __init__(self, name, uart, settings):
        self.name = name
        self.uart = uart
        self.settings = settings
        self.session = ScaleSession(name, settings, self._count)
        self._stale_ms = int(settings["stale_s"] * 1000)
        self._started_ms = None
        self.state = "ok"
        self.last_error = None
        self.counters = {"bytes": 0, "requests": 0, "timeouts": 0, "weights": 0}

    def poll(self, mono_ms, wall_ms):
        out = []
        session = self.session
        if self._started_ms is None:
            self._started_ms = mono_ms
            self._send(session.opened(mono_ms))
        self._send(session.due(mono_ms))
        last = session.last_reply_ms
        silent = mono_ms - (last if last is not None else self._started_ms)
        if silent >= self._stale_ms:
            if self.state != "stale":
                self.state = "stale"
                self.last_error = "no answer for %d ms" % silent
            if not session.poll_mode:  # the stream stopped: ask for it again
                self._send(session.resend(mono_ms))
        n = self.uart.any()
        data = self.uart.read(min(n, READ_MAX)) if n else None
        if not data:
            return out
        self.counters["bytes"] += len(data)
        for item in session.feed(data, mono_ms, wall_ms):
            if isinstance(item, Event):
                self.counters["weights"] += 1
                out.append(item)
            else:
                self.state = item.state
                self.last_error = item.error
        return out

    def _send(self, request):
        if not request:
            return
        try:
            self.uart.write(request)
            self.counters["requests"] += 1
        except OSError as exc:
            self._count("write_errors")
            self.last_error = "write failed: %s" % exc

    def _count(self, key):
        self.counters[key] = self.counters.get(key, 0) + 1

    def deadline_ms(self):
        """When ``poll`` next has something to do by the clock (a poll or a timeout)."""
        return self.session.deadline_ms()

    def status(self):
        return {"name": self.name, "kind": self.kind, "state": self.state,
                "last_error": self.last_error, "counters": dict(self.counters)}

    def close(self):
        try:
            self.uart.deinit()
        except (AttributeError, OSError):
            pass
