"""The shipped scenarios' short runs, played in the background while the suite goes on.

A short run is mostly waiting (scenario time at a time scale, agents, broker and ledger
idling between events): played one after another they took seven minutes of the suite
while the CPU sat half idle. ``ShortRuns`` plays the runs the selected tests will read,
``PARALLEL`` at a time, from the start of the session; each test then judges its finished
run (``result(name)`` waits for it). Each run has its own report directory, ports and
processes, as it has when other runs share the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARALLEL = 2  # runs at once: two leave a core of the two for the tests in the foreground
LIMIT_S = 300  # one run's wall-clock limit (the longest takes under a minute alone)

ShortRun = tuple[subprocess.CompletedProcess, dict[str, Any], Path]


class ShortRuns:
    """``start(names)`` queues runs; ``result(name)`` waits for one (queued if it was not)."""

    def __init__(self, parallel: int = PARALLEL, limit_s: float = LIMIT_S) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="midshift-short-runs-")
        self._slots = threading.Semaphore(parallel)
        self._limit_s = limit_s
        self._lock = threading.Lock()
        self._done: dict[str, threading.Event] = {}
        self._runs: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}
        self._live: set[subprocess.Popen] = set()
        self._closed = False
        # The environment as the session began: a run is spawned from a background thread
        # while some test has changed os.environ (a NOTIFY_SOCKET of its own: the scenario's
        # agents would feed that test's watchdog socket), so never the one of the moment.
        self._env = {k: v for k, v in os.environ.items()
                     if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}

    def start(self, names: list[str]) -> None:
        for name in names:
            with self._lock:
                if name in self._done or self._closed:
                    continue
                self._done[name] = threading.Event()
            threading.Thread(target=self._play, args=(name,), name=f"short-{name}",
                             daemon=True).start()

    def result(self, name: str) -> ShortRun:
        self.start([name])
        # The wait covers the queue ahead of it as well as the run itself.
        if not self._done[name].wait(self._limit_s * (len(self._done) + 1)):
            raise AssertionError(f"short run {name} never finished")
        proc, report = self._runs[name]
        assert proc.stdout.strip(), f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
        return proc, json.loads(proc.stdout), report

    def close(self) -> None:
        """Stop runs still going (a run cut short by -x or Ctrl-C) and remove the files."""
        with self._lock:
            self._closed = True
            live = list(self._live)
        for p in live:
            _stop(p)
        self._tmp.cleanup()

    def _play(self, name: str) -> None:
        report = Path(self._tmp.name) / name
        cmd = [sys.executable, "-m", "midshift.simulator", "run", name, "--short", "--json",
               "--report", str(report)]
        try:
            with self._slots:
                with self._lock:
                    if self._closed:
                        return
                    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=self._env,
                                         stderr=subprocess.PIPE, text=True)
                    self._live.add(p)
                try:
                    out, err = p.communicate(timeout=self._limit_s)
                except subprocess.TimeoutExpired:
                    _stop(p)
                    out, err = p.communicate()
                    err += f"\n(short run {name}: stopped after its {self._limit_s:g} s limit)"
                with self._lock:
                    self._live.discard(p)
                self._runs[name] = (subprocess.CompletedProcess(cmd, p.returncode, out, err),
                                    report)
        except BaseException as exc:  # the waiting test reports it instead of hanging
            self._runs[name] = (subprocess.CompletedProcess(cmd, -1, "", repr(exc)), report)
        finally:
            self._done[name].set()


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM: the runner stops its children in order; SIGKILL if it does not within 60 s
    (its children then get their parent-death signal)."""
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
