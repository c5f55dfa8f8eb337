"""Imports point one way (DESIGN.md, Seams): ``firmware`` imports neither ``host_tools``
nor ``simulator``; ``host_tools`` may import ``firmware`` but never ``simulator``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"firmware": ("host_tools", "simulator"), "host_tools": ("simulator",)}


def _part(module: str) -> str:
    """The part of midshift a module belongs to: ``firmware`` for ``midshift.firmware.core``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "midshift" and len(parts) > 1 else parts[0]


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(_part(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(_part(node.module))
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_against_the_seams(package: str) -> None:
    for path in sorted((ROOT / "midshift" / package).rglob("*.py")):
        wrong = _imported(path) & set(FORBIDDEN[package])
        assert not wrong, f"{path.relative_to(ROOT)} imports {', '.join(sorted(wrong))}"
