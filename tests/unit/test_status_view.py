"""The status page's HTML from status documents: what a person reads, in the store's zone,
and nothing from the document reaching the page unescaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest

from midshift.firmware.edges.status_view import duration, link_state, money, render

AT = 1764928800000  # 2025-12-05 10:00:00 UTC
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def doc(**over: object) -> dict:
    d = {"gateway": "gw-01", "at_ms": AT, "uptime_s": 3600, "version": "1.2",
         "alarms": [], "alarm_detail": {}, "backlog_records": 0, "backlog_bytes": 0,
         "journal": {"free_bytes": 4_200_000}, "devices": [], "devices_down": [],
         "forwarding": {"active_uplink": "eth", "uplinks": {"eth": True, "lte": False},
                        "link_since_ms": AT - 90_000}}
    d.update(over)
    return d


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]


def test_online_since_in_the_stores_zone() -> None:
    page = render(doc(), ZoneInfo("Europe/Berlin"), 10, "Europe/Berlin")
    assert 'id="state">Online since 10:58:30</div>' in page  # 09:58:30 UTC is 10:58 in Berlin
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "Shown at 11:00:00 (Europe/Berlin)" in page and "running for 1 h 0 min" in page


@pytest.mark.parametrize("fwd, words", [
    ({"active_uplink": None, "uplinks": {"eth": False}, "link_since_ms": AT - 5_000},
     "Offline since"),
    (None, "No connection configured"),
])
def test_offline_and_no_uplink_are_told_apart(fwd: object, words: str) -> None:
    page = render(doc(forwarding=fwd), ZoneInfo("UTC"), 10)
    assert f'id="state">{words}' in page


def test_a_full_journal_says_sales_are_refused() -> None:
    page = render(doc(journal_refusing_txn=True), None, 10)
    assert "refuses new sales" in page and 'class="banner bad"' in page


def test_nothing_from_the_document_is_markup() -> None:
    d = doc(alarms=["device_down", HOSTILE], alarm_detail={"device_down": HOSTILE},
            devices=[{"name": HOSTILE, "kind": HOSTILE, "state": "error", "since_ms": AT,
                      "last_error": HOSTILE, "last_error_ms": AT, "last_value_ms": AT}],
            forwarding={"active_uplink": HOSTILE, "uplinks": {HOSTILE: True}},
            uplink_counters={HOSTILE: {"connects": HOSTILE}}, version=HOSTILE,
            gateway=HOSTILE,
            tills={"store": HOSTILE, "state": HOSTILE, "queued": {"count": HOSTILE},
                   "rules": {HOSTILE: {"limit": HOSTILE, "headroom": HOSTILE,
                                       "refused": HOSTILE}}})
    page = render(d, None, 10)
    p = Tags()
    p.feed(page)
    assert "script" not in p.tags and "img" not in p.tags and "onerror" not in p.attrs
    assert page.count("&lt;script&gt;") >= 8


def test_device_rows_say_state_and_last_reading() -> None:
    d = doc(devices=[{"name": "scan1", "kind": "scanner", "state": "ok", "since_ms": AT,
                      "last_value_ms": AT - 125_000},
                     {"name": "plc1", "kind": "modbus", "state": "disconnected",
                      "since_ms": AT, "last_value_ms": None}],
            devices_down=["plc1"])
    page = render(d, ZoneInfo("UTC"), 10)
    rows = re.findall(r"<tr><td>(scan1|plc1)</td>(.*?)</tr>", page)
    assert "Working" in rows[0][1] and "09:57:55" in rows[0][1] and "2 min ago" in rows[0][1]
    assert "Not connected, needs attention" in rows[1][1] and "none yet" in rows[1][1]


def test_small_words() -> None:
    assert [duration(s) for s in (5, 125, 7260, 90000, 180000)] == [
        "5 s", "2 min", "2 h 1 min", "1 day 1 h", "2 days 2 h"]
    assert money(123456) == "1,234.56" and money(None) == "no limit"
    assert link_state({"at_ms": AT, "uptime_s": 10}) == (None, AT - 10_000)
