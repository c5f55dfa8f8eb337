"""The offline install on a gateway, end to end for this machine's platform: a wheelhouse
for x86_64 and this Python (``host_tools wheelhouse``, which needs the package index:
marked ``network``, run by ``make test-network``), a bundle carrying it, flash.sh into a
fresh root directory, the bundle's install.sh with ``--root`` (the user from sysusers.d,
and again with useradd; the venv from the bundle's wheels with pip ``--no-index``; the
keys' owners and modes), then the unit's own ExecStart command line runs from that tree.

Without the network: install.sh refuses wheels built for another Python or machine, and
``bundle`` names the user's template (never its staging directory) in validation errors
and creates a missing parent of ``-o``."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.host_tools.__main__ import main as host_tools
from tests.integration.provisioned import provisioned_site

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "midshift/firmware/install.sh"
# The OS's Python, as on a gateway (a pyenv one under /root is not the service user's).
SYSTEM_PYTHON = "/usr/bin/python3"
PY = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    capture_output=True, text=True, timeout=30).stdout.strip()

TEMPLATE = """
[journal]
path = "journal"
[devices.scanner1]
type = "scanner"
port = "scanner"
[uplinks.eth]
broker = "mqtts://127.0.0.1:8883"
"""


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=240, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("install")
    s = provisioned_site(tmp / "site", ["init-site", "plant1"],
                         ["gateway", "gw-01", "--board", "sim"])
    (tmp / "template.toml").write_text(TEMPLATE)
    return {"tmp": tmp, "site": s, "template": tmp / "template.toml"}


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    """A root directory the midshift user can walk into (pytest's tmp is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="midshift-root-", dir="/var/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _bundle(site: dict[str, Path], out: Path, *extra: str) -> int:
    return host_tools(["bundle", "gw-01", "--board", "sim", "--site-dir", str(site["site"]),
                       "--config", str(site["template"]), "-o", str(out), *extra])


@pytest.fixture(scope="module")
def wheel_bundle(site: dict[str, Path]) -> Path:
    wheels = site["tmp"] / "wheels"
    assert host_tools(["wheelhouse", "--arch", os.uname().machine, "--python", PY,
                       "-o", str(wheels)]) == 0
    assert (wheels / "wheelhouse.json").exists()
    out = site["tmp"] / "bundle"
    assert _bundle(site, out, "--wheels", str(wheels)) == 0
    return out


def _flash(bundle: Path, target: Path) -> None:
    done = run("bash", str(ROOT / "flash.sh"), "--bundle", str(bundle), "--target", str(target))
    assert done.returncode == 0, done.stderr


def _exec_start(root: Path) -> list[str]:
    unit = (root / "etc/systemd/system/midshift.service").read_text()
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    return [str(root) + a if a.startswith("/") else a for a in argv]


def _ids(root: Path) -> tuple[int, int]:
    uid = next(int(ln.split(":")[2]) for ln in (root / "etc/passwd").read_text().splitlines()
               if ln.startswith("midshift:"))
    gid = next(int(ln.split(":")[2]) for ln in (root / "etc/group").read_text().splitlines()
               if ln.startswith("midshift:"))
    return uid, gid


def _assert_installed(root: Path) -> None:
    uid, gid = _ids(root)
    groups = (root / "etc/group").read_text()
    for g in ("dialout", "gpio"):
        line = next(ln for ln in groups.splitlines() if ln.startswith(f"{g}:"))
        assert "midshift" in line.split(":")[3].split(","), line
    keys = root / "etc/midshift/keys"
    st = keys.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o750)
    for k in keys.glob("*.key"):
        st = k.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o640), k
    assert not (root / "opt/midshift/midshift/firmware").exists()   # the agent is the wheel's
    argv = _exec_start(root)
    assert argv[0] == str(root / "opt/midshift/.venv/bin/python") and "run" in argv
    # The unit's command line, as the service's user: --help, then check in place of run.
    as_midshift = ["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's, not ours
    helped = subprocess.run([*as_midshift, *argv, "--help"], capture_output=True, text=True,
                            timeout=60, cwd=root / "opt/midshift", env=env)
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stderr
    check = [a if a != "run" else "check" for a in argv]
    checked = subprocess.run([*as_midshift, *check, "--offline"], capture_output=True,
                             text=True, timeout=60, cwd=root / "opt/midshift", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "config ok: gateway gw-01" in checked.stdout
    where = subprocess.run([argv[0], "-c", "import midshift.firmware; print(midshift.firmware.__file__)"],
                           capture_output=True, text=True, timeout=60, env=env,
                           cwd=root / "opt/midshift")
    assert "/opt/midshift/.venv/lib/" in where.stdout, where.stdout
    venv = root / "opt/midshift/.venv"
    for script in ("midshift-agent", "midshift", "midshift-sim"):
        version = run(str(venv / "bin" / script), "--version", env=env)
        assert version.stdout.startswith("midshift 0."), version
    boards = list(venv.glob("lib/python*/site-packages/midshift/board_configs/*.toml"))
    assert {"rpi4-eth-lte.toml", "cm4-dual-eth.toml", "sim.toml"} <= {b.name for b in boards}


@pytest.mark.network
def test_a_bundle_with_wheels_installs_offline_with_sysusers_and_runs_from_the_unit(
        wheel_bundle: Path, fresh_root: Path) -> None:
    _flash(wheel_bundle, fresh_root)
    assert (fresh_root / "usr/lib/sysusers.d/midshift.conf").exists()
    done = run("bash", str(fresh_root / "opt/midshift/install.sh"), "--root", str(fresh_root),
               "--python", SYSTEM_PYTHON)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "config ok" in done.stdout and "not started: --root" in done.stdout
    _assert_installed(fresh_root)
    assert (fresh_root / "etc/systemd/system/multi-user.target.wants/midshift.service").is_symlink()
    again = run("bash", str(fresh_root / "opt/midshift/install.sh"), "--root", str(fresh_root),
                "--python", SYSTEM_PYTHON)
    assert again.returncode == 0, again.stderr
    passwd = (fresh_root / "etc/passwd").read_text().splitlines()
    assert sum(ln.startswith("midshift:") for ln in passwd) == 1


@pytest.mark.network
def test_without_systemd_sysusers_the_user_comes_from_useradd(
        wheel_bundle: Path, fresh_root: Path) -> None:
    _flash(wheel_bundle, fresh_root)
    (fresh_root / "etc").mkdir(exist_ok=True)
    for f, line in (("passwd", "root:x:0:0:root:/root:/bin/bash\n"), ("group", "root:x:0:\n"),
                    ("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (fresh_root / "etc" / f).write_text(line)
    env = {**os.environ, "MIDSHIFT_SYSUSERS": ""}
    done = run("bash", str(fresh_root / "opt/midshift/install.sh"), "--root", str(fresh_root),
               "--python", SYSTEM_PYTHON, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "useradd" in done.stdout
    _assert_installed(fresh_root)


def test_install_refuses_wheels_for_another_python_or_machine(fresh_root: Path) -> None:
    (fresh_root / "opt/midshift/wheels").mkdir(parents=True)
    (fresh_root / "opt/midshift/wheels/wheelhouse.json").write_text(
        '{"python": "3.9", "arch": "armv7l", "wheels": {}}')
    (fresh_root / "etc/midshift").mkdir(parents=True)
    (fresh_root / "etc/midshift/site.toml").write_text("")
    done = run("bash", str(INSTALL), "--root", str(fresh_root), "--python", SYSTEM_PYTHON)
    assert done.returncode == 2
    assert f"Python {PY} on {os.uname().machine}" in done.stderr
    assert "wheels are for Python 3.9 on armv7l" in done.stderr
    assert not (fresh_root / "opt/midshift/.venv").exists()


def test_install_without_a_bundle_says_what_is_missing(fresh_root: Path) -> None:
    done = run("bash", str(INSTALL), "--root", str(fresh_root))
    assert done.returncode == 2 and "flash a bundle built with --wheels first" in done.stderr


def test_bundle_errors_name_the_template_and_missing_parents_are_created(
        site: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bad = site["tmp"] / "bad-template.toml"
    bad.write_text(TEMPLATE.replace('path = "journal"', 'path = "journal"\nsegment_count = 0'))
    assert host_tools(["bundle", "gw-01", "--board", "sim", "--site-dir", str(site["site"]),
                       "--config", str(bad), "-o", str(site["tmp"] / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "segment_count" in err, err
    assert ".bundle-" not in err and "Traceback" not in err
    deep = site["tmp"] / "not/yet/there/gw-01"
    assert _bundle(site, deep) == 0
    assert (deep / "manifest.json").exists()
    assert not list(deep.parent.glob(".bundle-*"))


def _fake_wheelhouse(tmp: Path) -> Path:
    """A wheelhouse as build_wheelhouse leaves it, without the index (contents not
    installable: for the bundle's layout and flash.sh's plan only)."""
    import hashlib
    import json
    wh = tmp / "fake-wheels"
    wh.mkdir(exist_ok=True)
    names = ["midshift-0.1.0-py3-none-any.whl", "pyserial-3.5-py2.py3-none-any.whl"]
    for n in names:
        (wh / n).write_bytes(n.encode())
    (wh / "wheelhouse.json").write_text(json.dumps({
        "arch": "aarch64", "python": "3.11",
        "wheels": {n: hashlib.sha256(n.encode()).hexdigest() for n in names}}))
    return wh


def test_a_bundle_with_wheels_carries_them_the_installer_and_no_source_tree(
        site: dict[str, Any]) -> None:
    out = site["tmp"] / "fake-wheel-bundle"
    assert _bundle(site, out, "--wheels", str(_fake_wheelhouse(site["tmp"]))) == 0
    root = out / "root"
    assert (root / "opt/midshift/wheels/midshift-0.1.0-py3-none-any.whl").is_file()
    assert (root / "opt/midshift/wheels/wheelhouse.json").is_file()
    assert (root / "opt/midshift/install.sh").stat().st_mode & 0o777 == 0o755
    assert "u midshift" in (root / "usr/lib/sysusers.d/midshift.conf").read_text()
    assert not (root / "opt/midshift/midshift/firmware").exists()
    import json
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["wheelhouse"] == {"arch": "aarch64", "python": "3.11"}
    plan = run("bash", str(ROOT / "flash.sh"), "--bundle", str(out), "--target",
               "ssh://pi@gw-01.local", "--sudo", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    last = plan.stdout.splitlines()[-1]
    assert "sudo -n sh -c" in last and last.endswith('/opt/midshift/install.sh"\'')


def test_a_changed_wheelhouse_is_refused(site: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    wh = _fake_wheelhouse(site["tmp"])
    (wh / "pyserial-3.5-py2.py3-none-any.whl").write_bytes(b"something else")
    assert _bundle(site, site["tmp"] / "refused", "--wheels", str(wh)) == 2
    err = capsys.readouterr().err
    assert "pyserial-3.5-py2.py3-none-any.whl is missing or changed" in err
    assert not (site["tmp"] / "refused").exists()
