"""The MicroPython node, measured: throughput and live heap under real MicroPython, flash
wear and power cuts over a real littlefs, and the compiled size of what goes on a board.

- ``events_per_s``, ``heap_peak_kib``: ``bench/node_runner/node_loop.py`` (the node's
  whole step: fake UART -> pipeline -> journal -> batcher -> HMAC signer -> umqtt uplink
  with a fake client -> a fake broker that acknowledges each batch like the ledger ->
  commit and reclaim) for ``EVENTS`` scans under the official MicroPython WebAssembly
  port (npm ``@micropython/micropython-webassembly-pyscript``, run by node in
  ``bench/node_runner/run.mjs``), loading the same ``.mpy`` files the bundle ships.
  The live heap is read from the top level after every ``SLICE`` steps (see
  ``HEAP_METHOD``); the journal's in-memory flash is subtracted, everything else counts.
- ``flash_bytes_per_event``, ``erase_cycles_per_block_per_day``: ``bench/node_flash.py``,
  the node's loop on CPython over littlefs configured as on a Pico W, at one event per
  second; ``days_to_rated_cycles`` until the most-erased block reaches 100,000 cycles.
- ``power_cut_trials``/``power_cut_losses``: power cut after every flash program or erase
  of a littlefs trace; a loss is a record that was durable and not yet acknowledged by the
  ledger missing (or changed) after the node reopens its journal.
- ``mpy_bytes``: the compiled core and node (``host_tools.mpy_bundle.sources``).

The baselines in the same run: ``heap_empty_kib`` (the interpreter alone) and
``heap_import_kib`` (the node's modules imported, nothing built).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import node_flash
from host_tools.mpy_bundle import compile_module, sources

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "bench" / "node_runner"
EVENTS = 10_000
SLICE = 1         # heap read after every step
THROUGHPUT_SLICE = 100  # the throughput run collects every 100 steps, as a heap fills
HEAP_BYTES = 1 << 20
HEAP_TARGET_KIB = 64
HEAP_METHOD = ("live heap = gc.mem_alloc() read from the top level of the MicroPython "
               "WebAssembly port after a top-level gc.collect() after every step (the port "
               "collects only there, with no Python frame on its stack, so only reachable "
               "objects remain), minus the in-memory journal flash; it includes the "
               "bytecode of every imported .mpy, which a board also loads into RAM unless "
               "the modules are frozen")


class RunnerMissing(RuntimeError):
    pass


def stage(tmp: Path) -> tuple[Path, int]:
    """The tree the port imports from: the bundle's .mpy files and the loop; their size."""
    total = 0
    for src, rel in sources():
        out = tmp / rel
        compile_module(src, out)
        total += out.stat().st_size
    compile_module(RUNNER / "node_loop.py", tmp / "node_loop.mpy")
    return tmp, total


def run_micropython(tree: Path, events: int, slice_steps: int = SLICE, leak: bool = False,
                    heap_bytes: int = HEAP_BYTES, timeout_s: float = 900) -> dict[str, Any]:
    if shutil.which("node") is None or not (RUNNER / "node_modules").is_dir():
        raise RunnerMissing("the MicroPython WebAssembly runner is not installed: "
                            "apt-get install nodejs npm; npm ci --prefix bench/node_runner")
    args = ["node", str(RUNNER / "run.mjs"), str(tree), str(heap_bytes), str(events),
            str(slice_steps)] + (["leak"] if leak else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"run.mjs failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out.get("ok"):
        raise RuntimeError(f"the node loop failed under MicroPython: {out.get('error')}")
    return out


def heap_figures(out: dict[str, Any]) -> dict[str, Any]:
    """Live heap in KiB: the node's, without the journal's in-memory flash."""
    storage = out["loop"]["storage_heap"]
    live = [m - storage for m in out["live"]]
    kib = 1024
    return {"heap_peak_kib": round(max(live) / kib, 1),
            "heap_end_kib": round(live[-1] / kib, 1),
            "heap_after_setup_kib": round((out["heap_after_setup"] - storage) / kib, 1),
            "heap_empty_kib": round(out["heap_empty"] / kib, 1),
            "heap_import_kib": round(out.get("heap_after_import", 0) / kib, 1),
            "heap_step_bound_kib": round((max(out["slice_alloc"]) - storage) / kib, 1)
            if out.get("slice_alloc") else None}


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    events = 1000 if quick else EVENTS
    with tempfile.TemporaryDirectory() as tmp:
        tree, mpy_bytes = stage(Path(tmp))
        out = run_micropython(tree, events)
        speed = run_micropython(tree, events, THROUGHPUT_SLICE)
    heap = heap_figures(out)
    loop = out["loop"]
    say(f"{events} events under MicroPython in {speed['loop_s']:.1f} s; "
        f"{loop['batches']} batches, {loop['events_acked']} acknowledged; heap {heap}")
    result: dict[str, Any] = {
        "events_per_s": round(events / speed["loop_s"]),
        "events": events, **heap, "heap_target_kib": HEAP_TARGET_KIB,
        "heap_method": HEAP_METHOD, "mpy_bytes": mpy_bytes,
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
