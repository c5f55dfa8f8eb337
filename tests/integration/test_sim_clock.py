"""Clock faults: SimClock's skew, jumps and drift, exact against an injected host clock;
the file-controlled clock following them in this process and in another one; monotonic
time untouched throughout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.firmware.core.hlc import HybridLogicalClock, physical_ms
from midshift.firmware.edges.clock import (
    ClockControl,
    FileControlledClock,
    SystemClock,
    host_monotonic_ms,
    host_wall_ms,
)
from midshift.simulator.clock import SimClock, site_offset_ms, write_control

ROOT = Path(__file__).resolve().parents[2]
T0_MS = 1_700_000_000_000


class HostTime:
    """A host clock the test moves by hand, so drift arithmetic is checked exactly."""

    def __init__(self) -> None:
        self.wall_ms = T0_MS
        self.mono_ms = 5_000

    def advance(self, ms: int) -> None:
        self.wall_ms += ms
        self.mono_ms += ms


@pytest.fixture
def host() -> HostTime:
    return HostTime()


@pytest.fixture
def clock(host: HostTime) -> SimClock:
    return SimClock(host_wall=lambda: host.wall_ms, host_monotonic=lambda: host.mono_ms)


def test_skew_offsets_the_wall_clock_only(clock: SimClock, host: HostTime) -> None:
    clock.skew(-1500)
    assert clock.now_ms() == T0_MS - 1500
    host.advance(1000)
    assert clock.now_ms() == T0_MS + 1000 - 1500
    assert clock.monotonic_ms() == host.mono_ms
    clock.skew(250)  # skew is absolute, not cumulative
    assert clock.now_ms() - host.wall_ms == 250


@pytest.mark.parametrize("delta_ms", [3_600_000, -3_600_000, -1])
def test_jump_moves_the_wall_clock_at_once_and_monotonic_not_at_all(
        clock: SimClock, host: HostTime, delta_ms: int) -> None:
    before_wall, before_mono = clock.now_ms(), clock.monotonic_ms()
    clock.jump(delta_ms)
    assert clock.now_ms() == before_wall + delta_ms
    assert clock.monotonic_ms() == before_mono
    clock.jump(delta_ms)  # jumps add up
    assert clock.now_ms() == before_wall + 2 * delta_ms
    host.advance(10)
    assert clock.monotonic_ms() == before_mono + 10


def test_drift_accumulates_at_its_rate_and_changes_continuously(
        clock: SimClock, host: HostTime) -> None:
    clock.drift(200)  # +200 ppm: 200 us per second
    host.advance(10_000)
    assert clock.now_ms() == host.wall_ms + 2  # 10 s x 200 ppm = 2 ms
    host.advance(990_000)
    assert clock.offset_ms == 200  # 1000 s x 200 ppm
    clock.drift(-100)  # a new rate continues from the current reading, no step
    assert clock.offset_ms == 200
    host.advance(1_000_000)
    assert clock.offset_ms == 100
    clock.jump(-50)
    assert clock.offset_ms == 50
    clock.reset()
    assert clock.now_ms() == host.wall_ms and clock.monotonic_ms() == host.mono_ms


def test_the_hlc_never_goes_back_when_the_sim_clock_jumps_back(
        clock: SimClock, host: HostTime) -> None:
    hlc = HybridLogicalClock(clock.now_ms)
    before = hlc.now()
    clock.jump(-60_000)
    host.advance(1)
    after = hlc.now()
    assert after > before and physical_ms(after) == physical_ms(before)


# ---- the file-controlled clock --------------------------------------------------------------

def test_a_site_clock_is_the_base_faults_start_from(host: HostTime) -> None:
    """A scenario's [clock]: one offset that makes the clock read an instant a given time
    from now; skew and reset are relative to it, jumps and drift add to it."""
    target = 1_792_890_000_000  # 2026-10-25T03:00:00+02:00
    base = site_offset_ms(target, 18.0, host.wall_ms)
    clock = SimClock(host_wall=lambda: host.wall_ms, host_monotonic=lambda: host.mono_ms,
                     base_ms=base)
    host.advance(18_000)
    assert clock.now_ms() == target
    clock.skew(3_600_000)
    assert clock.now_ms() == target + 3_600_000
    clock.jump(-1000)
    assert clock.now_ms() == target + 3_599_000
    clock.reset()
    assert clock.now_ms() == target and clock.offset_ms == base


def test_file_controlled_clock_follows_the_sim_clocks_file(tmp_path: Path) -> None:
    path = tmp_path / "gw1.clock.json"
    sim = SimClock(control_path=path)
    agent = FileControlledClock(path)
    other = FileControlledClock(path)  # every reader of the file sees the same time

    def offset(c: FileControlledClock) -> int:
        host = host_wall_ms()
        return c.now_ms() - host

    tol = 25  # ms between the two reads on a loaded 2-core machine; the offsets are hours
    assert abs(offset(agent)) <= tol
    sim.skew(90_000)
    assert abs(offset(agent) - 90_000) <= tol and abs(offset(other) - 90_000) <= tol
    mono_host, mono_agent = host_monotonic_ms(), agent.monotonic_ms()
    sim.jump(-7_200_000)  # two hours back
    assert abs(offset(agent) + 7_110_000) <= tol
    assert abs(agent.monotonic_ms() - mono_agent - (host_monotonic_ms() - mono_host)) <= tol
    assert list(tmp_path.iterdir()) == [path], "the atomic write left a temporary file"


def test_file_is_reread_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    write_control(path, ClockControl(offset_ms=5_000))
    agent = FileControlledClock(path)
    for _ in range(1000):
        agent.now_ms()
    assert agent.reads == 1
    write_control(path, ClockControl(offset_ms=-5_000))  # a new inode, even in the same ns
    assert agent.now_ms() - host_wall_ms() in range(-5_001, -4_998)
    assert agent.reads == 2


def test_drift_in_the_file_counts_from_since_ms(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    write_control(path, ClockControl(drift_ppm=1000, since_ms=host_wall_ms() - 10_000))
    agent = FileControlledClock(path)
    assert 9 <= agent.now_ms() - host_wall_ms() <= 11  # 10 s x 1000 ppm = 10 ms


def test_a_bad_or_missing_file_keeps_the_agent_running(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    agent = FileControlledClock(path)
    assert abs(agent.now_ms() - SystemClock().now_ms()) <= 1  # no file: the host's clock
    write_control(path, ClockControl(offset_ms=60_000))
    assert agent.now_ms() - host_wall_ms() >= 59_999
    path.write_text('{"offset_ms": "soon"')  # half-typed by hand
    assert agent.now_ms() - host_wall_ms() >= 59_999, "a bad file must keep the last values"
    path.write_text('{"offset_ms": "soon"}')
    assert agent.now_ms() - host_wall_ms() >= 59_999
    assert agent.bad_reads == 2
    path.unlink()
    assert abs(agent.now_ms() - host_wall_ms()) <= 1


@pytest.mark.parametrize("data,error", [
    ([1, 2], "must be a JSON object"),
    ({"offset_ms": True}, "offset_ms: True is not a number"),
    ({"offset_s": 1}, "unknown key"),
])
def test_control_parsing_names_the_bad_field(data: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ClockControl.from_json(data)


# ---- across processes -------------------------------------------------------------------------

AGENT = """
import json, sys, time
from midshift.firmware.edges.clock import FileControlledClock
clock = FileControlledClock(sys.argv[1])
for line in sys.stdin:
    host_wall, host_mono = time.time_ns() // 10**6, time.monotonic_ns() // 10**6
    print(json.dumps({"offset_ms": clock.now_ms() - host_wall,
                      "mono_skew_ms": clock.monotonic_ms() - host_mono}), flush=True)
"""


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    path = tmp_path / "gw1.clock.json"
    proc = subprocess.Popen([sys.executable, "-c", AGENT, str(path)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    yield proc, path
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0


def _ask(proc: subprocess.Popen) -> dict[str, int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("now\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_another_process_follows_skew_jumps_and_drift(
        agent_process: tuple[subprocess.Popen, Path]) -> None:
    proc, path = agent_process
    assert abs(_ask(proc)["offset_ms"]) <= 1
    sim = SimClock(control_path=path)
    sim.skew(2_500)
    assert 2_499 <= _ask(proc)["offset_ms"] <= 2_501
    sim.jump(-86_400_000)  # a day back
    reply = _ask(proc)
    assert -86_397_501 <= reply["offset_ms"] <= -86_397_499
    assert abs(reply["mono_skew_ms"]) <= 1, "monotonic time moved with the wall clock"
    write_control(path, ClockControl(offset_ms=0, drift_ppm=-500, since_ms=host_wall_ms() - 20_000))
    assert -11 <= _ask(proc)["offset_ms"] <= -9  # 20 s x -500 ppm = -10 ms
    sim.reset()
    assert abs(_ask(proc)["offset_ms"]) <= 1
