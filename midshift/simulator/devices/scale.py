"""A Mettler Toledo scale speaking MT-SICS level 0/1 on a pty.

Commands are ASCII lines ending in CR LF (a bare LF is accepted too); replies end in CR LF.
A weight reply is ``<id> <status> <value> <unit>``: the value is right-aligned in a
10-character field, sign included, then one space and the unit: ``S S     123.45 g``.

- ``S``: stable weight. While the load settles the scale keeps taking readings every
  ``reading_interval_s``; ``S S <w>`` once stable, ``S I`` if not stable within
  ``stable_timeout_s``.
- ``SI``: one reading now: ``S S <w>`` if stable, else ``S D <w>`` (dynamic).
- ``SIR``: ``SI`` repeated every ``1 / continuous_rate_per_s`` until ``S``, ``SI`` or
  ``@``. ``continuous = true`` in the config starts the scale streaming.
- ``Z``: zero, once stable: ``Z A``; ``Z I`` if it cannot get stable in time, ``Z +`` /
  ``Z -`` in overload / underload.
- ``@``: reset: ends streaming, keeps the zero, replies ``I4 A "<serial_number>"``;
  ``I4`` gives the same line.
- Anything else: ``ES`` (syntax error). Empty lines are ignored.
- Overload (load above ``capacity_g``, or the fault): ``S +``; underload (the fault,
  a pan lifted off): ``S -``.

Load model: ``set_load(g)``, ``place(g)`` (adds an item), ``remove()`` (empties the pan)
or a ``schedule`` of ``{at_s, load_g}`` applied by the thread (seconds after ``start()``).
After each change the next ``settle_readings`` readings are unstable (``S D``, values
swinging about the target and closing in, from a seeded generator), then stable. Readings
are counted, not timed, so a test sees exactly that many ``S D`` replies.

Faults: ``unstable_forever()``, ``overload()``, ``underload()``, ``no_answer()`` (reads
and ignores every command, streaming stops), ``disappear()`` / ``reappear()``;
``clear_faults()`` ends the first four.

Ground truth (kind ``weight``, ``value`` in grams, ``unit`` ``"g"``, ``status``): a served
reading is logged when it differs from the last one logged (status or value) or the load,
the zero or the faults changed since. The first stable reading after a load or zero change
with a positive net weight is ``expect=True``: exactly once per placed item, however often
it is polled, and not again after a fault clears. Unstable,
zero or negative stable readings, ``S +`` and ``S -`` are logged with ``expect=False``.
Readings the client did not receive (no client, overrun, port gone) are not logged;
the next one that gets through is. Faults are kind ``fault``, ``expect=False``.
``truth()`` returns the entries consistent with the wire (a reply and its entry are
written as one step), which is what a test compares with what its client read.

Not modelled: MT-SICS level 2 and 3 commands (tare ``T``, ``SR``, units ``SU``,
``I0``-``I3`` identification, adjustment), command parameters (``SIR 100`` is ``ES``),
``EL``/``ET`` errors, a tare memory, the scale's own power-on banner on replug, the
zero-setting range limit, readings taken while no command is pending (an idle scale
does not settle until asked), and the time a real UART takes per byte. On replug the
scale keeps its load and zero and goes back to the configured streaming mode.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

from midshift.simulator.devices import rounded
from midshift.simulator.devices.pty_port import PtyDevice, PtyPort, config_error
from midshift.simulator.ground_truth import GroundTruthLog

log = logging.getLogger(__name__)

UNITS = {"g": 1.0, "kg": 1000.0}  # grams per unit
CONFIG_KEYS = ("kind", "path", "seed", "unit", "decimals", "capacity_g", "settle_readings",
               "reading_interval_s", "stable_timeout_s", "continuous", "continuous_rate_per_s",
               "serial_number", "schedule")




def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class Scale(PtyDevice):
    """MT-SICS scale emulator; see the module docstring."""

    kind = "scale"
    config_keys = CONFIG_KEYS

    def __init__(self, name: str, link_path: str | Path, *, seed: int = 0, unit: str = "g",
                 decimals: int = 2, capacity_g: float = 6200.0, settle_readings: int = 3,
                 reading_interval_s: float = 0.1, stable_timeout_s: float = 1.0,
                 continuous: bool = False, continuous_rate_per_s: float = 10.0,
                 serial_number: str = "0123456789",
                 schedule: list[dict[str, float]] | tuple[()] = (),
                 ground_truth_path: str | Path | None = None) -> None:
        def check(key: str, ok: bool, value: Any, expected: str) -> None:
            if not ok:
                raise config_error(name, key, value, expected)

        check("seed", isinstance(seed, int) and not isinstance(seed, bool), seed, "an integer")
        check("unit", unit in UNITS, unit, f"one of {', '.join(UNITS)}")
        check("decimals", isinstance(decimals, int) and not isinstance(decimals, bool)
              and 0 <= decimals <= 5, decimals, "an integer from 0 to 5")
        check("capacity_g", _is_number(capacity_g) and 0 < capacity_g < 1e7, capacity_g,
              "a number of grams above 0 and below 10000000")
        if unit in UNITS and isinstance(decimals, int) and _is_number(capacity_g):
            shown = f"{capacity_g / UNITS[unit]:.{decimals}f}"
            check("capacity_g", len(shown) <= 9, capacity_g,
                  f"shown in {unit} with {decimals} decimals in 9 characters "
                  "(the 10-character weight field keeps one for the sign)")
        check("settle_readings", isinstance(settle_readings, int)
              and not isinstance(settle_readings, bool) and 0 <= settle_readings <= 1000,
              settle_readings, "an integer from 0 to 1000")
        for key, v in (("reading_interval_s", reading_interval_s),
                       ("stable_timeout_s", stable_timeout_s)):
            check(key, _is_number(v) and 0 < v <= 60, v, "a number of seconds above 0, at most 60")
        check("continuous", isinstance(continuous, bool), continuous, "true or false")
        check("continuous_rate_per_s", _is_number(continuous_rate_per_s)
              and 0 < continuous_rate_per_s <= 100, continuous_rate_per_s,
              "a number above 0, at most 100")
        check("serial_number", isinstance(serial_number, str) and serial_number.isprintable()
              and '"' not in serial_number and 0 < len(serial_number) <= 20, serial_number,
              "1 to 20 printable characters without a double quote")
        check("schedule", isinstance(schedule, list | tuple), schedule,
              "a list of {at_s, load_g} tables")
        steps: list[tuple[float, float]] = []
        for i, step in enumerate(schedule):
            ok = (isinstance(step, dict) and set(step) == {"at_s", "load_g"}
                  and _is_number(step["at_s"]) and step["at_s"] >= 0
                  and _is_number(step["load_g"]))
            check(f"schedule[{i}]", ok, step, "a table {at_s = seconds >= 0, load_g = grams}")
            steps.append((float(step["at_s"]), float(step["load_g"])))
        self.name = name
        self.unit = unit
        self.decimals = decimals
        self.capacity_g = float(capacity_g)
        self.settle_readings = settle_readings
        self.reading_interval_s = float(reading_interval_s)
        self.stable_timeout_s = float(stable_timeout_s)
        self.continuous_default = continuous
        self.continuous_rate_per_s = float(continuous_rate_per_s)
        self.serial_number = serial_number
        self.schedule = sorted(steps)
        self.port = PtyPort(link_path)
        self.ground_truth = GroundTruthLog(ground_truth_path, name)
        self._rng = random.Random(f"{seed}:{name}")
        self._lock = threading.Lock()  # load, zero, faults: changed from other threads
        self._io_lock = threading.Lock()  # a reply and its ground-truth entry, as one step
        self._load_g = 0.0
        self._zero_g = 0.0
        self._settle_left = 0
        self._swing_g = 0.0
        self._load_epoch = 0  # bumped on every load or zero change: a new thing to weigh
        self._epoch = 0  # bumped on those and on every fault change: what to log again
        self._expected_epoch = -1  # the load epoch whose weight was logged as expected
        self._next_stream_t = 0.0
        self._faults: set[str] = set()
        self._continuous = continuous
        self._last_logged: tuple[int, str, float | None] | None = None
        self._truth_lock = self._io_lock
        self._init_life()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"name": self.name, "kind": self.kind, "path": str(self.port.link_path),
                    "pty": self.port.path or None, "unit": self.unit,
                    "load_g": self._load_g, "zero_g": self._zero_g,
                    "continuous": self._continuous, "faults": sorted(self._faults),
                    "running": self._thread is not None and self._thread.is_alive(),
                    "ground_truth": str(self.ground_truth.path) if self.ground_truth.path
                    else None}

    def wait_client(self, timeout_s: float) -> bool:
        """True once a client has the port open and replies reach it."""
        return self.port.wait_client(timeout_s)

    # -- load ------------------------------------------------------------------------

    def set_load(self, load_g: float) -> None:
        """Everything on the pan now weighs ``load_g``; the next readings settle to it."""
        with self._lock:
            delta = load_g - self._load_g
            self._load_g = float(load_g)
            self._settle_left = self.settle_readings
            # How far the first unstable reading swings past the target: a fraction of
            # the step, at least 20 digits, so it never reads as the final value.
            self._swing_g = max(abs(delta) * 0.05, 20 * self._digit_g())
            self._load_epoch += 1
            self._epoch += 1

    def place(self, weight_g: float) -> None:
        """Put an item of ``weight_g`` on the pan (on top of what is there)."""
        with self._lock:
            load = self._load_g + weight_g
        self.set_load(load)

    def remove(self) -> None:
        """Take everything off the pan."""
        self.set_load(0.0)

    def _digit_g(self) -> float:
        return UNITS[self.unit] / 10 ** self.decimals

    # -- faults ----------------------------------------------------------------------

    def _fault(self, fault: str) -> None:
        with self._lock:
            self._faults.add(fault)
            self._epoch += 1
        self.ground_truth.record("fault", fault, expect=False, fault=fault)

    def unstable_forever(self) -> None:
        """Every reading is dynamic (a draught, a vibrating table): ``S I``, ``S D``, ``Z I``."""
        self._fault("unstable")

    def overload(self) -> None:
        """Report overload (``S +``) whatever the load."""
        self._fault("overload")

    def underload(self) -> None:
        """Report underload (``S -``), as with the weighing pan lifted off."""
        self._fault("underload")

    def no_answer(self) -> None:
        """Read and ignore every command; streaming stops."""
        self._fault("no_answer")

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._epoch += 1
        self.ground_truth.record("fault", "clear", expect=False, fault="clear")

    def disappear(self) -> None:
        """Unplug: the client's port hangs up and the link goes away."""
        self.port.disappear()
        self.ground_truth.record("fault", None, expect=False, fault="disappear")

    def reappear(self) -> None:
        """Replug: a new pty behind the same link; clients must re-open it."""
        with self._lock:
            self._continuous = self.continuous_default
        self.port.reappear()
        self.ground_truth.record("fault", None, expect=False, fault="reappear")

    # -- readings and replies --------------------------------------------------------

    def _reading(self) -> tuple[str, float | None, tuple[int, int]]:
        """Take one reading: (status S/D/+/-, net grams or None, (epoch, load epoch))."""
        with self._lock:
            epochs = (self._epoch, self._load_epoch)
            if "overload" in self._faults or self._load_g > self.capacity_g:
                return "+", None, epochs
            if "underload" in self._faults:
                return "-", None, epochs
            net_g = self._load_g - self._zero_g
            if "unstable" in self._faults:
                noise = self._rng.uniform(2, 30) * self._digit_g()
                return "D", net_g + self._rng.choice((-1, 1)) * noise, epochs
            if self._settle_left > 0:
                share = self._settle_left / max(1, self.settle_readings)
                sign = 1 if self._settle_left % 2 else -1  # swings about the target
                noise = self._rng.uniform(0, 3) * self._digit_g()
                self._settle_left -= 1
                return "D", net_g + sign * (self._swing_g * share + noise), epochs
            return "S", net_g, epochs

    def _display(self, net_g: float) -> str:
        return f"{net_g / UNITS[self.unit]:.{self.decimals}f}"

    def _serve(self, status: str, net_g: float | None, epochs: tuple[int, int]) -> None:
        """Send a weight reply and log it in the ground truth if the client got it."""
        value = self._display(net_g) if net_g is not None else ""
        if len(value) > 10:  # off the 10-character field: what the scale calls over/underload
            status, net_g, value = ("+" if net_g and net_g > 0 else "-"), None, ""
        if net_g is None:  # overload and underload replies carry no value
            line = f"S {status}\r\n".encode()
        else:
            line = f"S {status} {value:>10} {self.unit}\r\n".encode()
        with self._io_lock:
            if self.port.write(line) == len(line):
                self._log_served(status, value, epochs)

    def _log_served(self, status: str, value: str, epochs: tuple[int, int]) -> None:
        shown_g = round(float(value) * UNITS[self.unit], 6) if value else None
        key = (epochs[0], status, shown_g)
        if key == self._last_logged:
            return
        self._last_logged = key
        expect = (status == "S" and shown_g is not None and shown_g > 0
                  and epochs[1] != self._expected_epoch)
        if expect:
            self._expected_epoch = epochs[1]
        self.ground_truth.record("weight", shown_g, expect=expect, unit="g", status=status)

    def _reply(self, text: str) -> None:
        self.port.write(text.encode() + b"\r\n")

    def _wait_stable(self) -> tuple[str, float | None, tuple[int, int]] | None:
        """Take readings until stable (or over/underload); None on timeout or stop."""
        deadline = time.monotonic() + self.stable_timeout_s
        while True:
            status, net_g, epoch = self._reading()
            if status != "D":
                return status, net_g, epoch
            if time.monotonic() + self.reading_interval_s > deadline:
                # The next reading would come too late: give up now, as the scale does
                # at its timeout.
                self._stop.wait(max(0.0, deadline - time.monotonic()))
                return None
            if self._stop.wait(self.reading_interval_s):
                return None

    def _command(self, cmd: str) -> None:
        log.debug("%s: command %r", self.name, cmd)
        if cmd in ("S", "SI", "@"):
            with self._lock:
                self._continuous = False
        if cmd == "S":
            got = self._wait_stable()
            if got is None:
                self._reply("S I")
            else:
                self._serve(*got)
        elif cmd == "SI":
            self._serve(*self._reading())
        elif cmd == "SIR":
            with self._lock:
                self._continuous = True
            self._next_stream_t = time.monotonic()
        elif cmd == "Z":
            got = self._wait_stable()
            if got is None:
                self._reply("Z I")
            elif got[0] in "+-":
                self._reply(f"Z {got[0]}")
            else:
                with self._lock:
                    self._zero_g = self._load_g
                    self._load_epoch += 1
                    self._epoch += 1
                self._reply("Z A")
        elif cmd in ("@", "I4"):
            self._reply(f'I4 A "{self.serial_number}"')
        else:
            self._reply("ES")

    def _run(self) -> None:
        start_t = time.monotonic()
        self._next_stream_t = start_t
        pending = list(self.schedule)
        buffer = b""
        was_up = True
        while not self._stop.is_set():
            now = time.monotonic()
            while pending and now - start_t >= pending[0][0]:
                self.set_load(pending.pop(0)[1])
            if not self.port.is_up:
                buffer, was_up = b"", False
            elif not was_up:
                buffer, was_up = b"", True
                self._next_stream_t = now
            with self._lock:
                streaming = self._continuous and "no_answer" not in self._faults
            if streaming and now >= self._next_stream_t:
                self._serve(*self._reading())
                self._next_stream_t = max(self._next_stream_t + 1 / self.continuous_rate_per_s,
                                          now)
                continue
            waits = [0.5]
            if streaming:
                waits.append(self._next_stream_t - now)
            if pending:
                waits.append(start_t + pending[0][0] - now)
            buffer += self.port.read(timeout_s=max(0.0, min(waits)))
            if len(buffer) > 4096:  # a client sending junk without line ends
                buffer = buffer[-4096:]
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                cmd = raw.rstrip(b"\r").decode("latin-1").strip()
                with self._lock:
                    ignoring = "no_answer" in self._faults
                if cmd and not ignoring:
                    self._command(cmd)


