"""The status LEDs and the alarm button, on gpiozero.

``StatusLights(pins, pin_factory)`` owns four ``gpiozero.LED`` (uplink, backlog amber,
backlog red, fault) and an optional ``gpiozero.Button`` that acknowledges the alarm.
``update(snapshot)`` takes the agent's state snapshot; what each LED shows and when the
alarm counts as acknowledged is decided by ``midshift.firmware.core.indicators`` (read its module
doc for the table). A pin is written only when its LED's desired state changes, so calling
``update`` every status period costs nothing and never restarts a blink.

Pins come from the board config's ``[pins]`` table (BCM numbers), checked by
``validate_pins``. The pin factory comes from ``board.pin_factory``: ``lgpio``,
``rpigpio``, ``native`` or ``mock``, constructed here explicitly (never through
gpiozero's environment variables or its fallback chain), or a ready factory object
(tests pass a ``MockFactory``). A factory built here is closed by ``close()``; one passed
in belongs to the caller.

Sharp edges:

- The button is wired to ground with the internal pull-up (active low, as on the
  reference HAT). Its callback runs on gpiozero's event thread (on ``MockPin``: the thread
  that drives the pin), so the LEDs are set under a lock shared with ``update``.
- Debounce is gpiozero's ``bounce_time`` (``ack_bounce_s``), done by the backend; the mock
  pin stores it but does not debounce. A bounce that slips through is harmless: pressing
  twice acknowledges nothing more.
- Blinks are gpiozero background threads; ``close()`` stops them and releases every pin
  (the LEDs go dark, the pins return to inputs).
- When the LEDs cannot be driven (a write fails), the error propagates to the caller:
  the agent's status loop logs it; the journal and the forwarder do not depend on LEDs.

Not modelled: PWM dimming, active-low LEDs, pins on an I/O expander.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import gpiozero

from midshift.firmware.core import indicators
from midshift.firmware.core.errors import ConfigError

log = logging.getLogger(__name__)

LED_KEYS = {"uplink": "uplink_led", "backlog_amber": "backlog_amber_led",
            "backlog_red": "backlog_red_led", "fault": "fault_led"}
BUTTON_KEY = "ack_button"
PIN_KEYS = (*LED_KEYS.values(), BUTTON_KEY)
BCM_MIN, BCM_MAX = 0, 27  # the 40-pin header's GPIO range (BCM numbering)
PIN_RULE = f"an integer BCM pin number, {BCM_MIN} to {BCM_MAX}"

FACTORY_KEY = "board.pin_factory"
# board config name -> (module, class, the Python package it needs or None)
FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "lgpio"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "RPi.GPIO"),
    "native": ("gpiozero.pins.native", "NativeFactory", None),
    "mock": ("gpiozero.pins.mock", "MockFactory", None),
}


def validate_pins(table: Mapping[str, Any], path: str = "pins") -> dict[str, int]:
    """The ``[pins]`` table checked: the four LED keys required, ``ack_button`` optional,
    each an integer BCM pin 0..27, no pin used twice, no other key. Returns a plain copy.

    Raises ``ConfigError`` naming ``path.key``, the value and what is allowed.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(path, f"{table!r} is not a table", "a table of BCM pin numbers")
    for key in table:
        if key not in PIN_KEYS:
            raise ConfigError(f"{path}.{key}", "is not a known pin",
                              ", ".join(PIN_KEYS))
    pins: dict[str, int] = {}
    used: dict[int, str] = {}
    for key in PIN_KEYS:
        where = f"{path}.{key}"
        if key not in table:
            if key == BUTTON_KEY:
                continue
            raise ConfigError(where, "is required", PIN_RULE)
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"{value!r} is not an integer", PIN_RULE)
        if not BCM_MIN <= value <= BCM_MAX:
            raise ConfigError(where, f"{value} is not a BCM GPIO pin", PIN_RULE)
        if value in used:
            raise ConfigError(where, f"{value} is already {path}.{used[value]}",
                              "a pin no other key uses")
        used[value] = key
        pins[key] = value
    return pins


def make_pin_factory(name: str) -> Any:
    """The gpiozero pin factory ``board.pin_factory`` names, constructed explicitly.

    Raises ``ConfigError`` (key ``board.pin_factory``) for an unknown name, a backend whose
    library is not installed, or one that cannot start on this machine.
    """
    if name not in FACTORIES:
        raise ConfigError(FACTORY_KEY, f"{name!r} is not a pin factory", ", ".join(FACTORIES))
    module_name, class_name, needs = FACTORIES[name]
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            FACTORY_KEY,
            f"{name!r} needs the Python package {needs}, which is not installed ({exc})",
            "a backend installed on this board (pip install 'midshift[pi]' brings lgpio), "
            "or 'mock' for a board without GPIO") from exc
    try:
        return getattr(module, class_name)()
    except Exception as exc:  # each backend fails its own way off a Pi (OSError, lgpio.error)
        raise ConfigError(FACTORY_KEY, f"{name!r} cannot open the GPIO on this machine: {exc}",
                          "a backend this board supports, or 'mock'") from exc


