"""No thread dies silently: a crash in the forwarder loop is alarmed, counted and the loop
restarted, forwarding again; a loop that keeps crashing makes ``python -m midshift.firmware run``
exit non-zero. Writes outside the journal that fail on a full filesystem (a real tmpfs)
raise alarms and forwarding goes on; the journal itself refuses records while its
storage is full and takes them again when space returns."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.firmware.core.errors import StorageError
from midshift.simulator.lab import COMMAND_KEY, Lab, lab_config, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Lab]:
    r = Lab(tmp_path)
    yield r
    r.close()


def _command(rig: Lab, cmd_id: int, cmd: str, args: dict[str, Any] | None = None) -> None:
    """Publish a signed command to the lab gateway."""
    import paho.mqtt.publish as publish

    from midshift.firmware.core.commands import sign_command
    from midshift.firmware.core.signing import Signer

    payload = sign_command(Signer(COMMAND_KEY), "gw-t", cmd_id, cmd, args)
    publish.single("midshift/v1/lab/gw-t/cmd", payload, qos=1, hostname="127.0.0.1",
                   port=rig.broker.port)


def _alarms(rig: Lab) -> list[str]:
    assert rig.agent is not None
    return rig.agent.snapshot()["forwarding"]["alarms"]


def test_a_crash_in_the_forwarder_is_alarmed_and_the_loop_restarted(rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(10)
    assert wait_for(lambda: rig.ledger_count() == 10, 10)

    def boom() -> None:  # a carried-out action (reload-config) that raises
        raise RuntimeError("injected: reload handler failed")

    agent.forwarding.on_reload = boom
    _command(rig, 1, "reload-config")
    assert wait_for(lambda: agent.supervisor.stats().get("forwarder") == 1, 5)
    assert wait_for(lambda: "thread_forwarder" in _alarms(rig), 5), _alarms(rig)
    assert agent.snapshot()["thread_crashes"] == {"forwarder": 1}
    rig.emit(20)  # forwarding again after the restart
    assert wait_for(lambda: rig.ledger_count() == 30, 10), rig.ledger_count()
    assert agent.forwarding.alive() and agent.alive() and not agent.failed.is_set()
    codes = [json.loads(d)["code"] for d in rig.ledger_codes()]
    assert codes == [f"C{i:08d}" for i in range(1, 31)]


def test_the_watchdog_is_fed_only_while_the_forwarder_comes_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    rig = Lab(tmp_path, uplinks=1)  # before the env: mosquitto speaks sd_notify too
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    release = threading.Event()
    try:
        agent = rig.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        agent.forwarding.on_reload = lambda: release.wait(30)  # the loop hangs here
        notify.setblocking(False)

        def fed_within(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    if notify.recv(256) == b"WATCHDOG=1":
                        return True
                except BlockingIOError:
                    time.sleep(0.05)
            return False

        assert fed_within(2)
        _command(rig, 1, "reload-config")
        assert wait_for(lambda: not agent.alive(), 8)  # hung: no longer vouched for
        # Drain what was sent before it went stale: a feeder that judged the loop alive just
        # before it hung may send once more, late on a loaded machine; wait for quiet.
        quiet_until, stop = time.monotonic() + 0.6, time.monotonic() + 5
        while time.monotonic() < quiet_until:
            assert time.monotonic() < stop, "the hung agent kept feeding the watchdog"
            try:
                notify.recv(256)
                quiet_until = time.monotonic() + 0.6
            except BlockingIOError:
                time.sleep(0.05)
        assert not fed_within(1.5)
        release.set()
        assert wait_for(agent.alive, 3)
        assert fed_within(2)
    finally:
        release.set()
        rig.close()
        notify.close()


def _site(tmp: Path, port: int) -> Path:
    (tmp / "gw.key").write_text(bytes(range(32)).hex())
    (tmp / "board.toml").write_text("""
[board]
name = "test board"
[journal]
path = "journal"
segment_size = 4096
segment_count = 16
""")
    site = tmp / "site.toml"
    site.write_text(f"""
board_config = "board.toml"
[gateway]
id = "gw-crash"
site = "lab"
key_file = "{tmp / 'gw.key'}"
[devices.scanner1]
type = "scanner"
port = "loop://"
enabled = false
[uplinks.up0]
broker = "mqtt://127.0.0.1:{port}"
priority = 10
""")
    return site


CRASHING_RUN = """
import sys
from midshift.firmware.core import session
def poll(self, now_ms, wall_ms):
    raise RuntimeError("injected: the forwarder cannot go on")
