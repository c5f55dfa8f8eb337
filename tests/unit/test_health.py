"""When a device counts as down, and the bind address parser. Portable: the same cases
run under MicroPython."""

from midshift.firmware.core.bind_address import parse_bind
from midshift.firmware.core.health import DeviceWatch

PORTABLE = True


def dev(name, state):
    return {"name": name, "state": state}


def test_a_device_not_ok_past_its_limit_is_down_and_back_when_ok():
    w = DeviceWatch({"plc1": 5000}, 10000, 0)
    assert w.update([dev("plc1", "ok"), dev("scan", "ok")], 1000) == []
    assert w.update([dev("plc1", "disconnected"), dev("scan", "stale")], 6000) == []
    assert w.update([dev("plc1", "disconnected"), dev("scan", "stale")], 6001) == ["plc1"]
    assert w.update([dev("plc1", "error"), dev("scan", "stale")], 11001) == ["plc1", "scan"]
    assert w.down == ["plc1", "scan"]
    assert w.update([dev("plc1", "ok"), dev("scan", "stale")], 12000) == ["scan"]


def test_a_device_never_seen_ok_counts_from_the_start():
    w = DeviceWatch({}, 3000, 100)
    assert w.update([dev("scale", "disconnected")], 3100) == []
    assert w.update([dev("scale", "disconnected")], 3101) == ["scale"]


def test_bind_addresses():
    assert parse_bind("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_bind("[::1]:0") == ("::1", 0)
    assert parse_bind("localhost:65535") == ("localhost", 65535)
    for bad in ("9108", ":9108", "h:", "h:x", "h:70000", "::1:9108", None):
        try:
            parse_bind(bad)
        except ValueError:
            continue
        raise AssertionError("accepted " + repr(bad))
