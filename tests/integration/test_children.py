"""midshift/simulator/children.py: a spawned child dies with the simulator (parent-death signal),
and not with the thread that asked for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from midshift.simulator import children

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:  # a zombie has exited: only its parent (init, here) has not reaped it yet
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)  # the kernel delivers the signal; nothing to wait on
    return False


def test_a_child_outlives_the_thread_that_spawned_it() -> None:
    got: list[subprocess.Popen] = []
    t = threading.Thread(target=lambda: got.append(children.spawn(["sleep", "30"])))
    t.start()
    t.join()
    (proc,) = got
    time.sleep(0.3)  # long enough for a thread-bound parent-death signal to have landed
    assert proc.poll() is None, "killed when its spawning thread ended"
    assert proc in children.live()
    proc.terminate()
    proc.wait(5)
    assert proc not in children.live()


def test_a_child_dies_when_the_simulator_is_killed() -> None:
    code = textwrap.dedent("""
        import time
        from midshift.simulator import children
        p = children.spawn(["sleep", "60"])
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    os.kill(pid, 0)  # running
    parent.send_signal(signal.SIGKILL)
    parent.wait(5)
    assert _gone(pid, 5), "the child outlived its SIGKILLed parent"