session.LinkSession.poll = poll
from midshift.firmware.__main__ import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_a_loop_that_keeps_crashing_exits_the_process_non_zero(tmp_path: Path) -> None:
    site = _site(tmp_path, 9)  # no broker: the loop crashes on its own
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", CRASHING_RUN, str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1, r.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    assert "Traceback" in r.stderr and "injected: the forwarder cannot go on" in r.stderr
    assert r.stderr.count("thread forwarder crashed (") == 6  # 5 restarts, then it gave up
    assert "error: thread forwarder crashed 6 times" in r.stderr


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 6 MiB tmpfs (the journal takes 4 MiB of it)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(fs)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 4096):  # to the last page
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_alarms_failed_writes_and_forwarding_goes_on(tmp_path: Path,
                                                               small_fs: Path) -> None:
    rig = Lab(tmp_path)
    try:
        rig.cfg = lab_config(small_fs, [p.address[1] for p in rig.proxies])
        agent = rig.start_agent()
        assert wait_for(lambda: agent.forwarding.active == "up0", 10)
        rig.emit(10)
        assert wait_for(lambda: rig.ledger_count() == 10, 10)
        filler = _fill(small_fs)
        _command(rig, 1, "set-log-level", {"level": "INFO"})  # saving its id: ENOSPC
        assert wait_for(lambda: "command_id_write" in _alarms(rig), 5), _alarms(rig)
        n = 10
        while "sync_log_write" not in _alarms(rig):  # the sync log's last page fills up
            assert n < 1000, _alarms(rig)
            rig.emit(20)  # the journal is preallocated: it takes them, and they go out
            n += 20
            assert wait_for(lambda n=n: rig.ledger_count() == n, 10), rig.ledger_count()
        assert wait_for(lambda: "epoch_mark_write" in _alarms(rig), 5), _alarms(rig)
        assert agent.forwarding.alive() and agent.supervisor.stats() == {}
        filler.unlink()  # space returns: the features come back and the alarms clear
        _command(rig, 2, "set-log-level", {"level": "INFO"})
        assert wait_for(lambda: not {"command_id_write", "sync_log_write"} & set(_alarms(rig)),
                        5), _alarms(rig)
        assert (small_fs / "journal" / "last-command-id").read_text() == "2"
        rig.emit(5)
        assert wait_for(lambda: rig.ledger_count() == n + 5, 10)
        assert wait_for(lambda: "epoch_mark_write" not in _alarms(rig), 5), _alarms(rig)
    finally:
        rig.close()


class FullStorage:
    """The journal's storage with a switch: while ``full``, writes fail with ENOSPC (the
    files are preallocated, so a real filesystem says so only on copy-on-write flash)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.full = False

    def write(self, offset: int, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.inner.write(offset, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_full_journal_storage_refuses_records_and_resumes_when_space_returns(
        rig: Lab) -> None:
    agent = rig.start_agent()
    assert wait_for(lambda: agent.forwarding.active == "up0", 10)
    rig.emit(5)
    assert wait_for(lambda: rig.ledger_count() == 5, 10)
    storage = FullStorage(agent.journal.journal.storage)
    agent.journal.journal.storage = storage
    storage.full = True
    with pytest.raises(StorageError, match="storage full"):
        rig.emit(1)  # taken, not durable: written once space returns
    with pytest.raises(StorageError, match="refused until space returns"):
        rig.emit(1)
    assert wait_for(lambda: "journal_no_space" in _alarms(rig), 5), _alarms(rig)
    assert agent.forwarding.alive()
    storage.full = False
    assert wait_for(lambda: "journal_no_space" not in _alarms(rig), 5), _alarms(rig)
    rig.n = 7  # the refused one's number: the first, taken before the refusal, is C6
    rig.emit(3)
    assert wait_for(lambda: rig.ledger_count() == 9, 10), rig.ledger_count()
    codes = [json.loads(d)["code"] for d in rig.ledger_codes()]
    assert codes == [f"C{i:08d}" for i in (1, 2, 3, 4, 5, 6, 8, 9, 10)]
    assert wait_for(lambda: "journal_commit_write" not in _alarms(rig), 5), _alarms(rig)
    assert agent.supervisor.stats() == {}  # nothing crashed on the way


def test_a_crashed_driver_thread_is_alarmed_and_restarted(tmp_path: Path) -> None:
    from midshift.firmware.agent import Agent
    from midshift.firmware.edges.config_file import load_config
    from midshift.simulator.devices.modbus import ModbusPLC

    regs = [{"tag": "count", "address": 0, "type": "uint32", "behaviour": "counter",
             "period_ms": 50}]
    with ModbusPLC("plc1", regs) as plc:
        (tmp_path / "board.toml").write_text(
            '[board]\nname = "test board"\n[journal]\npath = "journal"\n'
            'segment_size = 65536\nsegment_count = 8\n')
        site = tmp_path / "site.toml"
        site.write_text(f'board_config = "board.toml"\n[gateway]\nid = "gw-d"\nsite = "lab"\n'
                        f'[devices.plc1]\ntype = "modbus"\nhost = "127.0.0.1"\n'
                        f'port = {plc.port}\npoll_ms = 50\n[[devices.plc1.registers]]\n'
                        f'tag = "count"\naddress = 0\ntype = "uint32"\n')
        agent = Agent(load_config(site)).start()
        try:
            drv = agent.drivers[0]
            assert wait_for(lambda: drv.status.counter("events") >= 3, 10)
            real_check = drv._check_stale  # type: ignore[attr-defined]

            def check_once_broken() -> None:  # a driver bug outside its per-poll guard
                drv._check_stale = real_check  # type: ignore[attr-defined]
                raise RuntimeError("injected: driver bug")

            drv._check_stale = check_once_broken  # type: ignore[attr-defined]
            assert wait_for(lambda: agent.supervisor.stats().get("driver-plc1") == 1, 5)
            assert "thread_driver-plc1" in agent.snapshot()["alarms"]
            assert wait_for(drv.alive, 5)  # restarted after the backoff
            seen = drv.status.counter("events")
            assert wait_for(lambda: drv.status.counter("events") >= seen + 5, 10)
            assert agent.snapshot()["thread_crashes"] == {"driver-plc1": 1}
        finally:
            agent.stop()
