"""StatusLights on gpiozero's MockFactory: the LEDs' real pin states, the button, close().

The factory is passed explicitly (no GPIOZERO_* environment variables) and
``Device.pin_factory`` is restored after each test. Blinks use short times (10-60 ms) and
are observed as recorded transitions on the mock pin (``MockPin.states``), waited for with
a deadline; a steady LED is checked both by its pin level and by the absence of any
transition while the blinking ones are observed, and by the count of live blink threads.
"""

from __future__ import annotations

import importlib.util
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gpiozero
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin
from gpiozero.threads import GPIOThread

from midshift.firmware.core import indicators
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.gpio import StatusLights, make_pin_factory, validate_pins
from midshift.simulator.lab import wait_for

PINS = {"uplink_led": 17, "backlog_amber_led": 27, "backlog_red_led": 22, "fault_led": 23,
        "ack_button": 24}
LED_PINS = {"uplink": 17, "backlog_amber": 27, "backlog_red": 22, "fault": 23}
BUTTON_PIN = 24
FAST = {"uplink": (0.01, 0.01), "fault": (0.01, 0.01)}

QUIET = {"uplink": "primary", "backlog_records": 0, "journal_refusing_txn": False,
         "devices_in_error": []}


def snap(**changes: Any) -> dict[str, Any]:
    s = dict(QUIET)
    s.update(changes)
    return s


def blink_threads() -> list[threading.Thread]:
    # LED.blink runs a plain GPIOThread; a Button's HoldThread is a subclass, left out here.
    return [t for t in threading.enumerate() if type(t) is GPIOThread and t.is_alive()]


def gpio_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, GPIOThread) and t.is_alive()]


def pin(factory: MockFactory, number: int) -> MockPin:
    p = factory.pin(number)
    assert isinstance(p, MockPin)
    return p


def press(factory: MockFactory) -> None:
    """Push the button (pulled up, active low) and let it go."""
    button = pin(factory, BUTTON_PIN)
    button.drive_low()
    button.drive_high()


def assert_pins_show(factory: MockFactory, expected: dict[str, str], toggles: int = 4) -> None:
    """Steady LEDs at their level and unchanging; blinking LEDs toggling on the pin."""
    blinking = [name for name, state in expected.items() if state == indicators.BLINK]
    steady = [name for name in expected if name not in blinking]
    for name in LED_PINS:
        pin(factory, LED_PINS[name]).clear_states()
    for name in blinking:
        p = pin(factory, LED_PINS[name])
        assert wait_for(lambda p=p: len(p.states) > toggles, 2), f"{name} does not blink"
        assert p.function == "output"
    for name in steady:
        p = pin(factory, LED_PINS[name])
        assert p.state == (expected[name] == indicators.ON), f"{name} pin {p.state}"
        assert len(p.states) == 1, f"{name} changed while it should be steady: {p.states}"
    assert len(blink_threads()) == len(blinking)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    saved = Device.pin_factory
    f = MockFactory()
    try:
        yield f
    finally:
        f.reset()
        Device.pin_factory = saved
    assert not gpio_threads(), "gpiozero threads left running"


@pytest.fixture
def lights(factory: MockFactory) -> Iterator[StatusLights]:
    sl = StatusLights(PINS, factory, blink_s=FAST)
    try:
        yield sl
    finally:
        sl.close()


UPLINK_LED = {"primary": "on", "secondary": "blink", "none": "off"}
FAULT_LED = {"none": "off", "new": "blink", "acknowledged": "on"}


@pytest.mark.parametrize("fault", list(FAULT_LED))
@pytest.mark.parametrize("refusing", [False, True])
@pytest.mark.parametrize("backlog", [0, 12])
@pytest.mark.parametrize("uplink", list(UPLINK_LED))
def test_every_state_combination_on_the_pins(lights: StatusLights, factory: MockFactory,
                                             uplink: str, backlog: int, refusing: bool,
                                             fault: str) -> None:
    s = snap(uplink=uplink, backlog_records=backlog, journal_refusing_txn=refusing,
             devices_in_error=[] if fault == "none" else ["plc1"])
    lights.update(s)
    if fault == "acknowledged":
        press(factory)
    expected = {"uplink": UPLINK_LED[uplink], "backlog_amber": "on" if backlog else "off",
                "backlog_red": "on" if refusing else "off", "fault": FAULT_LED[fault]}
    assert lights.shown() == expected
    assert_pins_show(factory, expected)


