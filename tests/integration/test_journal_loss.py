"""Journal files deleted, truncated or replaced under a running agent are noticed within
one status period, alarmed (``journal_lost``) and new events refused. A gateway whose
epoch mark says it had a journal refuses to start without it unless told
``--new-epoch``; the new epoch's first record tells the ledger which epoch was abandoned
at which acknowledged seq, and ``reconcile`` shows it. Formatting a journal that does
not fit says so in one line and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from midshift.firmware.agent import Agent
from midshift.firmware.core.errors import StorageError
from midshift.firmware.edges.flash import FileStorage
from midshift.simulator.lab import Lab, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path, uplinks=1)
    yield r
    r.close()


def _delete(j: Path) -> None:
    for p in j.glob("seg-*.dat"):
        p.unlink()
    (j / "journal.head").unlink()


def _truncate(j: Path) -> None:
    os.truncate(j / "seg-00003.dat", 100)


def _replace(j: Path) -> None:
    shutil.copy(j / "journal.head", j / "head.copy")
    os.replace(j / "head.copy", j / "journal.head")


@pytest.mark.parametrize("damage", [_delete, _truncate, _replace],
                         ids=["deleted", "truncated", "replaced"])
def test_journal_files_lost_under_a_running_agent_are_alarmed_and_refuse_events(
        rig: Lab, damage: Callable[[Path], None]) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(20)
    assert wait_for(lambda: rig.ledger_count() == 20, 10)
    assert agent.snapshot()["forwarding"]["alarms"] == []
    damage(rig.tmp / "journal")
    period_s = min(rig.cfg.status_period_s, 1.0)
    assert wait_for(lambda: "journal_lost" in agent.snapshot()["forwarding"]["alarms"],
                    period_s + 0.5), agent.snapshot()["forwarding"]["alarms"]
    with pytest.raises(StorageError, match="journal lost"):
        rig.emit(1)
    assert agent.forwarding.alive()  # the status goes on saying so


def test_a_lost_journal_refuses_to_start_until_a_new_epoch_and_reconcile_shows_the_gap(
        rig: Lab) -> None:
    from midshift.host_tools.reconcile import format_report, reconcile

    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(20)
    assert wait_for(lambda: rig.ledger_count() == 20, 10)
    # Seq 1 is the link's "online" incident, 2-21 the events.
    assert wait_for(lambda: agent.journal.journal.committed_seq == 21, 5)
    old_epoch = f"{agent.journal.epoch:016x}"
    rig.agent = None
    agent.stop()
    _delete(rig.tmp / "journal")
    with pytest.raises(StorageError, match="--new-epoch"):
        Agent(rig.cfg).start()
    assert not (rig.tmp / "journal" / "journal.head").exists()  # nothing formatted

    agent = Agent(rig.cfg, new_epoch=True)
    agent.forwarding_options = rig.forwarding
    rig.agent = agent.start()
    new_epoch = f"{agent.journal.epoch:016x}"
    assert new_epoch != old_epoch
    rig.emit(5)
    assert wait_for(lambda: rig.ledger_count() == 25, 10), rig.ledger_count()
    r = reconcile(rig.store)
    gw = r["gateways"]["gw-t"]
    assert gw["abandoned_epochs"] == [{"epoch": old_epoch, "acked_seq": 21,
                                       "new_epoch": new_epoch, "ledger_last_seq": 21}]
    assert ("epoch_abandoned", {"epoch": old_epoch, "acked_seq": 21}) in [
        (k, {f: d.get(f) for f in ("epoch", "acked_seq")}) for k, d in rig.incidents()]
    assert r["abandoned_epochs"] == 1
    assert f"epoch {old_epoch} ABANDONED" in format_report(r)
    rig.agent = None
    agent.stop()
    again = Agent(rig.cfg)  # the new epoch is this gateway's journal now
    again.forwarding_options = rig.forwarding
    rig.agent = again.start()
    assert f"{again.journal.epoch:016x}" == new_epoch


def test_run_without_new_epoch_exits_with_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    (tmp_path / "board.toml").write_text(
        '[board]\nname = "test board"\n[journal]\npath = "journal"\n'
        'segment_size = 4096\nsegment_count = 4\n')
    site.write_text('board_config = "board.toml"\n[gateway]\nid = "gw-l"\nsite = "lab"\n'
                    '[devices.scanner1]\ntype = "scanner"\nport = "loop://"\n'
                    'enabled = false\n')
    run = [sys.executable, "-c", "import sys; from midshift.firmware.__main__ import main; "
           "sys.exit(main(sys.argv[1:]))", "run", "--config", str(site)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(run, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (tmp_path / "journal.epoch").exists(), 10)
    first.terminate()
    assert first.wait(10) == 0
    _delete(tmp_path / "journal")
    r = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.startswith("error: journal lost: "), r.stderr
    assert "--new-epoch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "journal" / "journal.head").exists()
    again = subprocess.Popen([*run, "--new-epoch"], cwd=ROOT, env=env,
                             stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (tmp_path / "journal" / "journal.head").exists(), 10)
    time.sleep(0.5)
    again.terminate()
    assert again.wait(10) == 0
    assert again.stderr is not None and "starting a new epoch" in again.stderr.read()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    fs = tmp_path / "fs"
    fs.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_a_journal_that_does_not_fit_is_refused_in_one_line_leaving_nothing(
        tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match="does not fit") as err:
        FileStorage.create(tiny_fs / "journal", 65536, 64)  # 4 MiB on 1 MiB
    assert "\n" not in str(err.value)
    assert list(tiny_fs.iterdir()) == []
    # Free space that shrinks while formatting: the write fails, the files go.
    (tiny_fs / "journal").mkdir()
    filler = tiny_fs / "filler"
    free = shutil.disk_usage(tiny_fs).free
    storage_bytes = 4096 + 65536 * 8
    real_usage = shutil.disk_usage

    def shrinking(path: object) -> object:  # the check sees room; the writes find less
        u = real_usage(path)
        return type(u)(u.total, u.used, max(u.free, storage_bytes))
    filler.write_bytes(bytes(free - 200 * 1024))
    monkeypatch.setattr("midshift.firmware.edges.flash.shutil.disk_usage", shrinking)
    with pytest.raises(StorageError, match="nothing was left behind"):
        FileStorage.create(tiny_fs / "journal", 65536, 8)
    assert list((tiny_fs / "journal").iterdir()) == []
