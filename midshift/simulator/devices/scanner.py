"""A barcode scanner on a pty: lines of barcodes, as a USB-serial or RS-232 scanner sends them.

Each scan is one line: ``prefix + [AIM id] + barcode + suffix + terminator``, the order a
Honeywell or Zebra scanner uses when prefix, suffix and AIM code id are enabled. Scans
come on demand (``scan()``, ``burst()``) and, with ``rate_per_s > 0``, from a background
thread: ``rate_per_s`` scans per second on average, in groups of ``burst`` written back to
back (a trigger held over a stack of labels).

Barcodes are deterministic and unique per device: EAN-13 codes in the GS1 restricted
range ``2`` + a 4-digit device code (from the seed and the name) + a 7-digit running
counter + check digit, or Code 128 strings ``MS<code>-<counter>``. Fault bytes come from
their own seeded generator, so the values depend only on seed and name; how background
scans interleave with calls from other threads depends on timing.

Faults: ``garbage(n)``, ``partial_then_silence(silence_s)``, ``overlong(n)``,
``wrong_baud_noise(n)``, ``disappear()`` / ``reappear()``.

Ground truth: every proper scan that reached the client is logged as kind ``scan`` with
``expect=True``; a scan dropped because no client had the port open, the client was not
reading, or the port was gone is logged with ``expect=False`` and ``fault`` saying why.
Faults are logged as kind ``fault`` with ``expect=False``, ``fault`` naming it and the
bytes sent as hex; ``truth()`` returns the entries consistent with the wire. While the
port is gone the background thread scans nothing (an
unplugged scanner has no power).

Not modelled: the scanner's configuration commands (bytes the client sends are read and
discarded), beeps and good-read acknowledgements, symbologies other than EAN-13 and Code 128
(``scan(value)`` sends any text, labelled with the configured symbology), the time a
real UART takes per byte (see ``pty_port``), HID keyboard-wedge scanners.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from midshift.firmware.core.redact import redact_text
from midshift.simulator.devices.pty_port import PtyDevice, PtyPort, config_error
from midshift.simulator.ground_truth import GroundTruthLog

log = logging.getLogger(__name__)

TERMINATORS = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n"}
AIM_IDS = {"ean13": "]E0", "code128": "]C0"}  # ISO/IEC 15424 symbology identifiers
CONFIG_KEYS = ("kind", "path", "seed", "symbology", "prefix", "suffix", "terminator",
               "aim_id", "rate_per_s", "burst")


def ean13_check_digit(first12: str) -> str:
    """GS1 check digit: weights 1, 3, 1, 3 ... from the left over the first 12 digits."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return str((10 - total % 10) % 10)




