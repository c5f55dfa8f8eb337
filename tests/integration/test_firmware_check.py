"""`python -m midshift.firmware check` is as strict as `run`: each bad site file gives exit status 2
and one line naming the file, the key, the value and what is allowed; a good one gives 0.
`run` refuses the same files with the same line, before anything is created; only a
serial device that is absent (unplugged at boot) `run` starts without, as `check
--offline` accepts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges import preflight
from tests.integration.pki import make_pki

ROOT = Path(__file__).resolve().parents[2]

SITE = """board_config = "board.toml"
[gateway]
id = "gw-1"
site = "lab"
key_file = "gw.key"
command_key_file = "cmd.key"

[devices.scanner1]
type = "scanner"
port = "scanner"

[devices.scale1]
type = "scale"
port = "scale"
stale_s = 5.0

[uplinks.eth]
broker = "mqtt://127.0.0.1:1883"
priority = 10

[uplinks.lte]
broker = "mqtts://127.0.0.1:8883"
priority = 20
ca = "pki/ca.crt"
cert = "pki/gw1.crt"
key = "pki/gw1.key"
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A gateway's files: board and site, keys, a PKI, and two ptys as its serial ports."""
    ptys = [os.openpty() for _ in range(2)]
    ports = [os.ttyname(slave) for _, slave in ptys]
    (tmp_path / "board.toml").write_text(f"""[board]
name = "test board"
[serial]
scanner = "{ports[0]}"
scale = "{ports[1]}"
[journal]
path = "journal"
segment_size = 4096
segment_count = 16
""")
    (tmp_path / "site.toml").write_text(SITE)
    (tmp_path / "gw.key").write_text("11" * 32)
    (tmp_path / "cmd.key").write_text("22" * 32)
    (tmp_path / "pki").mkdir()
    make_pki(tmp_path / "pki")
    yield SimpleNamespace(dir=tmp_path, site=tmp_path / "site.toml", ports=ports)
    for fds in ptys:
        for fd in fds:
            os.close(fd)


