"""The record frame: header fields and the epoch-seeded CRC."""

from midshift.firmware.core import record as rec

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_frame_round_trip_and_crc():
    seed = rec.epoch_seed(99)
    frame = rec.encode_frame(seed, rec.TYPE_RECORD, rec.TELEMETRY, 7, 12345, 0, b"hello")
    h = rec.FrameHeader(frame[:rec.HEADER_SIZE])
    assert h.plausible() and h.seq == 7 and h.hlc == 12345 and h.length == 5
    assert h.crc_ok(seed, frame[rec.HEADER_SIZE:])
    assert not h.crc_ok(seed, b"hellp")
    assert not h.crc_ok(rec.epoch_seed(100), frame[rec.HEADER_SIZE:])