def test_walking_through_every_combination_on_one_board(lights: StatusLights,
                                                        factory: MockFactory) -> None:
    """Each state reached from the one before: a blink stops when the LED turns steady."""
    combos = [(u, b, r, f) for u in UPLINK_LED for b in (0, 3) for r in (False, True)
              for f in ("none", "new")]
    for order in (combos, combos[::-1]):
        for u, b, r, f in order:
            lights.update(snap(uplink=u, backlog_records=b, journal_refusing_txn=r,
                               devices_in_error=[] if f == "none" else [f"plc-{u}"]))
            expected = {"uplink": UPLINK_LED[u], "backlog_amber": "on" if b else "off",
                        "backlog_red": "on" if r else "off", "fault": FAULT_LED[f]}
            assert_pins_show(factory, expected, toggles=2)


def test_primary_secondary_none_on_the_uplink_pin(lights: StatusLights,
                                                  factory: MockFactory) -> None:
    uplink = pin(factory, 17)
    assert uplink.function == "output" and uplink.state is False
    lights.update(snap(uplink="primary"))
    assert uplink.state is True
    lights.update(snap(uplink="secondary"))
    uplink.clear_states()
    assert wait_for(lambda: len(uplink.states) > 6, 2), "uplink LED does not blink"
    levels = [s.state for s in uplink.states[1:7]]
    assert all(a != b for a, b in zip(levels, levels[1:], strict=False)), levels
    lights.update(snap(uplink="none"))
    assert uplink.state is False
    assert not blink_threads()


def test_blink_keeps_its_on_and_off_times(factory: MockFactory) -> None:
    with StatusLights(PINS, factory, blink_s={"uplink": (0.06, 0.02)}) as sl:
        sl.update(snap(uplink="secondary"))
        uplink = pin(factory, 17)
        uplink.clear_states()
        assert wait_for(lambda: len(uplink.states) > 9, 5)
        # PinState.timestamp is the time since the previous change: entering low ends an
        # on-phase, entering high ends an off-phase. The first entry is the cleared state.
        on_s = [s.timestamp for s in uplink.states[2:] if s.state is False]
        off_s = [s.timestamp for s in uplink.states[2:] if s.state is True]
        assert on_s and off_s
        assert min(on_s) >= 0.05 and min(off_s) >= 0.015, (on_s, off_s)
        assert statistics.median(on_s) > statistics.median(off_s) + 0.02, (on_s, off_s)


def test_default_blink_times_are_the_cores(factory: MockFactory) -> None:
    with StatusLights(PINS, factory) as sl:
        sl.update(snap(uplink="secondary"))
        uplink = pin(factory, 17)
        assert uplink.state is True
        uplink.clear_states()
        assert wait_for(lambda: len(uplink.states) > 1, 3)
        on_s = uplink.states[1].timestamp
        assert uplink.states[1].state is False
        assert on_s >= indicators.UPLINK_BLINK_S[0] * 0.9, on_s


def test_a_full_journal_refusing_transactions_lights_the_red_led(lights: StatusLights,
                                                                 factory: MockFactory) -> None:
    red, amber = pin(factory, 22), pin(factory, 27)
    lights.update(snap(backlog_records=4096, journal_refusing_txn=True))
    assert red.state is True and amber.state is True
    lights.update(snap(backlog_records=4096, journal_refusing_txn=False))
    assert red.state is False and amber.state is True
    lights.update(snap(backlog_records=0))
    assert red.state is False and amber.state is False


def test_an_unchanged_state_does_not_touch_the_pins(lights: StatusLights,
                                                    factory: MockFactory) -> None:
    s = snap(uplink="secondary", backlog_records=2, journal_refusing_txn=True,
             devices_in_error=["plc1"])
    lights.update(s)
    before = set(blink_threads())
    assert len(before) == 2
    for number in (27, 22):
        pin(factory, number).clear_states()
    for _ in range(50):
        lights.update(dict(s))
    assert set(blink_threads()) == before, "a blink was restarted"
    for number in (27, 22):
        assert pin(factory, number).states[1:] == [], "a steady pin was written again"


def test_the_button_acknowledges_and_a_new_fault_raises_the_alarm_again(
        lights: StatusLights, factory: MockFactory) -> None:
    fault = pin(factory, 23)
    lights.update(snap(devices_in_error=["plc1"]))
    assert lights.shown()["fault"] == "blink" and lights.alarm.raised == 1
    press(factory)
    assert wait_for(lambda: not blink_threads(), 2), "fault LED still blinking after the press"
    assert fault.state is True
    assert lights.alarm.acknowledged_count == 1
    fault.clear_states()
    lights.update(snap(devices_in_error=["plc1"]))  # the same fault: stays steady
    assert fault.states[1:] == [] and fault.state is True
    lights.update(snap(devices_in_error=["plc1", "scale1"]))  # a new one: blink again
    assert_pins_show(factory, {"uplink": "on", "backlog_amber": "off", "backlog_red": "off",
                               "fault": "blink"})
    assert lights.alarm.raised == 2
    press(factory)
    assert wait_for(lambda: not blink_threads(), 2)
    assert fault.state is True
    lights.update(snap(devices_in_error=[]))
    assert fault.state is False
    lights.update(snap(devices_in_error=["plc1"]))  # plc1 cleared and came back: new
    assert lights.shown()["fault"] == "blink" and lights.alarm.raised == 3