# ---- the device type ``scale`` (midshift/simulator/devices/__init__.py says what each name is for)

TYPE = "scale"
EMULATOR = Scale
TRANSACTION = True
SERIAL = True
# loads_per_min: items weighed per scenario minute (min_g to max_g); each is placed,
# settles and is removed by the timeline.
SCENARIO_KEYS = ("loads_per_min", "min_g", "max_g", "poll_ms")
SCENARIO_NUMBERS = {"loads_per_min": (4, 0, 120)}


def emulate(name: str, spec: dict[str, Any], directory: Path, seed: int, speed: float,
            ground_truth: Path) -> Scale:
    return Scale(name, directory / name, seed=seed, reading_interval_s=0.05,
                 ground_truth_path=ground_truth).start()


def site_table(name: str, spec: dict[str, Any], device: Scale) -> list[str]:
    return [f'port = "{name}"', f"poll_ms = {spec.get('poll_ms', 100)}"]


def truth_value(entry: dict[str, Any]) -> Any:
    v = entry.get("value")  # grams
    return rounded(float(v)) if v is not None else None


def ledger_value(data: dict[str, Any]) -> Any:
    w = data.get("weight")
    return rounded(float(w) * UNITS.get(data.get("unit", "g"), 1.0)) if w is not None else None
