"""An MT-SICS scale on a ``machine.UART``: stable weights become ``weight`` events.

The MicroPython counterpart of ``firmware/edges/scale.py``, replies parsed by the core's
``firmware/core/mtsics.py``, the same event (kind ``weight``, data ``{"weight": float,
"unit": str, "stable": bool}``) and the same rule for what becomes an event: a stable
reading whose shown value or unit differs from the previous stable one, and only above
zero; dynamic readings only with ``stable_only = false``.

Modes: ``poll`` sends ``poll_command`` (``SI`` or ``S``) every ``poll_ms`` and waits up to
``timeout_ms`` for the reply; ``listen`` sends ``SIR`` once and reads the stream (again
after the scale has been silent for ``stale_s``). ``poll(mono_ms, wall_ms)`` never blocks:
a command is a few bytes into the UART's transmit buffer.

When the far end is gone: an unplugged scale is a request without a reply, counted
``timeouts``; after ``stale_s`` without any reply the state is ``stale``. The last stable
reading is remembered across the silence (an item left on the pan is not a new item).
Overload, underload, error replies and unparsable lines are counted per kind and set the
state to ``error`` until the next weight.

Not modelled: tare and zero (the node never changes the scale), MT-SICS levels 2 and 3.
"""

from firmware.core.event import Event
from firmware.core.mtsics import MtSicsReader, command

READ_MAX = 256


class UartScale:
    kind = "scale"

    def __init__(self, name, uart, settings):
        self.name = name
        self.uart = uart
        self.settings = settings
        self.reader = MtSicsReader()
        self._poll = settings["mode"] == "poll"
        self._request = command(settings["poll_command"] if self._poll else "SIR")
        self._stale_ms = int(settings["stale_s"] * 1000)
        self._awaiting_since = None
        self._next_poll_ms = None
        self._last_reply_ms = None
        self._last_stable = None
        self._last_dynamic = None
        self._started_ms = None
        self.state = "ok"
        self.last_error = None
        self.counters = {"bytes": 0, "requests": 0, "timeouts": 0, "weights": 0}

    def poll(self, mono_ms, wall_ms):
        out = []
        if self._started_ms is None:
            self._started_ms = mono_ms
            self._next_poll_ms = mono_ms
            if not self._poll:
                self._send(mono_ms)
        if self._poll and self._awaiting_since is None and mono_ms >= self._next_poll_ms:
            self._send(mono_ms)
            self._awaiting_since = mono_ms
            self._next_poll_ms = max(self._next_poll_ms + self.settings["poll_ms"], mono_ms)
        if (self._awaiting_since is not None
                and mono_ms - self._awaiting_since >= self.settings["timeout_ms"]):
            self._count("timeouts")
            self._awaiting_since = None
            self.reader.reset()  # a half reply will not be completed
        silent = mono_ms - (self._last_reply_ms if self._last_reply_ms is not None
                            else self._started_ms)
        if silent >= self._stale_ms:
            if self.state != "stale":
                self.state = "stale"
                self.last_error = "no answer for %d ms" % silent
            if not self._poll:  # the stream stopped: ask for it again
                self._send(mono_ms)
                self._last_reply_ms = mono_ms
        n = self.uart.any()
        data = self.uart.read(min(n, READ_MAX)) if n else None
        if not data:
            return out
        self.counters["bytes"] += len(data)
        replies = self.reader.feed(data)
        if replies:
            self._last_reply_ms = mono_ms
            self._awaiting_since = None
        for reply in replies:
            ev = self._handle(reply, wall_ms)
            if ev is not None:
                out.append(ev)
        return out

    def _send(self, mono_ms):
        try:
            self.uart.write(self._request)
            self.counters["requests"] += 1
        except OSError as exc:
            self._count("write_errors")
            self.last_error = "write failed: %s" % exc

    def _handle(self, reply, wall_ms):
        kind = reply.kind
        if kind == "weight":
            self._ok()
            return self._weight(reply, wall_ms)
        if kind == "not_executable":
            self._count("not_stable")
            self._ok()
        elif kind in ("overload", "underload"):
            self._count(kind + "s")
            self._error(kind)
        elif kind == "error":
            self._count("errors_" + str(reply.code).replace(" ", "").lower())
            self._error("scale replied %s" % reply.code)
        elif kind == "malformed":
            self._count("rejected_malformed")
            self._error("malformed reply (wrong baud rate or not MT-SICS?)")
        else:
            self._count("other_replies")
        return None

    def _weight(self, reply, wall_ms):
        key = (reply.value_text, reply.unit)
        if reply.stable:
            if key == self._last_stable:
                self._count("repeated_readings")
                return None
            self._last_stable = key
            if reply.weight is None or reply.weight <= 0:
                self._count("zero_readings")
                return None
        else:
            self._count("dynamic_readings")
            if self.settings["stable_only"] or key == self._last_dynamic:
                return None
            self._last_dynamic = key
        self.counters["weights"] += 1
        return Event(self.name, "weight", wall_ms,
                     {"weight": reply.weight, "unit": reply.unit, "stable": reply.stable})

    def _ok(self):
        self.state = "ok"
        self.last_error = None

    def _error(self, text):
        self.state = "error"
        self.last_error = text

    def _count(self, key):
        self.counters[key] = self.counters.get(key, 0) + 1

    def deadline_ms(self):
        """When ``poll`` next has something to do by the clock (a poll or a timeout)."""
        if self._awaiting_since is not None:
            return self._awaiting_since + self.settings["timeout_ms"]
        if self._poll:
            return self._next_poll_ms
        return None

    def status(self):
        return {"name": self.name, "kind": self.kind, "state": self.state,
                "last_error": self.last_error, "counters": dict(self.counters)}

    def close(self):
        try:
            self.uart.deinit()
        except (AttributeError, OSError):
            pass
