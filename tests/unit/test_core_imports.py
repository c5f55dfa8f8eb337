"""The portable core imports only what MicroPython also has, and nothing from the edges."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "midshift" / "firmware" / "core"
ALLOWED = {"struct", "binascii", "hashlib", "json", "time", "os", "errno", "collections",
           "sys", "gc", "__future__", "typing"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_only_the_portable_subset(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        assert top in ALLOWED or name.startswith("midshift.firmware.core"), f"{path.name} imports {name}"


def test_core_has_no_runtime_dataclasses_or_enums() -> None:
    for path in CORE.glob("*.py"):
        text = path.read_text()
        assert "@dataclass" not in text and "(Enum)" not in text, path.name
