"""The uplink selector: failover at once, failback after the hold, metered uplinks."""

from midshift.firmware.core.uplink_selector import UplinkSelector

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_uplink_failover_and_failback_after_hold():
    s = UplinkSelector(["eth", "lte"], hold_ms=30000, metered=["lte"])
    assert s.select(0) == (None, None)
    s.report("lte", True, 0)
    assert s.select(0) == ("lte", ("up", None, "lte"))
    s.report("eth", True, 5)  # the primary's first connection at start-up: no hold
    assert s.next_failback_ms(5) == 5
    assert s.select(5) == ("eth", ("failback", "lte", "eth"))
    s.report("eth", False, 1000)  # it fails: the secondary takes over at once
    assert s.select(1000) == ("lte", ("failover", "eth", "lte"))
    s.report("eth", True, 2000)  # back, but it has failed before: not before the hold
    assert s.select(31999) == ("lte", None)
    assert s.next_failback_ms(31999) == 32000
    assert s.select(32000) == ("eth", ("failback", "lte", "eth"))
    s.report("eth", False, 40000)  # primary fails: the secondary takes over at once
    assert s.select(40000) == ("lte", ("failover", "eth", "lte"))
    for t in range(41000, 100000, 5000):  # the primary flaps: up 2 s, down 3 s
        s.report("eth", True, t)
        assert s.select(t + 1999)[0] == "lte"
        s.report("eth", False, t + 2000)
    s.report("lte", False, 100000)
    assert s.select(100000) == (None, ("down", "lte", None))
    assert (s.failovers, s.failbacks) == (2, 2)
    assert s.carries("eth", 1) and s.carries("lte", 0) and not s.carries("lte", 1)
