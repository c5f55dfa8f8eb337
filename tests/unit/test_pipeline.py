"""The event pipeline: validation, redaction and the record class per source."""

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import MidshiftError
from midshift.firmware.core.event import Event, decode_body
from midshift.firmware.core.pipeline import InvalidEvent, Pipeline

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_pipeline_validates_redacts_and_classifies():
    p = Pipeline({"scanner1": "txn", "plc1": "telemetry"}, 512)
    body, cls = p.prepare(Event("scanner1", "scan", 1700000000123,
                                {"code": "4111111111111111", "symbology": "]C0"}))
    doc = decode_body(body)
    assert (cls, doc["data"]["code"], doc["read_ms"]) == (rec.TXN, "411111******1111", 1700000000123)
    body, cls = p.prepare(Event("plc1", "register", 1700000000124, {"tag": "t", "value": 3}))
    assert cls == rec.TELEMETRY and decode_body(body)["data"]["value"] == 3
    bad = [Event("ghost", "scan", 1700000000123, {}),
           Event("scanner1", "", 1700000000123, {}),
           Event("scanner1", "scan", 1700000000, {}),
           Event("scanner1", "scan", 1700000000123, [1]),
           Event("scanner1", "scan", 1700000000123, {"n": 4111111111111111}),
           Event("scanner1", "scan", 1700000000123, {"x": "y" * 600})]
    reasons = []
    for e in bad:
        try:
            p.prepare(e)
        except InvalidEvent as exc:
            assert isinstance(exc, MidshiftError) and str(exc)
            reasons.append(exc.reason)
    assert reasons == ["unknown_source", "bad_kind", "bad_time", "bad_data", "bad_data",
                       "too_large"]
    assert p.stats()["accepted"] == 2 and p.stats()["masked"] == 1
