"""A serial barcode scanner on a ``machine.UART``: lines become ``scan`` events.

The MicroPython counterpart of ``midshift/firmware/edges/scanner.py``, with the same framing,
rejection rules and event (the core's ``scan_line_config.framer_for``, at boot, and
``scan_line.take``): kind ``scan``, data ``{"code": str, "symbology": "]E0" or None}``, ``read_ms``
the wall time of the read that brought the line's terminator.

``poll(mono_ms, wall_ms)`` never blocks: it takes what the UART holds (``any()``, then
``read(n)``) and returns the events it completes; the main loop calls it between every
network call. The UART's receive buffer (``rxbuf`` in the board file) holds the bytes
that arrive while the loop waits on the network; the uplink's timeout bounds that wait.

When the far end is gone: a UART has no "disconnected". An unplugged scanner is silence;
a line cut by the unplug is dropped after ``inter_char_timeout_ms`` (``rejected_partial``)
and never glued to the next one. A wrong baud rate or a loose ground is noise, rejected
and counted per reason (``rejected_<reason>``), never journaled. A receive-buffer overrun
(the loop stalled longer than ``rxbuf`` covers) loses bytes in the UART driver: a line
that lost bytes is usually rejected (framing, length, charset), but a code that merely
got shorter can pass. Size ``rxbuf`` for the uplink's timeout at the scanner's baud rate.

Counters: ``bytes``, ``scans``, ``rejected``, ``rejected_<reason>``.
"""

from midshift.firmware.core import scan_line

READ_MAX = 512  # bytes taken per poll: bounds the RAM one read costs


class UartScanner:
    kind = "scanner"

    def __init__(self, name, uart, settings):
        self.name = name
        self.uart = uart
        # imported here: scan_line_config is boot-only on a node (boot.release drops it)
        from midshift.firmware.core.scan_line_config import framer_for
        self.framer = framer_for(settings)
        self.counters = {"bytes": 0, "scans": 0, "rejected": 0}
        self.last_error = None

    def poll(self, mono_ms, wall_ms):
        """Events completed by what the UART holds now (maybe none); never blocks."""
        out = []
        n = self.uart.any()
        data = self.uart.read(min(n, READ_MAX)) if n else None
        if data:
            self.counters["bytes"] += len(data)
            lines = self.framer.feed(data, mono_ms)
        else:
            lines = self.framer.expire(mono_ms)
        for line in lines:
            event = scan_line.take(line, self.name, wall_ms, self._count)
            if event is not None:
                self.last_error = None
                out.append(event)
            else:
                self.last_error = scan_line.rejection_text(line)
        return out

    def deadline_ms(self):
        return self.framer.deadline_ms()

    def _count(self, key):
        self.counters[key] = self.counters.get(key, 0) + 1

    def status(self):
        return {"name": self.name, "kind": self.kind,
                "state": "error" if self.last_error else "ok",
                "last_error": self.last_error, "counters": dict(self.counters)}

    def close(self):
        try:
            self.uart.deinit()
        except (AttributeError, OSError):
            pass
