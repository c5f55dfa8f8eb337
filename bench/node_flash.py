"""The MicroPython node's journal over a real littlefs, as a Raspberry Pi Pico W formats
its flash: wear per event, and power cuts at every write.

The filesystem is littlefs 2 from the ``littlefs-python`` package (the C library behind
MicroPython's ``os.VfsLfs2``) on an in-memory block device configured like the Pico W's:
MicroPython's rp2 port makes a littlefs of 848 KiB (212 blocks of 4096 bytes) with
``progsize=256`` (``ports/rp2/modules/_boot.py``), and ``extmod/vfs_lfsx.c`` sets
``read_size`` 32, ``cache_size`` 4 x max(read, prog) = 1024, ``lookahead`` 32 bytes and
``block_cycles`` 100. The node's own ``midshift/firmware/mpy/flash_storage.py`` runs unchanged on
it: its module-level ``os`` and ``open`` are pointed at the littlefs for the run.

``WearDevice`` counts every erase per block and every byte programmed, and can keep the
trace of programs and erases; ``image_at(k)`` rebuilds the flash as a power cut after the
k-th of them would leave it (a cut inside a program or erase is not modelled: NOR flash
programs a page in well under a millisecond and littlefs checks every commit's CRC).

Not modelled: the RP2040's XIP cache and the time an erase takes (45 ms typical), the
flash chip's own wear levelling (none on the Pico W's W25Q16JV), read disturb.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from littlefs import LittleFS, LittleFSError, UserContext

BLOCK_SIZE = 4096
BLOCK_COUNT = 212  # 848 KiB: the Pico W's filesystem (2 MiB flash less the firmware)
LFS_CONFIG = {"block_size": BLOCK_SIZE, "block_count": BLOCK_COUNT, "read_size": 32,
              "prog_size": 256, "cache_size": 1024, "lookahead_size": 32,
              "block_cycles": 100}
RATED_CYCLES = 100_000  # W25Q16JV datasheet: minimum 100,000 program/erase cycles


class WearDevice(UserContext):
    """littlefs's block device in RAM, counting erases (per block) and programmed bytes."""

    def __init__(self, image: bytes | None = None, trace: bool = False) -> None:
        size = BLOCK_SIZE * BLOCK_COUNT
        super().__init__(buffer=bytearray(image) if image is not None
                         else bytearray(b"\xff" * size))
        self.erases = [0] * BLOCK_COUNT
        self.prog_bytes = 0
        self.trace: list[tuple[int, int, bytes | None]] | None = [] if trace else None

    def prog(self, cfg: Any, block: int, off: int, data: bytes) -> int:
        self.prog_bytes += len(data)
        if self.trace is not None:
            self.trace.append((block, off, bytes(data)))
        return super().prog(cfg, block, off, data)

    def erase(self, cfg: Any, block: int) -> int:
        self.erases[block] += 1
        if self.trace is not None:
            self.trace.append((block, 0, None))
        return super().erase(cfg, block)

    def reset_counts(self) -> None:
        self.erases = [0] * BLOCK_COUNT
        self.prog_bytes = 0
        if self.trace is not None:
            self.trace = []


def apply(image: bytearray, op: tuple[int, int, bytes | None]) -> None:
    """One traced program or erase onto a flash image."""
    block, off, data = op
    start = block * BLOCK_SIZE + off
    if data is None:
        image[start:start + BLOCK_SIZE] = b"\xff" * BLOCK_SIZE
    else:
        image[start:start + len(data)] = data


def mount(device: WearDevice, format_first: bool = False) -> LittleFS:
    fs = LittleFS(context=device, mount=False, **LFS_CONFIG)
    if format_first:
        fs.format()
    fs.mount()
    return fs


