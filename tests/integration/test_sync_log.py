"""The sync log: rotated by the standard library's RotatingFileHandler at the site file's
size and count, each line with ISO 8601 time beside epoch milliseconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import DeviceType, validate
from midshift.firmware.edges.sync_log import close_sync_log, iso_ms, open_sync_log, sync_event


def test_rotates_at_size_keeps_count_and_stamps_iso_time(tmp_path: Path) -> None:
    handler = open_sync_log(tmp_path / "sync.log", max_bytes=4096, backups=2)
    try:
        for i in range(300):
            sync_event("acked", seq=i, uplink="eth")
    finally:
        close_sync_log(handler)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["sync.log", "sync.log.1", "sync.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 4096
        for line in (tmp_path / name).read_text().splitlines():
            doc = json.loads(line)
            when = datetime.fromtimestamp(doc["ts_ms"] / 1000, UTC)
            assert doc["ts"] == when.strftime("%Y-%m-%dT%H:%M:%S.") + \
                f"{doc['ts_ms'] % 1000:03d}Z"
    last = json.loads((tmp_path / "sync.log").read_text().splitlines()[-1])
    assert last["seq"] == 299


def test_iso_ms_is_utc_to_the_millisecond() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_796_461_269_123) == "2026-12-05T09:01:09.123Z"


@pytest.mark.parametrize("value,ok", [(0, True), (3, True), (100, True), (101, False),
                                      (-1, False)])
def test_sync_log_backups_is_checked(value: int, ok: bool) -> None:
    doc = {"gateway": {"id": "g", "site": "s"}, "board": {"name": "b"},
           "journal": {"path": "/tmp/j"}, "devices": {"d": {"type": "x"}},
           "status": {"sync_log_backups": value}}
    types = {"x": DeviceType("txn", lambda n, t, p: t)}
    if ok:
        assert validate(doc, types).sync_log_backups == value
    else:
        with pytest.raises(ConfigError, match="status.sync_log_backups"):
            validate(doc, types)


def test_a_reopened_log_counts_from_the_size_it_had(tmp_path: Path) -> None:
    # The handler counts its file's size instead of asking the file per line: a log left
    # by the last run must count as the size it has, or it would grow past max_bytes.
    (tmp_path / "sync.log").write_text("x" * 3900 + "\n")
    handler = open_sync_log(tmp_path / "sync.log", max_bytes=4096, backups=2)
    try:
        for i in range(5):
            sync_event("acked", seq=i, uplink="eth")
    finally:
        close_sync_log(handler)
    old = (tmp_path / "sync.log.1").read_text()
    assert old.startswith("x" * 3900) and len(old.encode()) <= 4096
    assert json.loads((tmp_path / "sync.log").read_text().splitlines()[-1])["seq"] == 4
