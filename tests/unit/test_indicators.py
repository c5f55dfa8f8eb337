"""The LED policy and the alarm-acknowledge rule: plain functions and bare asserts, no
pytest import, so the same cases run under MicroPython (``PORTABLE``)."""

from midshift.firmware.core.indicators import (
    BLINK,
    FAULT_BLINK_S,
    LED_NAMES,
    OFF,
    ON,
    UPLINK_BLINK_S,
    FaultAlarm,
    active_faults,
    blink_times_s,
    desired_leds,
)

PORTABLE = True  # tests/micropython runs these cases under MicroPython too

QUIET = {"uplink": "primary", "backlog_records": 0, "journal_refusing_txn": False,
         "devices_in_error": 0, "alarm_acknowledged": False}


def snap(**changes):
    s = dict(QUIET)
    s.update(changes)
    return s


def raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type as e:
        return str(e)
    raise AssertionError(exc_type.__name__ + " not raised")


def test_quiet_gateway_shows_only_the_uplink():
    assert desired_leds(QUIET) == {"uplink": ON, "backlog_amber": OFF, "backlog_red": OFF,
                                   "fault": OFF}


def test_every_led_is_named_and_every_state_is_known():
    leds = desired_leds(snap(uplink="secondary", backlog_records=3, journal_refusing_txn=True,
                             devices_in_error=1))
    assert sorted(leds) == sorted(LED_NAMES)
    assert leds == {"uplink": BLINK, "backlog_amber": ON, "backlog_red": ON, "fault": BLINK}


def test_uplink_led_follows_the_active_uplink():
    assert desired_leds(snap(uplink="primary"))["uplink"] == ON
    assert desired_leds(snap(uplink="secondary"))["uplink"] == BLINK
    assert desired_leds(snap(uplink="none"))["uplink"] == OFF
    assert desired_leds(snap(uplink=None))["uplink"] == OFF


def test_unknown_uplink_value_is_a_bug_not_a_state():
    text = raises(ValueError, desired_leds, snap(uplink="lte"))
    assert "lte" in text and "primary" in text


def test_missing_keys_read_as_all_quiet():
    assert desired_leds({}) == {"uplink": OFF, "backlog_amber": OFF, "backlog_red": OFF,
                                "fault": OFF}


def test_amber_while_records_wait_red_while_journal_refuses():
    assert desired_leds(snap(backlog_records=1))["backlog_amber"] == ON
    assert desired_leds(snap(backlog_records=0))["backlog_amber"] == OFF
    leds = desired_leds(snap(backlog_records=0, journal_refusing_txn=True))
    assert leds["backlog_red"] == ON and leds["backlog_amber"] == OFF
    assert desired_leds(snap(backlog_records=500))["backlog_red"] == OFF


def test_fault_led_blinks_until_acknowledged_then_is_steady():
    assert desired_leds(snap(devices_in_error=2))["fault"] == BLINK
    assert desired_leds(snap(devices_in_error=2, alarm_acknowledged=True))["fault"] == ON
    assert desired_leds(snap(devices_in_error=0, alarm_acknowledged=True))["fault"] == OFF
    assert desired_leds(snap(devices_in_error=["scale1"]))["fault"] == BLINK
    assert desired_leds(snap(devices_in_error=[]))["fault"] == OFF


def test_blink_times():
    assert blink_times_s("uplink") == UPLINK_BLINK_S
    assert blink_times_s("fault") == FAULT_BLINK_S
    # the alarm blinks faster than the degraded-uplink blink, so the two read differently
    assert sum(FAULT_BLINK_S) < sum(UPLINK_BLINK_S)
    on_s, off_s = blink_times_s("backlog_red")
    assert on_s > 0 and off_s > 0


def test_active_faults_from_names_counts_and_device_list():
    assert active_faults(snap(devices_in_error=["plc1", "scale1"])) == {"plc1", "scale1"}
    assert active_faults(snap(devices_in_error=2)) == {"#1", "#2"}
    assert active_faults(snap(devices_in_error=0)) == set()
    devices = [{"name": "plc1", "state": "error"}, {"name": "scale1", "state": "ok"},
               {"name": "scanner1", "state": "disconnected"}]
    assert active_faults(snap(devices_in_error=1, devices=devices)) == {"plc1"}
    # a device list that disagrees with the count: trust the count
    assert active_faults(snap(devices_in_error=1, devices=[])) == {"#1"}
    raises(ValueError, active_faults, snap(devices_in_error="two"))
    raises(ValueError, active_faults, snap(devices_in_error=True))