def firmware(command: str, site: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midshift.firmware", command, "--config", str(site),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)


def edit(old: str, new: str) -> Callable[[SimpleNamespace], None]:
    def change(gw: SimpleNamespace) -> None:
        text = gw.site.read_text()
        assert old in text, old
        gw.site.write_text(text.replace(old, new, 1))
    return change


def test_a_good_site_is_ok(gateway: SimpleNamespace) -> None:
    r = firmware("check", gateway.site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("config ok: gateway gw-1 at site lab")
    assert gateway.ports[0] in r.stdout


def _alias(gw: SimpleNamespace) -> None:
    (gw.dir / "by-id-scanner").symlink_to(gw.ports[0])
    edit('port = "scale"', f'port = "{gw.dir / "by-id-scanner"}"')(gw)


def _empty_key(gw: SimpleNamespace) -> None:
    (gw.dir / "gw.key").write_text("")


MISSING_KEY = edit('key_file = "gw.key"', 'key_file = "nope.key"')
JOURNAL_64_TIB = edit("[devices.scanner1]", "[journal]\nsegment_size = 1073741824\n"
                      "segment_count = 65536\n\n[devices.scanner1]")

BAD = [
    # key files: missing, a directory, empty
    (MISSING_KEY, "gateway.key_file",
     "'{dir}/nope.key' does not exist; allowed: a readable file"),
    (edit('command_key_file = "cmd.key"', 'command_key_file = "pki"'),
     "gateway.command_key_file", "'{dir}/pki' is a directory"),
    (_empty_key, "gateway.key_file",
     "'{dir}/gw.key' is empty; allowed: the file python -m midshift.host_tools provision wrote"),
    # TLS files: missing, a certificate with another's key, a CA that is not one
    (edit('cert = "pki/gw1.crt"', 'cert = "pki/nope.crt"'), "uplinks.lte.cert",
     "'{dir}/pki/nope.crt' does not exist"),
    (edit('key = "pki/gw1.key"', 'key = "pki/rogue.key"'), "uplinks.lte.cert",
     "'{dir}/pki/gw1.crt' with key '{dir}/pki/rogue.key' does not load"),
    (edit('ca = "pki/ca.crt"', 'ca = "gw.key"'), "uplinks.lte.ca",
     "'{dir}/gw.key' does not load"),
    # serial lines: a mistyped board name, a device that is not there, two on one line
    (edit('port = "scanner"', 'port = "scaner"'), "devices.scanner1.port",
     "'scaner' is neither a [serial] name of the board (scale, scanner) nor a device path"),
    (edit('port = "scanner"', 'port = "/dev/serial/by-id/usb-nope-if00"'),
     "devices.scanner1.port", "'/dev/serial/by-id/usb-nope-if00' does not exist"),
    (edit('port = "scale"', 'port = "scanner"'), "devices.scale1.port",
     "is also devices.scanner1's; allowed: one device per serial line"),
    (_alias, "devices.scale1.port", "as devices.scanner1.port is; allowed: one device per "
     "serial line"),
    # numbers that are not
    (edit("stale_s = 5.0", "stale_s = inf"), "devices.scale1.stale_s",
     "inf is not a finite number"),
    (edit("stale_s = 5.0", "stale_s = nan"), "devices.scale1.stale_s",
     "nan is not a finite number"),
    # a journal larger than its disk: 64 TiB
    (JOURNAL_64_TIB, "journal.segment_count",
     "65536 x 1073741824 bytes (64.0 TiB) is larger than the filesystem of"),
    # two uplinks, one priority
    (edit("priority = 20", "priority = 10"), "uplinks.lte.priority",
     "10 is also uplinks.eth's"),
    # header typos name the site file, where they are
    (edit("[gateway]", "[gatway]"), "(top level).gatway", "is not a known key"),
    (edit("[devices.scale1]", "[device.scale1]"), "(top level).device", "is not a known key"),
    # and the style every error follows
    (edit("stale_s = 5.0", "baudrate = 9601"), "devices.scale1.baudrate",
     "9601 is not allowed; allowed: 1200, 2400, 4800, 9600, 19200"),
]


@pytest.mark.parametrize("change, key, words", BAD, ids=[f"{i}-{k}" for i, (_, k, _) in
                                                         enumerate(BAD)])
def test_a_bad_site_is_one_line_naming_file_key_and_value(
        gateway: SimpleNamespace, change: Callable[[SimpleNamespace], None], key: str,
        words: str) -> None:
    change(gateway)
    r = firmware("check", gateway.site)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"config error: {gateway.site}: {key}: "), r.stderr
    assert words.format(dir=gateway.dir) in r.stderr, r.stderr


def test_offline_checks_all_but_the_devices_being_there(gateway: SimpleNamespace) -> None:
    edit('port = "scanner"', 'port = "/dev/serial/by-id/usb-nope-if00"')(gateway)
    assert firmware("check", gateway.site).returncode == 2
    r = firmware("check", gateway.site, "--offline")
    assert r.returncode == 0, r.stderr
    edit('port = "scale"', 'port = "scael"')(gateway)  # a name is still checked offline
    r = firmware("check", gateway.site, "--offline")
    assert r.returncode == 2 and "devices.scale1.port: 'scael' is neither" in r.stderr


@pytest.mark.parametrize("change", [MISSING_KEY, JOURNAL_64_TIB], ids=["key_file", "journal"])
def test_run_refuses_what_check_refuses_with_the_same_line_and_creates_nothing(
        gateway: SimpleNamespace, change: Callable[[SimpleNamespace], None]) -> None:
    change(gateway)
    checked = firmware("check", gateway.site)
    ran = firmware("run", gateway.site)
    assert checked.returncode == ran.returncode == 2
    assert ran.stderr == checked.stderr and ran.stderr.startswith("config error: ")
    assert not (gateway.dir / "journal").exists()


def test_a_journal_that_does_not_fit_the_free_space_is_refused(
        gateway: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """statvfs of the nearest directory that exists: the journal's own is not made yet."""
    seen = []

    def statvfs(path: str | Path) -> SimpleNamespace:
        seen.append(Path(path))
        return SimpleNamespace(f_blocks=1000, f_frsize=4096, f_bavail=10)  # 40 KiB free

    monkeypatch.setattr(preflight.os, "statvfs", statvfs)
    with pytest.raises(ConfigError) as err:
        preflight.load_checked(gateway.site)
    assert seen == [gateway.dir]
    assert str(err.value) == (
        f"{gateway.dir / 'board.toml'}: journal.segment_count: 16 x 4096 bytes (68.0 KiB) "
        f"does not fit the 40.0 KiB free on '{gateway.dir}'; allowed: at most 9 segments of "
        "4096 bytes, or free space")


def test_a_formatted_journal_is_not_measured_again(gateway: SimpleNamespace,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (gateway.dir / "journal").mkdir()
    (gateway.dir / "journal" / "journal.head").write_bytes(bytes(4096))
    monkeypatch.setattr(preflight.os, "statvfs", lambda p: pytest.fail("measured"))
    assert preflight.load_checked(gateway.site).journal.segment_count == 16


def test_run_starts_without_an_unplugged_device_and_reads_the_others(
        gateway: SimpleNamespace) -> None:
    """The scanner's adapter is unplugged at boot: the journal still drains and the scale
    is still read; the scanner's driver waits for it (what check without --offline flags)."""
    edit('port = "scanner"', 'port = "/dev/serial/by-id/usb-unplugged-if00"')(gateway)
    agent = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config",
                              str(gateway.site), "--log-level", "WARNING"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (gateway.dir / "journal" / "journal.head").exists():
            assert agent.poll() is None, agent.communicate()[1]
            assert time.monotonic() < deadline, "the agent never formatted its journal"
            time.sleep(0.1)
        time.sleep(1.0)
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err[-2000:]
    assert "config error" not in err
    assert "usb-unplugged-if00" in err  # the driver says it cannot open it


def test_a_header_typo_in_the_board_file_names_the_board_file(gateway: SimpleNamespace) -> None:
    board = gateway.dir / "board.toml"
    board.write_text(board.read_text().replace("[journal]", "[jounral]"))
    r = firmware("check", gateway.site)
    assert r.returncode == 2
    assert r.stderr.startswith(f"config error: {board}: (top level).jounral: is not a known "
                               "key"), r.stderr


def test_check_shows_the_till_api_and_the_offline_sell_rules(tmp_path: Path) -> None:
    from bench.till_site import write_till_site
    site, _ = write_till_site(tmp_path / "gw", ["till-1"], port=8123, uplink_ports=(1883,),
                              rules={"offline_tenders": ["cash", "card"],
                                     "card_floor_limit": 2000, "txn_cap": 50000})
    out = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--config", str(site),
                          "--offline"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    tills = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("tills"))
    assert "Europe/Berlin" in tills and "127.0.0.1:8123" in tills and "tokens" in tills
    offline = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("offline"))
    assert "offline_tenders cash,card" in offline and "card_floor_limit 2000" in offline
    assert "txn_cap 50000" in offline and "None" not in offline