class LfsOs:
    """The few ``os`` calls flash_storage.py makes (``stat``, ``mkdir``, ``urandom``), on
    a littlefs; ``stat`` returns MicroPython's 10-tuple (size at index 6)."""

    def __init__(self, fs: LittleFS) -> None:
        self.fs = fs

    def stat(self, path: str) -> tuple[int, ...]:
        try:
            st = self.fs.stat(path)
        except Exception as exc:  # littlefs-python raises LittleFSError (ENOENT)
            raise OSError(2, str(exc)) from None
        return (0, 0, 0, 0, 0, 0, st.size, 0, 0, 0)

    def mkdir(self, path: str) -> None:
        try:
            self.fs.mkdir(path)
        except Exception as exc:
            raise OSError(17, str(exc)) from None

    def rename(self, old: str, new: str) -> None:
        self.fs.rename(old, new)

    def remove(self, path: str) -> None:
        self.fs.remove(path)

    def listdir(self, path: str) -> list[str]:
        return self.fs.listdir(path)

    urandom = staticmethod(os.urandom)


@contextlib.contextmanager
def on_littlefs(fs: LittleFS) -> Iterator[Any]:
    """flash_storage.py with its ``os`` and ``open`` pointed at ``fs`` (and no fsync); its
    first-boot part, ``flash_format.py``, goes through them too."""
    from midshift.firmware.mpy import flash_storage
    saved = (flash_storage.os, getattr(flash_storage, "open", None), flash_storage._fsync)
    flash_storage.os = LfsOs(fs)  # type: ignore[assignment]
    def lfs_open(path: str, mode: str = "r") -> Any:
        try:
            return fs.open(path, mode, buffering=0)
        except LittleFSError as exc:  # MicroPython raises OSError(errno)
            raise OSError(abs(getattr(exc, "code", 5)), str(exc)) from None

    flash_storage.open = lfs_open  # type: ignore[attr-defined]
    flash_storage._fsync = None
    try:
        yield flash_storage
    finally:
        flash_storage.os = saved[0]
        if saved[1] is None:
            del flash_storage.open  # type: ignore[attr-defined]
        else:
            flash_storage.open = saved[1]  # type: ignore[attr-defined]
        flash_storage._fsync = saved[2]


NODE_LOOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_runner",
                         "node_loop.py")
JOURNAL_DIR = "journal"
SEGMENT_SIZE = 4096   # midshift/board_configs/pico-w.toml [journal]
SEGMENT_COUNT = 64
MAX_BODY = 1024


