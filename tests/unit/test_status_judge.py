"""How ``status --once`` judges one gateway and folds many (monitoring-plugin codes)."""

import pytest

from midshift.host_tools.status_judge import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    judge,
    status_age_s,
    summary,
)

NOW = 1_800_000_000_000
ONLINE = {"state": "online", "ts_ms": NOW - 2000, "uplink": "primary", "backlog_records": 4}


@pytest.mark.parametrize("doc, age_s, code, reason", [
    (ONLINE, 2.0, OK, "online, uplink primary, backlog 4"),
    (ONLINE, 31.0, CRITICAL, "silent for 31 s (stale after 30 s)"),
    ({**ONLINE, "alarms": ["device_down"], "alarm_detail": {"device_down": "plc1,scan1"}}, 2.0,
     WARNING, "alarm device_down (plc1,scan1)"),
    ({**ONLINE, "alarms": ["clock_offset", "no_ack"], "alarm_detail": {"no_ack": "x"}}, 2.0,
     CRITICAL, "alarm no_ack (x); alarm clock_offset"),
    ({**ONLINE, "forwarding": {"alarms": ["thread_status"]}}, 2.0, WARNING,
     "alarm thread_status"),
    ({**ONLINE, "journal_refusing_txn": True}, 2.0, CRITICAL, "journal refuses transactions"),
    ({"state": "offline", "reason": "stopped", "ts_ms": NOW - 9000}, 9.0, CRITICAL,
     "offline (stopped cleanly 9 s ago)"),
    ({"state": "offline"}, None, CRITICAL,
     "offline (connection lost: the broker sent its last will)"),
    ({"state": "online"}, None, UNKNOWN, "retained status without ts_ms: its age cannot be told"),
    ({"state": "unreadable"}, 1.0, UNKNOWN, "unreadable status"),
])
def test_one_gateway(doc, age_s, code, reason):
    assert judge(doc, age_s, 30.0) == (code, reason)


def test_the_age_is_the_documents_own():
    assert status_age_s(ONLINE, NOW, 0.0, True) == 2.0  # retained, yet 2 s old
    assert status_age_s(ONLINE, NOW - 5000, 0.0, False) == 0.0  # a clock behind: not negative
    assert status_age_s({"state": "online"}, NOW, 7.0, False) == 7.0  # fresh, unstamped
    assert status_age_s({"state": "online"}, NOW, 7.0, True) is None


def test_the_worst_gateway_decides_and_never_seen_ones_warn():
    ok, warn, crit = (OK, "online"), (WARNING, "alarm device_down"), (CRITICAL, "offline")
    assert summary({"a": ok}, []) == (OK, "OK: online")
    assert summary({"a": ok, "b": ok}, []) == (OK, "OK: 2 gateways online")
    assert summary({"a": ok}, ["c"]) == (WARNING, "WARNING: never seen: c")
    assert summary({"a": warn, "b": crit}, []) == (CRITICAL, "CRITICAL: a alarm device_down; "
                                                             "b offline")
    assert summary({"a": (UNKNOWN, "unreadable status"), "b": warn}, [])[0] == WARNING
    assert summary({}, []) == (UNKNOWN, "UNKNOWN: no gateway has published a status")
    assert summary({"a": ok}, [], "z")[0] == UNKNOWN