def test_a_press_with_no_fault_does_not_acknowledge_the_next(lights: StatusLights,
                                                             factory: MockFactory) -> None:
    lights.update(snap())
    press(factory)
    assert lights.alarm.acknowledged_count == 0
    lights.update(snap(devices_in_error=["scanner1"]))
    assert_pins_show(factory, {"uplink": "on", "backlog_amber": "off", "backlog_red": "off",
                               "fault": "blink"})


def test_the_agents_snapshot_shape_names_the_faults(lights: StatusLights,
                                                    factory: MockFactory) -> None:
    """The agent sends a count and a device list: one device recovering while another
    fails between two snapshots is a new fault, although the count stays 1."""
    def agent_snap(failing: str) -> dict[str, Any]:
        devices = [{"name": n, "kind": "scale", "state": "error" if n == failing else "ok"}
                   for n in ("scale1", "plc1")]
        return snap(devices_in_error=1, devices=devices, alarm_acknowledged=True)

    lights.update(agent_snap("scale1"))
    assert lights.shown()["fault"] == "blink"  # the snapshot's own acknowledged is ignored
    press(factory)
    assert lights.shown()["fault"] == "on"
    lights.update(agent_snap("plc1"))
    assert lights.shown()["fault"] == "blink"
    assert wait_for(lambda: len(blink_threads()) == 1, 2)


def test_the_button_is_pulled_up_and_debounced(factory: MockFactory) -> None:
    with StatusLights(PINS, factory, ack_bounce_s=0.2) as sl:
        button = pin(factory, BUTTON_PIN)
        assert button.function == "input" and button.pull == "up"
        assert button.bounce == 0.2
        assert sl.button is not None and sl.button.is_pressed is False


def test_presses_from_another_thread_while_updating(lights: StatusLights,
                                                    factory: MockFactory) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def presser() -> None:
        try:
            for _ in range(200):
                if stop.is_set():
                    return
                press(factory)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    t = threading.Thread(target=presser)
    t.start()
    try:
        for i in range(200):
            lights.update(snap(devices_in_error=["plc1"] if i % 3 else ["plc1", f"x{i}"]))
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and not errors, errors
    press(factory)
    assert lights.shown()["fault"] == "on"
    assert wait_for(lambda: not blink_threads(), 2)
    assert pin(factory, 23).state is True


def test_close_releases_every_pin(factory: MockFactory) -> None:
    sl = StatusLights(PINS, factory, blink_s=FAST)
    sl.update(snap(uplink="secondary", devices_in_error=["plc1"], journal_refusing_txn=True))
    with pytest.raises(gpiozero.GPIOPinInUse):
        gpiozero.LED(17, pin_factory=factory)
    assert gpio_threads()
    devices = [*sl.leds.values(), sl.button]  # held here, so no __del__ closes them for us
    sl.close()
    assert all(d is not None and d.closed for d in devices)
    assert not gpio_threads(), "blink or hold threads survive close()"
    for number in (*LED_PINS.values(), BUTTON_PIN):
        assert pin(factory, number).function == "input", number
    assert sl.update(snap(uplink="primary")) == {}
    assert pin(factory, 17).function == "input"
    sl.close()  # idempotent
    again = [gpiozero.LED(n, pin_factory=factory) for n in LED_PINS.values()]
    again.append(gpiozero.Button(BUTTON_PIN, pin_factory=factory))
    for device in again:
        device.close()


def test_a_board_without_a_button(factory: MockFactory) -> None:
    pins = {k: v for k, v in PINS.items() if k != "ack_button"}
    with StatusLights(pins, factory, blink_s=FAST) as sl:
        assert sl.button is None
        sl.update(snap(devices_in_error=["plc1"]))
        assert sl.shown()["fault"] == "blink"
        assert sl.acknowledge() == ["plc1"]  # a downlink command could do this
        assert pin(factory, 23).state is True and sl.shown()["fault"] == "on"
        button = gpiozero.Button(BUTTON_PIN, pin_factory=factory)  # pin 24 left free
        button.close()