def load_node_loop() -> Any:
    """A fresh copy of the benchmark's node loop (its state is module-global)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("node_loop", NODE_LOOP)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    # registered, so the harness's setup (node_build.py, which imports node_loop) gets
    # this copy, as it does in MicroPython
    sys.modules["node_loop"] = mod
    spec.loader.exec_module(mod)
    return mod


def open_journal(fs: LittleFS) -> Any:
    """What the node does at boot (``main.build``): open the journal, formatting it the
    first time."""
    from midshift.firmware.mpy.flash_format import open_or_create_journal
    with on_littlefs(fs):
        return open_or_create_journal(JOURNAL_DIR, SEGMENT_SIZE, SEGMENT_COUNT,
                                      "door3-scale", 0, MAX_BODY, epoch=0x5EED)


class WearRun:
    """The node's whole loop (fake UART and broker, real journal on littlefs) at one
    event per second of its clock; ``marks`` pairs trace positions with what the node
    had made durable and what the ledger had acknowledged by then."""

    def __init__(self, trace: bool = False, status_period_ms: int = 10_000) -> None:
        self.device = WearDevice(trace=trace)
        self.fs = mount(self.device, format_first=True)
        self.loop = load_node_loop()
        with on_littlefs(self.fs):
            self.journal = open_journal(self.fs)
            self.loop.setup(journal=self.journal, status_period_ms=status_period_ms)
        self.node = self.loop.state["node"]
        self.broker = self.loop.state["broker"]
        self.bodies: dict[int, bytes] = {}
        self.marks: list[tuple[int, int, int]] = []  # (trace length, durable, acked)
        self._hook()
        self.base = bytes(self.device.buffer)
        self.device.reset_counts()

    def _hook(self) -> None:
        journal, run = self.journal, self
        flush, commit, append = journal.flush, journal.commit, journal.append

        def mark() -> None:
            if run.device.trace is not None:
                run.marks.append((len(run.device.trace), journal.durable_seq,
                                  journal.committed_seq))

        def hooked_append(body: bytes, *a: Any, **kw: Any) -> Any:
            seq = journal.next_seq
            out = append(body, *a, **kw)
            run.bodies[seq] = bytes(body)
            return out

        def hooked_flush() -> Any:
            out = flush()
            mark()
            return out

        def hooked_commit(*a: Any, **kw: Any) -> Any:
            out = commit(*a, **kw)
            mark()
            return out

        journal.append, journal.flush, journal.commit = hooked_append, hooked_flush, hooked_commit

    def run(self, events: int) -> None:
        with on_littlefs(self.fs):
            self.loop.run(events, step_ms=1000)

    def figures(self, events: int) -> dict[str, Any]:
        worst = max(self.device.erases)
        per_day = worst / events * 86_400  # at one event per second
        total = sum(self.device.erases)
        return {"flash_bytes_per_event": round(self.device.prog_bytes / events),
                "erases_per_event": round(total / events, 2),
                "erase_cycles_per_block_per_day": round(per_day),
                "erase_cycles_per_block_per_day_mean": round(
                    total / BLOCK_COUNT / events * 86_400),
                "days_to_rated_cycles": round(RATED_CYCLES / per_day) if per_day else None}


def recovered_ok(run: WearRun, image: bytes, durable: int, acked: int) -> str | None:
    """None if the journal on ``image`` still holds every record that was durable and not
    yet acknowledged by the ledger, with its body; else what is wrong."""
    try:
        fs = mount(WearDevice(image))
    except Exception as exc:  # noqa: BLE001 - a filesystem that does not mount lost all
        return f"littlefs does not mount: {exc!r}"
    with on_littlefs(fs):
        try:
            journal = open_journal(fs)
        except Exception as exc:  # noqa: BLE001 - the node would not boot
            return f"the journal does not open: {exc!r}"
        try:
            return _check(run, journal, durable, acked)
        finally:
            journal.close()  # before the filesystem goes: littlefs-python frees files late


def _check(run: WearRun, journal: Any, durable: int, acked: int) -> str | None:
    if journal.durable_seq < durable:
        return f"durable seq {journal.durable_seq} < {durable}"
    if journal.tail_seq > acked + 1:
        return f"tail {journal.tail_seq} past the ledger's ack {acked}"
    want = journal.tail_seq
    for r in journal.records():
        if r.seq > durable:
            break
        if r.seq != want or bytes(r.body) != run.bodies.get(r.seq):
            return f"seq {r.seq}: expected {want} or a different body"
        want += 1
    if want <= durable:
        return f"records {want}..{durable} missing"
    return None


def power_cut_trials(events: int, every: int = 1) -> dict[str, Any]:
    """Run ``events`` with the trace on, then cut power after every ``every``-th program
    or erase of it and check the journal at each cut."""
    run = WearRun(trace=True)
    run.run(events)
    acked_by = ledger_acks(run)
    trace = run.device.trace or []
    image = bytearray(run.base)
    marks = run.marks
    m = 0
    durable = acked = 0
    failures: list[str] = []
    trials = 0
    for k, op in enumerate(trace):
        apply(image, op)
        while m < len(marks) and marks[m][0] <= k + 1:
            durable, _committed = marks[m][1], marks[m][2]
            m += 1
        if (k + 1) % every:
            continue
        acked = acked_by(k + 1)
        trials += 1
        why = recovered_ok(run, bytes(image), durable, acked)
        if why is not None:
            failures.append(f"cut after write {k + 1}: {why}")
    return {"power_cut_trials": trials, "power_cut_losses": len(failures),
            "power_cut_failures": failures[:5], "trace_writes": len(trace)}


def ledger_acks(run: WearRun) -> Any:
    """The highest seq the ledger had acknowledged by each trace position: the journal
    commits only what an ack covered, so a commit under way at a position was for an ack
    already sent, and the committed seq at the next mark is what the ledger had."""
    marks = run.marks

    def acked(position: int) -> int:
        best = 0
        for pos, _durable, committed in marks:
            if pos > position:
                # the commit under way at ``position`` was for an ack the ledger sent
                return max(best, committed)
            best = committed
        return best
    return acked
