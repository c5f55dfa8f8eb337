"""``journal dump|verify|export`` on copies of a journal written by the agent's own
journal code on segment files: a clean one, one with a torn tail, one with a flipped bit.
The tools must find each, in the words an operator reads, and never write to the copy."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from midshift.firmware.core.event import encode_body
from midshift.firmware.core.journal import DATA_START
from midshift.firmware.core.record import HEADER_SIZE
from midshift.firmware.edges.flash import open_or_create_journal
from midshift.host_tools.__main__ import main as host_tools

SEGMENT = 4096
N = 40


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple[int, int]]]:
    """A journal of N scans, each made durable on its own as the agent's group commit does
    at a slow pace; {seq: (pos, body length)}. The last commit point's hint then lies a
    few records before the end: open checks what follows it, reading checks the rest."""
    d = tmp_path_factory.mktemp("journal") / "journal"
    j = open_or_create_journal(d, SEGMENT, 8, "gw-01")
    for i in range(1, N + 1):
        j.append(encode_body("scanner1", "scan", 1_700_000_000_000 + i, {"code": f"C{i:03d}"}),
                 0, (1_700_000_000_000 + i) << 16)
        j.flush()
    where = {r.seq: (r.pos, len(r.body)) for r in j.records()}
    j.close()
    return d, where


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def poke(d: Path, pos: int, change: bytes | int) -> None:
    """Overwrite bytes (or XOR one bit mask) at a logical journal position, in its segment
    file, the way flash damage would."""
    seg, off = divmod(pos, SEGMENT)  # data positions below one lap: phys = DATA_START + pos
    assert DATA_START + pos < DATA_START + 8 * SEGMENT
    path = d / f"seg-{seg:05d}.dat"
    data = bytearray(path.read_bytes())
    if isinstance(change, int):
        data[off] ^= change
    else:
        data[off:off + len(change)] = change
    path.write_bytes(bytes(data))


def digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def verify(d: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = host_tools(["journal", "verify", str(d), "--json"])
    doc = json.loads(capsys.readouterr().out)
    host_tools(["journal", "verify", str(d)])
    return rc, doc, capsys.readouterr().out


def test_a_clean_journal_verifies_and_dumps_every_record_in_order(
        journal: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    d, _ = journal
    before = digest(d)
    rc, doc, text = verify(d, capsys)
    assert rc == 0 and doc["clean"] and doc["records"] == N and doc["gateway"] == "gw-01"
    assert "verdict: clean" in text
    assert host_tools(["journal", "dump", str(d), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, N + 1))
    assert rows[4]["data"] == {"code": "C005"} and rows[4]["source"] == "scanner1"
    assert rows[4]["hlc_ms"] == 1_700_000_000_005 and rows[4]["class"] == "txn"
    assert host_tools(["journal", "dump", str(d)]) == 0
    assert '2023-11-14T22:13:20.005Z+0   scanner1     scan       {"code": "C005"}' in \
        capsys.readouterr().out
    assert digest(d) == before  # read-only: not a byte written


@pytest.mark.parametrize("seq", [N, N - 1])
def test_a_torn_tail_is_reported_with_the_seq_whose_write_never_completed(
        journal: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        seq: int) -> None:
    """The last record's write torn near its end; or a group commit of the last two torn
    inside the first (its end and all of the second never landed)."""
    d, where = journal
    torn = copy(d, tmp_path / "torn")
    pos, length = where[seq]
    poke(torn, pos + HEADER_SIZE + length - 6, bytes(6))  # the write's last bytes never landed
    if seq < N:
        last_pos, last_len = where[N]
        poke(torn, last_pos, bytes(HEADER_SIZE + last_len))
    before = digest(torn)
    rc, doc, text = verify(torn, capsys)
    assert rc == 1 and not doc["clean"]
    assert doc["torn_tail"] == {"pos": pos, "bytes": HEADER_SIZE + length, "reason": "bad crc",
                                "seq": seq}
    assert doc["records"] == seq - 1 and doc["crc_failures"] == [] and doc["gaps"] == []
    assert f"torn tail: at byte {pos}" in text and f"write of seq {seq} never completed" in text
    assert digest(torn) == before  # the agent would zero the torn frame; the tool does not


def test_a_flipped_bit_mid_journal_is_a_crc_failure_and_a_gap(
        journal: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, where = journal
    rot = copy(d, tmp_path / "rot")
    pos, length = where[17]
    poke(rot, pos + HEADER_SIZE + length // 2, 0x10)  # one bit in record 17's body
    rc, doc, text = verify(rot, capsys)
    assert rc == 1
    assert doc["crc_failures"] == [[17, 17]] and doc["gaps"] == [[17, 17]]
    assert doc["records"] == N - 1 and doc["last_seq"] == N and doc["torn_tail"] is None
    assert "CRC failures (records unreadable, lost): seq 17" in text and "gaps: seq 17" in text
    assert host_tools(["journal", "export", str(rot), "--format", "jsonl"]) == 0
    seqs = [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()]
    assert seqs == [s for s in range(1, N + 1) if s != 17]  # everything else still readable


def test_export_writes_csv_and_json_lines(journal: tuple[Path, dict], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    d, _ = journal
    assert host_tools(["journal", "export", str(d), "--format", "csv", "-o",
                       str(tmp_path / "j.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "j.csv").read_text())))
    assert len(rows) == N and rows[0]["seq"] == "1" and rows[0]["kind"] == "scan"
    assert json.loads(rows[-1]["data"]) == {"code": f"C{N:03d}"}
    assert host_tools(["journal", "export", str(d), "-o", str(tmp_path / "j.jsonl")]) == 0
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == N


def test_a_directory_that_is_not_a_journal_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("dump", "verify", "export"):
        assert host_tools(["journal", action, str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "no journal here (missing journal.head)" in err and "\n" not in err


def test_a_body_that_does_not_decode_is_dumped_raw_and_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = open_or_create_journal(tmp_path / "j", SEGMENT, 4, "gw-02")
    j.append(encode_body("plc1", "value", 1, {"t": 21.5}), 1, 1 << 16)
    j.append(b"\xffnot json", 1, 2 << 16)  # written whole (CRC good), but not an event
    j.flush()
    j.close()
    rc, doc, text = verify(tmp_path / "j", capsys)
    assert rc == 1 and doc["undecodable"] == [2] and doc["crc_failures"] == []
    assert "bodies that do not decode: 1, seq 2" in text
    assert host_tools(["journal", "dump", str(tmp_path / "j")]) == 0
    out = capsys.readouterr().out
    assert "telemetry" in out and "<record body is not JSON" in out and "not json" in out