def test_a_failed_start_releases_the_pins_it_took(factory: MockFactory) -> None:
    squatter = gpiozero.LED(23, pin_factory=factory)
    try:
        with pytest.raises(gpiozero.GPIOPinInUse) as info:
            StatusLights(PINS, factory)
        # ``info`` keeps the half-built StatusLights alive through its traceback, so only
        # an explicit close() can have released these
        for number in (17, 27, 22):
            gpiozero.LED(number, pin_factory=factory).close()
        assert info.value is not None
    finally:
        squatter.close()


def test_a_mock_factory_by_name_is_built_and_closed_here() -> None:
    saved = Device.pin_factory
    try:
        with StatusLights(PINS, "mock", blink_s=FAST) as sl:
            assert isinstance(sl.factory, MockFactory)
            sl.update(snap(uplink="primary", backlog_records=1))
            assert sl.factory.pin(17).state is True and sl.factory.pin(27).state is True
        assert sl.factory.pins == {}
        assert Device.pin_factory is saved  # never set globally
    finally:
        Device.pin_factory = saved


# ---- configuration errors ---------------------------------------------------------------


@pytest.mark.parametrize("change, key, problem", [
    ({"fault_led": "23"}, "pins.fault_led", "'23' is not an integer"),
    ({"fault_led": 23.0}, "pins.fault_led", "23.0 is not an integer"),
    ({"uplink_led": True}, "pins.uplink_led", "True is not an integer"),
    ({"uplink_led": -1}, "pins.uplink_led", "-1 is not a BCM GPIO pin"),
    ({"backlog_red_led": 28}, "pins.backlog_red_led", "28 is not a BCM GPIO pin"),
    ({"ack_button": 40}, "pins.ack_button", "40 is not a BCM GPIO pin"),
    ({"fault_led": 17}, "pins.fault_led", "17 is already pins.uplink_led"),
    ({"ack_button": 22}, "pins.ack_button", "22 is already pins.backlog_red_led"),
    ({"fault_led": None}, "pins.fault_led", "is required"),
    ({"buzzer": 5}, "pins.buzzer", "is not a known pin"),
])
def test_bad_pin_tables_are_refused_with_the_key(change: dict[str, Any], key: str,
                                                 problem: str) -> None:
    table = dict(PINS)
    table.update(change)
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        validate_pins(table, "pins")
    assert info.value.key == key
    assert info.value.problem == problem
    assert info.value.allowed
    assert str(info.value).startswith(key + ": " + problem)


def test_good_pin_tables() -> None:
    assert validate_pins(PINS, "pins") == PINS
    no_button = {k: v for k, v in PINS.items() if k != "ack_button"}
    assert validate_pins(no_button, "pins") == no_button
    edge = {"uplink_led": 0, "backlog_amber_led": 27, "backlog_red_led": 1, "fault_led": 2}
    assert validate_pins(edge, "board.pins") == edge
    with pytest.raises(ConfigError) as info:
        validate_pins({**PINS, "fault_led": 99}, "board.pins")
    assert info.value.key == "board.pins.fault_led"


def test_status_lights_validate_before_touching_pins(factory: MockFactory) -> None:
    with pytest.raises(ConfigError) as info:
        StatusLights({**PINS, "fault_led": 17}, factory)
    assert info.value.key == "pins.fault_led"
    gpiozero.LED(17, pin_factory=factory).close()  # nothing was reserved


def test_an_unknown_pin_factory_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        make_pin_factory("wiringpi")
    assert info.value.key == "board.pin_factory"
    assert "lgpio, rpigpio, native, mock" in info.value.allowed


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None,
                    reason="lgpio is installed here: this checks the missing-library error")
def test_a_missing_lgpio_names_the_key_and_the_package() -> None:
    with pytest.raises(ConfigError) as info:
        StatusLights(PINS, "lgpio")
    assert info.value.key == "board.pin_factory"
    assert "lgpio" in info.value.problem and "not installed" in info.value.problem
    assert "midshift[pi]" in info.value.allowed


@pytest.mark.skipif(importlib.util.find_spec("RPi") is not None,
                    reason="RPi.GPIO is installed here: this checks the missing-library error")
def test_a_missing_rpi_gpio_names_the_key_and_the_package() -> None:
    with pytest.raises(ConfigError) as info:
        make_pin_factory("rpigpio")
    assert info.value.key == "board.pin_factory"
    assert "RPi.GPIO" in info.value.problem


@pytest.mark.skipif(Path("/proc/device-tree/model").exists(),
                    reason="a board with a device tree may really have GPIO")
def test_native_off_a_pi_names_the_key() -> None:
    saved = Device.pin_factory
    try:
        with pytest.raises(ConfigError) as info:
            StatusLights(PINS, "native")
        assert info.value.key == "board.pin_factory"
        assert "native" in info.value.problem
    finally:
        Device.pin_factory = saved