def test_acknowledge_makes_present_faults_steady():
    alarm = FaultAlarm()
    assert alarm.update(set()) is True
    assert alarm.update({"plc1"}) is False
    assert alarm.raised == 1 and alarm.new_faults() == ["plc1"]
    assert alarm.acknowledge() == ["plc1"]
    assert alarm.acknowledged_count == 1
    assert alarm.update({"plc1"}) is True
    assert alarm.raised == 1


def test_a_new_fault_after_acknowledgement_raises_the_alarm_again():
    alarm = FaultAlarm()
    alarm.update({"plc1"})
    alarm.acknowledge()
    assert alarm.update({"plc1", "scale1"}) is False
    assert alarm.raised == 2
    assert alarm.new_faults() == ["scale1"]
    assert alarm.acknowledge() == ["scale1"]
    assert alarm.update({"plc1", "scale1"}) is True


def test_a_cleared_fault_that_returns_is_new():
    alarm = FaultAlarm()
    alarm.update({"plc1"})
    alarm.acknowledge()
    assert alarm.update(set()) is True
    assert alarm.update({"plc1"}) is False
    assert alarm.raised == 2


def test_one_device_recovering_as_another_fails_is_new():
    alarm = FaultAlarm()
    alarm.update(active_faults(snap(devices_in_error=1,
                                    devices=[{"name": "plc1", "state": "error"}])))
    alarm.acknowledge()
    faults = active_faults(snap(devices_in_error=1, devices=[{"name": "plc1", "state": "ok"},
                                                             {"name": "scale1", "state": "error"}]))
    assert alarm.update(faults) is False


def test_with_a_count_only_a_rise_is_new():
    alarm = FaultAlarm()
    alarm.update(active_faults(snap(devices_in_error=2)))
    alarm.acknowledge()
    assert alarm.update(active_faults(snap(devices_in_error=1))) is True
    assert alarm.update(active_faults(snap(devices_in_error=2))) is False


def test_pressing_with_no_fault_acknowledges_nothing_ahead():
    alarm = FaultAlarm()
    alarm.update(set())
    assert alarm.acknowledge() == []
    assert alarm.acknowledged_count == 0
    assert alarm.update({"plc1"}) is False


def test_pressing_twice_is_harmless():
    alarm = FaultAlarm()
    alarm.update({"plc1"})
    assert alarm.acknowledge() == ["plc1"]
    assert alarm.acknowledge() == []
    assert alarm.acknowledged_count == 1
    assert alarm.update({"plc1"}) is True


def test_policy_and_alarm_together():
    alarm = FaultAlarm()
    s = snap(devices_in_error=["plc1"])
    s["alarm_acknowledged"] = alarm.update(active_faults(s))
    assert desired_leds(s)["fault"] == BLINK
    alarm.acknowledge()
    s["alarm_acknowledged"] = alarm.update(active_faults(s))
    assert desired_leds(s)["fault"] == ON
    s = snap(devices_in_error=["plc1", "scale1"])
    s["alarm_acknowledged"] = alarm.update(active_faults(s))
    assert desired_leds(s)["fault"] == BLINK
    s = snap(devices_in_error=[])
    s["alarm_acknowledged"] = alarm.update(active_faults(s))
    assert desired_leds(s)["fault"] == OFF


def test_status_lights_policy():
    quiet = desired_leds({"uplink": "primary"})
    assert quiet["uplink"] == "on" and quiet["backlog_red"] == "off"
    busy = desired_leds({"uplink": "secondary", "backlog_records": 5,
                         "journal_refusing_txn": True, "devices_in_error": 1})
    assert (busy["uplink"], busy["backlog_amber"], busy["backlog_red"]) == ("blink", "on", "on")
    assert desired_leds({"uplink": "none"})["uplink"] == "off"


def test_a_device_down_lights_the_fault_led_like_one_in_error():
    devices = [{"name": "plc1", "state": "disconnected"}, {"name": "scale1", "state": "ok"}]
    down = snap(devices_in_error=1, devices=devices, devices_down=["plc1"])
    assert active_faults(down) == {"plc1"}
    assert desired_leds(down)["fault"] == BLINK
    assert desired_leds(snap(devices_in_error=0, devices=devices))["fault"] == OFF