class BarcodeScanner(PtyDevice):
    """Serial barcode scanner emulator; see the module docstring."""

    kind = "scanner"
    config_keys = CONFIG_KEYS

    def __init__(self, name: str, link_path: str | Path, *, seed: int = 0,
                 symbology: str = "ean13", prefix: str = "", suffix: str = "",
                 terminator: str = "CR", aim_id: bool = False, rate_per_s: float = 0.0,
                 burst: int = 1, ground_truth_path: str | Path | None = None) -> None:
        def check(key: str, ok: bool, value: Any, expected: str) -> None:
            if not ok:
                raise config_error(name, key, value, expected)

        check("seed", isinstance(seed, int) and not isinstance(seed, bool), seed, "an integer")
        check("symbology", symbology in AIM_IDS, symbology, f"one of {', '.join(AIM_IDS)}")
        for key, text in (("prefix", prefix), ("suffix", suffix)):
            check(key, isinstance(text, str) and all(ord(c) < 256 for c in text), text,
                  "a string of 8-bit characters")
        check("terminator", terminator in TERMINATORS, terminator,
              f"one of {', '.join(TERMINATORS)}")
        check("aim_id", isinstance(aim_id, bool), aim_id, "true or false")
        check("rate_per_s", isinstance(rate_per_s, int | float) and not isinstance(rate_per_s, bool)
              and 0 <= rate_per_s <= 1000, rate_per_s, "a number from 0 (on demand only) to 1000")
        check("burst", isinstance(burst, int) and not isinstance(burst, bool) and 1 <= burst <= 1000,
              burst, "an integer from 1 to 1000")
        self.name = name
        self.seed = seed
        self.symbology = symbology
        self.prefix = prefix.encode("latin-1")
        self.suffix = suffix.encode("latin-1")
        self.terminator_name = terminator
        self.terminator = TERMINATORS[terminator]
        self.aim_id = aim_id
        self.rate_per_s = float(rate_per_s)
        self.burst_size = burst
        self.port = PtyPort(link_path)
        self.ground_truth = GroundTruthLog(ground_truth_path, name)
        self.device_code = zlib.crc32(f"{seed}:{name}".encode()) % 10_000
        self._counter = 0
        self._fault_rng = random.Random(f"{seed}:{name}:faults")
        self._lock = threading.Lock()  # one line at a time on the wire, counter and rng
        self._truth_lock = self._lock  # a write and its ground-truth entry are one step
        self._silent_until = 0.0
        self._init_life()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": str(self.port.link_path),
                "pty": self.port.path or None, "symbology": self.symbology,
                "terminator": self.terminator_name, "aim_id": self.aim_id,
                "rate_per_s": self.rate_per_s, "burst": self.burst_size,
                "running": self._thread is not None and self._thread.is_alive(),
                "ground_truth": str(self.ground_truth.path) if self.ground_truth.path else None}

    def wait_client(self, timeout_s: float) -> bool:
        """True once a client has the port open and scans reach it."""
        return self.port.wait_client(timeout_s)

    def _run(self) -> None:
        interval_s = self.burst_size / self.rate_per_s if self.rate_per_s > 0 else 0.0
        next_t = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if interval_s and now >= next_t:
                with self._lock:
                    # Checked under the lock: partial_then_silence() may have just cut in.
                    if self.port.is_up and time.monotonic() >= self._silent_until:
                        self._send_scans([self._next_value() for _ in range(self.burst_size)])
                next_t = max(next_t + interval_s, now - interval_s)  # no catch-up storm
                continue
            timeout_s = min(next_t - now, 0.5) if interval_s else 0.5
            data = self.port.read(timeout_s=timeout_s)  # scanners ignore what the host says
            if data:
                log.debug("%s: ignoring %d bytes from the client", self.name, len(data))

    # -- scans -----------------------------------------------------------------------

    def _next_value(self) -> str:
        self._counter += 1
        if self.symbology == "ean13":
            first12 = f"2{self.device_code:04d}{self._counter % 10_000_000:07d}"
            return first12 + ean13_check_digit(first12)
        return f"MS{self.device_code:04d}-{self._counter:08d}"

    def _line(self, value: str) -> bytes:
        aim = AIM_IDS[self.symbology] if self.aim_id else ""
        return self.prefix + (aim + value).encode("latin-1") + self.suffix + self.terminator

    def scan(self, value: str | None = None) -> str:
        """Send one proper scan (the next generated barcode, or ``value``); returns it."""
        return self.burst(1, [value] if value is not None else None)[0]

    def burst(self, n: int, values: list[str] | None = None) -> list[str]:
        """Send ``n`` scans back to back in one write; returns their values."""
        with self._lock:
            chosen = list(values) if values is not None else [self._next_value() for _ in range(n)]
            return self._send_scans(chosen)

    def _send_scans(self, chosen: list[str]) -> list[str]:
        """Under the lock: write the scans in one go and log each in the ground truth."""
        lines = [self._line(v) for v in chosen]
        sent = self.port.write(b"".join(lines))
        for value, line in zip(chosen, lines, strict=True):
            if sent >= len(line):
                self.ground_truth.record("scan", value, expect=True, symbology=self.symbology)
            else:
                self.ground_truth.record("scan", value, expect=False,
                                         fault=self.port.last_drop, symbology=self.symbology)
            sent = max(0, sent - len(line))
        return chosen

    # -- faults ----------------------------------------------------------------------

    def _send_fault(self, fault: str, data: bytes, **extra: Any) -> bytes:
        """Under the lock: write fault bytes and log them (never expected)."""
        sent = self.port.write(data)
        if sent < len(data):
            extra["dropped"] = self.port.last_drop
        self.ground_truth.record("fault", data.hex(), expect=False, fault=fault,
                                 sent_bytes=sent, **extra)
        return data

    def garbage(self, n: int = 16, end_line: bool = False) -> bytes:
        """``n`` random bytes (any value, CR and LF included): line noise, a loose ground.
        Without ``end_line`` the noise may run into the next scan's line (which a correct
        client must then reject with it); with it, a terminator closes the noise's line."""
        with self._lock:
            data = self._fault_rng.randbytes(n) + (self.terminator if end_line else b"")
            return self._send_fault("garbage", data)

    def partial_then_silence(self, silence_s: float = 2.0) -> bytes:
        """The first half of the next scan line, no terminator, then no background scans
        for ``silence_s``: a scanner that lost power or its cable mid-line."""
        with self._lock:
            value = self._next_value()
            line = self._line(value)
            self._silent_until = time.monotonic() + silence_s
            return self._send_fault("partial", line[: len(line) // 2], barcode=value)

    def overlong(self, n: int = 512) -> bytes:
        """One line of ``n`` printable characters plus the terminator: more than any
        barcode, as when a scanner reads a 2D code's payload or a stuck trigger repeats."""
        with self._lock:
            body = bytes(self._fault_rng.randrange(0x21, 0x7F) for _ in range(n))
            return self._send_fault("overlong", body + self.terminator)

    def wrong_baud_noise(self, n: int = 32) -> bytes:
        """What a client at the wrong baud rate reads instead of a line: bytes with the
        high bit set, 0x00 runs (framing errors read as NUL) and 0xFF runs (a level read
        as all ones). Never CR or LF, so the junk runs into the next line."""
        with self._lock:
            out = bytearray()
            while len(out) < n:
                pick = self._fault_rng.randrange(3)
                if pick == 0:
                    out += b"\x00" * self._fault_rng.randint(2, 5)
                elif pick == 1:
                    out += b"\xff" * self._fault_rng.randint(2, 5)
                else:
                    out += bytes(self._fault_rng.randrange(0x80, 0xFF)
                                 for _ in range(self._fault_rng.randint(1, 4)))
            return self._send_fault("wrong_baud", bytes(out[:n]))

    def disappear(self) -> None:
        """Unplug the scanner: the client's port hangs up and the link goes away."""
        with self._lock:
            self.port.disappear()
            self.ground_truth.record("fault", None, expect=False, fault="disappear")

    def reappear(self) -> None:
        """Plug it back in: a new pty behind the same link; clients must re-open it."""
        with self._lock:
            self.port.reappear()
            self.ground_truth.record("fault", None, expect=False, fault="reappear")


# ---- the device type ``scanner`` (midshift/simulator/devices/__init__.py says what each name is for)

TYPE = "scanner"
EMULATOR = BarcodeScanner
TRANSACTION = True
SERIAL = True
# rate_per_s: scans per scenario second; burst: scans written back to back.
SCENARIO_KEYS = ("rate_per_s", "burst", "symbology", "aim_id", "terminator")
SCENARIO_NUMBERS = {"rate_per_s": (1, 0, 200)}


def emulate(name: str, spec: dict[str, Any], directory: Path, seed: int, speed: float,
            ground_truth: Path) -> BarcodeScanner:
    return BarcodeScanner(name, directory / name, seed=seed,
                          rate_per_s=spec.get("rate_per_s", 1) * speed,
                          burst=spec.get("burst", 1), symbology=spec.get("symbology", "ean13"),
                          aim_id=spec.get("aim_id", False),
                          terminator=spec.get("terminator", "CR"),
                          ground_truth_path=ground_truth).start()


def site_table(name: str, spec: dict[str, Any], device: BarcodeScanner) -> list[str]:
    return [f'port = "{name}"', f'terminator = "{spec.get("terminator", "CR")}"',
            f"aim_id = {'true' if spec.get('aim_id') else 'false'}"]


def truth_value(entry: dict[str, Any]) -> Any:
    return redact_text(str(entry.get("value")))[0]  # masked as the pipeline masks card numbers


def ledger_value(data: dict[str, Any]) -> Any:
    return data.get("code")
