"""docs/configuration.md lists every key the loader accepts, and no key it refuses; each
annotated example in midshift/board_configs/examples/ passes ``python -m midshift.firmware check``.

The accepted keys come from the loader's own tables, caught as it checks them: every table
is checked by ``config_fields.no_unknown_keys(table, path, known)`` (the core's sections,
each device type's ``validate_config``, Modbus registers, OPC UA nodes), so the test wraps
that function and records ``path -> known`` while loading the examples, the board files
and, for a section no example uses, a probe with one unknown key. The few tables checked
another way are taken from their constants (``site_config.DEVICE_KEYS``,
``gpio.PIN_KEYS``, ``site_config.SECTIONS``). In the document, a table's keys are the
rows ``| `key` |`` after its marker ``<!-- keys: PATH -->``.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import midshift.firmware.core.config_fields as config_fields
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import DEVICE_KEYS, SECTIONS, DeviceType, validate
from midshift.firmware.edges import device_types
from midshift.firmware.edges.config_file import load_config
from midshift.firmware.edges.gpio import PIN_KEYS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
EXAMPLES = sorted((ROOT / "midshift" / "board_configs" / "examples").glob("*.toml"))
FREE_FORM = ("serial", "interfaces")  # NAME = "..." tables: any name is a key
TOP_LEVEL_EXTRA = ("board_config",)   # read (and removed) by config_file before validate


def documented() -> dict[str, set[str]]:
    """Marker path -> the keys in the rows of its section."""
    out: dict[str, set[str]] = {}
    current: str | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"<!-- keys: (.+?) -->", line)
        if m:
            current = m.group(1)
            out.setdefault(current, set())
            continue
        m = re.match(r"\| `([A-Za-z_][A-Za-z0-9_]*)` \|", line)
        if m and current is not None:
            out[current].add(m.group(1))
    return out


def _normal(path: str, types: dict[str, str]) -> str:
    """``devices.plc1.registers[2]`` -> ``devices.modbus.registers[]``."""
    parts = re.sub(r"\[\d+\]", "[]", path).split(".")
    if parts[0] == "devices" and len(parts) > 1:
        parts[1] = types.get(parts[1].removesuffix("[]"), parts[1])
    elif parts[0] in ("uplinks", "uart") and len(parts) > 1:
        parts[1] = "NAME"
    return ".".join(parts)


class Recorder:
    """Wraps ``no_unknown_keys`` wherever it was imported: path -> known keys."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[str, set[str]] = {}
        self.types: dict[str, str] = {}
        original = config_fields.no_unknown_keys

        def spy(table: Any, path: str, known: Any) -> None:
            self.seen.setdefault(_normal(path, self.types), set()).update(known)
            original(table, path, known)

        for module in list(sys.modules.values()):
            if getattr(module, "no_unknown_keys", None) is original:
                monkeypatch.setattr(module, "no_unknown_keys", spy)

    def load(self, site: Path) -> None:
        import tomllib
        doc = tomllib.loads(site.read_text(encoding="utf-8"))
        self.types.update({n: t.get("type") for n, t in doc.get("devices", {}).items()})
        load_config(site)

    def probe(self, section: str, doc: dict[str, Any]) -> None:
        """Validate ``doc`` with an unknown key in ``section``: its check records the
        section's known keys, then refuses the probe."""
        doc = {k: dict(v) for k, v in doc.items()}
        doc.setdefault(section, {})["no_such_key_probe"] = 1
        with pytest.raises(ConfigError):
            validate(doc, {"x": DeviceType("txn", lambda n, t, p: t)})


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[Path]:
    """The examples, copied beside the key files they name (provision writes real ones)."""
    d = tmp_path / "examples"
    shutil.copytree(ROOT / "midshift" / "board_configs" / "examples", d)
    (d / "keys").mkdir()
    for name in ("gateway.key", "host-cmd.key"):
        (d / "keys" / name).write_text(secrets.token_hex(32))
    yield d


def test_every_device_type_has_an_example_and_a_section() -> None:
    doc = documented()
    for dtype in device_types.known():
        assert (ROOT / "midshift" / "board_configs" / "examples" / f"{dtype}.toml").exists(), dtype
        assert f"devices.{dtype}" in doc, f"docs/configuration.md: no section for {dtype}"


@pytest.mark.parametrize("example", [p.name for p in EXAMPLES])
def test_example_passes_firmware_check(examples: Path, example: str) -> None:
    p = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--offline", "--config",
                        str(examples / example)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("config ok:"), p.stdout


def test_every_accepted_key_is_documented_and_no_other(examples: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(monkeypatch)
    for example in sorted(examples.glob("*.toml")):
        rec.load(example)
    base = {"gateway": {"id": "g", "site": "s"}, "board": {"name": "b"},
            "journal": {"path": "/tmp/j"}, "devices": {"d": {"type": "x"}}}
    till = base | {"store": {"id": "s1", "tz": "UTC"},
                   "till_api": {"tokens_file": "/tmp/t.json"}}
    for section in SECTIONS:  # a section no example uses is probed
        if section in ("devices", "uplinks", "uart", "pins", *FREE_FORM):
            continue
        rec.probe(section, till if section in ("store", "till_api", "sell_rules") else base)
    rec.probe("uplinks", base | {"uplinks": {"u": {"broker": "mqtt://h:1"}}})
    rec.probe("uart", base | {"uart": {"u0": {"id": 0}}})
    rec.seen["uplinks.NAME"] = rec.seen.pop("uplinks.u", set()) | rec.seen.get(
        "uplinks.NAME", set())
    rec.seen["uart.NAME"] = rec.seen.pop("uart.u0", set()) | rec.seen.get("uart.NAME", set())
    rec.seen["(top level)"] |= set(TOP_LEVEL_EXTRA)
    rec.seen["devices.NAME"] = set(DEVICE_KEYS)
    rec.seen["pins"] = set(PIN_KEYS)
    for section in FREE_FORM:
        rec.seen[section] = {"NAME"}
    doc = documented()
    missing = {path: sorted(keys - doc.get(path, set())) for path, keys in rec.seen.items()
               if keys - doc.get(path, set())}
    assert not missing, f"keys the loader accepts, not in docs/configuration.md: {missing}"
    extra = {path: sorted(keys - rec.seen.get(path, set())) for path, keys in doc.items()
             if keys - rec.seen.get(path, set())}
    assert not extra, f"docs/configuration.md lists keys the loader refuses: {extra}"
    assert set(SECTIONS) <= doc["(top level)"], "a section without a row at the top level"
    for section in SECTIONS:
        assert any(p == section or p.startswith(section + ".") for p in doc), section
