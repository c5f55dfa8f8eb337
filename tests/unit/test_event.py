"""The event body: what a driver's event becomes on the wire and back."""

from midshift.firmware.core.event import Event, decode_body

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_event_body_round_trip():
    ev = Event("scanner1", "scan", 1700000000123, {"code": "4006381333931"})
    doc = decode_body(ev.to_body())
    assert doc["source"] == "scanner1" and doc["kind"] == "scan"
    assert doc["read_ms"] == 1700000000123 and doc["data"]["code"] == "4006381333931"
