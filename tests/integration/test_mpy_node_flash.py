"""The node's journal storage (midshift/firmware/mpy/flash_storage.py) on real files: the ring
wraps across many segment files with only two open at a time, everything reopens as it
was, a process killed between creating the files and formatting them comes back, and a
missing or foreign directory is a clear StorageError. (On a board these files live on
littlefs; here on the host's filesystem, with os.fsync where littlefs commits at flush.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from midshift.firmware.core.errors import StorageError
from midshift.firmware.core.journal import Journal
from midshift.firmware.mpy.flash_format import create, open_or_create_journal
from midshift.firmware.mpy.flash_storage import FlashStorage

SEG = 4096


def _body(i: int) -> bytes:
    return (b'{"v":1,"src":"scanner1","k":"scan","t":1700000000000,"d":{"code":"%08d"}}' % i)


def test_the_ring_wraps_over_segment_files_and_reopens_as_it_was(tmp_path: Path) -> None:
    d = str(tmp_path / "journal")
    j = open_or_create_journal(d, SEG, 8, "node-1", 1700000000000, 1024, epoch=0xABC)
    j.storage.close()
    j = Journal.open(FlashStorage(d, max_open=2), max_body=1024)  # evictions on every turn
    written = 0
    for _round in range(12):  # ~12 x 60 records of ~110 bytes: the 32 KiB ring wraps 2.5 times
        for _ in range(60):
            written += 1
            j.append(_body(written), 0, written << 16)
        j.flush()
        records = list(j.records())
        assert [r.body for r in records] == [_body(i) for i in range(j.tail_seq, written + 1)]
        j.commit(records[-1].seq - 5, None)  # the ledger acked all but the last five
    j.close()
    j = open_or_create_journal(d, SEG, 8, "node-1")
    assert j.epoch == 0xABC and j.durable_seq == written and j.tail_seq == written - 4
    assert [r.body for r in j.records()] == [_body(i) for i in range(written - 4, written + 1)]
    assert j.recovery.cut_reason is None and j.recovery.corrupt_seqs == []
    assert sorted(p.name for p in (tmp_path / "journal").iterdir()) == \
        ["journal.head", "log"] + [f"seg-{i:05d}.dat" for i in range(8)]
    assert [p.name for p in (tmp_path / "journal" / "log").iterdir()] == ["recent"]
    j.close()


def test_a_cut_between_creating_and_formatting_is_formatted_on_the_next_start(
        tmp_path: Path) -> None:
    d = tmp_path / "journal"
    create(str(d), SEG, 4).close()  # the files, but the power went before format
    j = open_or_create_journal(str(d), SEG, 4, "node-1", epoch=0x77)
    assert j.epoch == 0x77 and j.next_seq == 1
    j.close()
    (d / "journal.head").unlink()  # the head is written last: without it, start over
    j = open_or_create_journal(str(d), SEG, 4, "node-1", epoch=0x78)
    assert j.epoch == 0x78
    j.close()


def test_missing_or_foreign_directories_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no journal here"):
        FlashStorage(str(tmp_path / "nothing"))
    create(str(tmp_path / "j"), SEG, 2).close()
    with pytest.raises(StorageError, match="refusing to overwrite"):
        create(str(tmp_path / "j"), SEG, 2)
    (tmp_path / "j" / "seg-00001.dat").write_bytes(b"short")
    with pytest.raises(StorageError, match="fewer than two"):
        FlashStorage(str(tmp_path / "j"))
    st = create(str(tmp_path / "k"), SEG, 2)
    with pytest.raises(StorageError, match="crosses a segment end"):
        st.write(4096 + SEG - 2, b"abcd")
    st.close()
