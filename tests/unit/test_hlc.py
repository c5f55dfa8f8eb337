"""The hybrid logical clock: monotonic across wall-clock jumps and reboots."""

from midshift.firmware.core.hlc import HybridLogicalClock, logical, physical_ms

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_hlc_monotonic_across_clock_jumps():
    wall = [1000000]
    clock = HybridLogicalClock(lambda: wall[0])
    last = clock.now()
    for step in (5, 0, -3600000, 0, 1, 86400000, -1, 0):
        wall[0] += step
        ts = clock.now()
        assert ts > last
        last = ts
    assert physical_ms(last) >= wall[0]
    # After a backward jump the counter carries order; after a reboot it resumes above.
    again = HybridLogicalClock(lambda: wall[0] - 5000, last)
    assert again.now() > last
    merged = clock.observe(last + (10 << 16))
    assert merged > last + (10 << 16) and logical(merged) >= 0
