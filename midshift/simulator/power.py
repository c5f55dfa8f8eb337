"""Power faults for whole processes: SIGKILL an agent (or a broker) at a chosen moment.

SIGKILL is the closest a process gets to a power cut: no handler runs, no buffer is
flushed, no socket is closed cleanly (the kernel resets them). ``kill_at`` schedules one
on a background thread and returns a ``PowerCut`` that can be cancelled or waited on;
``kill_randomly`` picks the moment from a seeded ``random.Random`` so a run replays.

Not modelled: what the kernel had not yet written to disk. A SIGKILLed process's
completed ``write`` calls survive in the page cache, which a real power cut may lose;
the lead's crash-simulating storage in the core covers torn and lost writes in process.
Brown-outs, and a kill landing between two particular instructions, are not modelled.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class PowerCut:
    """One scheduled SIGKILL: ``cancel()`` it, ``wait()`` for it, read what happened."""

    def __init__(self, process: subprocess.Popen, delay_s: float, group: bool = False) -> None:
        if delay_s < 0:
            raise ValueError(f"power cut delay_s {delay_s!r} must be >= 0")
        self.process = process
        self.delay_s = delay_s
        self.group = group
        self.fired = False  # True once SIGKILL was delivered
        self.fired_monotonic_s: float | None = None
        self.outcome = "pending"  # then: killed, cancelled, already exited
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"power-cut pid {process.pid}")
        self._thread.start()

    def _run(self) -> None:
        if self._cancel.wait(self.delay_s):  # the delay is the fault's timing, not a sync
            self.outcome = "cancelled"
        elif self.process.poll() is not None:
            self.outcome = "already exited"
        else:
            try:
                if self.group:
                    os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
                else:
                    self.process.send_signal(signal.SIGKILL)
                self.fired = True
                self.fired_monotonic_s = time.monotonic()
                self.outcome = "killed"
                log.info("power cut: SIGKILL pid %d after %.3f s", self.process.pid, self.delay_s)
            except ProcessLookupError:
                self.outcome = "already exited"
        self._done.set()

    def cancel(self) -> bool:
        """Call the cut off; True if it had not fired yet."""
        self._cancel.set()
        self._thread.join(timeout=5)
        return not self.fired

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the cut has fired, been cancelled or found the process gone."""
        return self._done.wait(timeout_s)


def kill_at(process: subprocess.Popen, delay_s: float, group: bool = False) -> PowerCut:
    """SIGKILL ``process`` after ``delay_s`` seconds; with ``group``, its whole process group
    (children too), which needs the process started with ``start_new_session=True``."""
    return PowerCut(process, delay_s, group)


def kill_randomly(process: subprocess.Popen, rng: random.Random, min_s: float, max_s: float,
                  group: bool = False) -> PowerCut:
    """SIGKILL ``process`` at a moment drawn uniformly from [min_s, max_s] by ``rng``."""
    if not 0 <= min_s <= max_s:
        raise ValueError(f"power cut window [{min_s}, {max_s}] s is not 0 <= min_s <= max_s")
    return PowerCut(process, rng.uniform(min_s, max_s), group)


def tear_journal_tail(directory: str | Path, rng: random.Random) -> dict[str, int]:
    """After a SIGKILL, leave what a power cut mid-write leaves: the first bytes of the
    next frame (a real header for the next seq, chained to the last frame, and part of a
    body) after the journal's last record, never over it. Those bytes were never reported
    durable, so nothing a device was told is lost; the agent must find the torn frame on
    its next start, report it and cut it off. Returns where and how much was written."""
    from midshift.firmware.core import record as rec
    from midshift.firmware.core.journal import DATA_START, Journal
    from midshift.firmware.edges.flash import FileStorage

    storage = FileStorage(directory)
    try:
        j = Journal.open(storage, repair=False)  # read only: no repair, no commit point
        body = b'{"v":1,"src":"torn","k":"scan","t":0,"d":{"code":"' + b"9" * 40 + b'"}}'
        frame = rec.encode_frame(rec.epoch_seed(j.epoch), rec.TYPE_RECORD, rec.TXN,
                                 j.next_seq, j.last_hlc + 1, j._last_crc, body)
        room = j.segment_size - j.head_pos % j.segment_size
        n = min(room, rng.randint(rec.HEADER_SIZE // 2, len(frame) - 1))
        storage.write(DATA_START + j.head_pos % j.data_size, frame[:n])
        storage.sync()
        return {"pos": j.head_pos, "bytes": n, "next_seq": j.next_seq}
    finally:
        storage.close()