class StatusLights:
    """The gateway's four status LEDs and its alarm-acknowledge button."""

    def __init__(self, pins: Mapping[str, Any], pin_factory: Any = "mock", *,
                 ack_bounce_s: float = 0.05,
                 blink_s: Mapping[str, tuple[float, float]] | None = None,
                 pins_path: str = "pins") -> None:
        """``pins``: the ``[pins]`` table; ``pin_factory``: a name or a gpiozero factory;
        ``blink_s`` overrides ``(on_s, off_s)`` per LED (tests use short ones)."""
        self.pins = validate_pins(pins, pins_path)
        self._own_factory = isinstance(pin_factory, str)
        self.factory = make_pin_factory(pin_factory) if self._own_factory else pin_factory
        self._blink_s = dict(blink_s or {})
        self._lock = threading.RLock()
        self.alarm = indicators.FaultAlarm()
        self._snapshot: Mapping[str, Any] | None = None
        self._shown: dict[str, tuple[str, tuple[float, float] | None]] = {}
        self._leds: dict[str, gpiozero.LED] = {}
        self.button: gpiozero.Button | None = None
        self.closed = False
        try:
            for name, key in LED_KEYS.items():
                self._leds[name] = gpiozero.LED(self.pins[key], pin_factory=self.factory)
            if BUTTON_KEY in self.pins:
                self.button = gpiozero.Button(self.pins[BUTTON_KEY], pull_up=True,
                                              bounce_time=ack_bounce_s,
                                              pin_factory=self.factory)
                self.button.when_pressed = self._pressed
            # gpiozero starts an LED low (initial_value=False): already showing "off".
            self._shown = {name: (indicators.OFF, None) for name in self._leds}
        except gpiozero.exc.PinUnknownPi as exc:
            self.close()
            raise ConfigError(FACTORY_KEY, f"{pin_factory!r} cannot drive pins here: {exc}",
                              "a backend this board supports, or 'mock'") from exc
        except BaseException:
            self.close()
            raise
        log.info("status lights on pins %s", ", ".join(f"{k}={v}" for k, v in self.pins.items()))

    @property
    def leds(self) -> dict[str, gpiozero.LED]:
        """LED name (``indicators.LED_NAMES``) -> its gpiozero LED."""
        return dict(self._leds)

    def shown(self) -> dict[str, str]:
        """What each LED shows now: ``"on"``, ``"off"`` or ``"blink"`` (for the status)."""
        with self._lock:
            return {name: state for name, (state, _) in self._shown.items()}

    def update(self, snapshot: Mapping[str, Any]) -> dict[str, str]:
        """Show ``snapshot``; returns the LED states. ``alarm_acknowledged`` is ours: the
        button decides it, so a value in the snapshot is ignored. After ``close()`` this
        does nothing and returns ``{}`` (a status loop may race the shutdown)."""
        with self._lock:
            if self.closed:
                return {}
            self._snapshot = snapshot
            return self._show()

    def acknowledge(self) -> list[str]:
        """Acknowledge the present faults (the button calls this); returns those newly
        acknowledged."""
        with self._lock:
            if self.closed:
                return []
            if self._snapshot is not None:
                self.alarm.update(indicators.active_faults(self._snapshot))
            newly = self.alarm.acknowledge()
            if newly:
                log.warning("alarm acknowledged: %s", ", ".join(newly))
            if self._snapshot is not None:
                self._show()
            return newly

    def _pressed(self) -> None:
        try:
            self.acknowledge()
        except Exception:  # a callback thread has nobody to raise to
            log.exception("alarm acknowledge failed")

    def _show(self) -> dict[str, str]:
        assert self._snapshot is not None
        view = dict(self._snapshot)
        raised_before = self.alarm.raised
        view["alarm_acknowledged"] = self.alarm.update(indicators.active_faults(view))
        if self.alarm.raised != raised_before:
            log.warning("alarm: device fault not yet acknowledged: %s",
                        ", ".join(self.alarm.new_faults()))
        wanted = indicators.desired_leds(view)
        for name, state in wanted.items():
            times = self._blink_s.get(name, indicators.blink_times_s(name))
            desired = (state, times if state == indicators.BLINK else None)
            if self._shown.get(name) == desired:
                continue
            led = self._leds[name]
            if state == indicators.ON:
                led.on()
            elif state == indicators.OFF:
                led.off()
            else:
                led.blink(on_time=times[0], off_time=times[1])
            self._shown[name] = desired
            log.debug("LED %s: %s", name, state)
        return wanted

    def close(self) -> None:
        """Stop the blinks, turn the LEDs off and release every pin. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            devices: list[Any] = [self.button, *self._leds.values()]
            self.button = None
            self._leds = {}
        for device in devices:
            if device is None:
                continue
            try:
                device.close()
            except Exception:
                log.warning("closing %r failed", device, exc_info=True)
        if self._own_factory and getattr(self, "factory", None) is not None:
            try:
                self.factory.close()
            except Exception:
                log.warning("closing the pin factory failed", exc_info=True)

    def __enter__(self) -> StatusLights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
