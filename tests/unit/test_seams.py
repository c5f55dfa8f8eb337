"""Imports point one way (DESIGN.md, Seams): ``firmware`` imports neither ``host_tools``
nor ``simulator``; ``host_tools`` may import ``firmware`` but never ``simulator``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"firmware": ("host_tools", "simulator"), "host_tools": ("simulator",)}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_against_the_seams(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = _imported(path) & set(FORBIDDEN[package])
        assert not wrong, f"{path.relative_to(ROOT)} imports {', '.join(sorted(wrong))}"
