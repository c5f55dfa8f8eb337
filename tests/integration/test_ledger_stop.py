"""A ledger process on PostgreSQL stops when told, and within a bound when it cannot stop
cleanly (``midshift/host_tools/ledger/stop_signals.py``).

A real mosquitto, the run's PostgreSQL cluster, ``python -m midshift.host_tools ledger serve``:
SIGTERM or SIGINT ends it at once with exit 0 after its last group is stored. With its
PostgreSQL backend paused (SIGSTOP: the server has the query and never answers, as a
server that hangs or a dead link behind a live TCP peer would), the writer cannot finish;
a SIGTERM still ends the process within the 10 s bound, with one line and exit code 3.
The bound itself is also checked on a process whose main thread never comes back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midshift.firmware.core import topics
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, encode_batch
from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.stop_signals import EXIT_STUCK, STOP_BOUND_S
from midshift.simulator.broker import Broker
from midshift.simulator.lab import wait_for
from midshift.simulator.postgres import ThrowawayPostgres
from tests.integration.mqtt_probe import Probe

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


def _serve(db: str, broker: Broker, tmp: Path) -> subprocess.Popen[str]:
    keys = tmp / "keys.toml"
    keys.write_text(f'[gateways]\ngw-s = "{KEY.hex()}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", db,
                             "--broker", broker.url, "--keys", str(keys), "--migrate"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # '' if the process exits first
    assert line.startswith("ledger: serving"), f"no start: {line!r} {proc.stderr.read()}"
    return proc


def _send(probe: Probe, seq: int) -> None:
    body = json.dumps({"src": "dev1", "k": "scan", "t": 1, "d": {"code": f"C{seq}"}}).encode()
    payload = encode_batch(Signer(KEY), Batch("gw-s", 5, [(seq, 0, seq, body)], 1))
    mid = probe.publish(topics.topic("lab", "gw-s", topics.EVENTS), payload)
    assert probe.wait_acked(mid, 5), "the broker did not take the batch"


def _count(db: str) -> int:
    with open_store(db) as store:
        return store.count("gw-s")


def _backend(db: str) -> tuple[int, int]:
    """(pid, client port) of the ledger's session: once the test's own earlier sessions
    have gone, the one other session on the ledger's database."""
    rows: list[tuple[int, int]] = []

    def one() -> bool:
        with open_store(db) as store:
            rows[:] = store.query("SELECT pid, client_port FROM pg_stat_activity WHERE "
                                  "datname = current_database() AND pid <> pg_backend_pid()")
        return len(rows) == 1
    assert wait_for(one, 10, 0.1), rows
    return rows[0]


def _unread_by_server(server_port: int, client_port: int) -> int:
    """Bytes the client sent that the server's socket holds unread (``/proc/net/tcp``
    rx_queue of the server's end): > 0 once the ledger has sent a query to a paused backend."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        local, remote, queues = f[1], f[2], f[4]
        if int(local.split(":")[1], 16) == server_port and \
                int(remote.split(":")[1], 16) == client_port:
            return int(queues.split(":")[1], 16)
    return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_ledger_at_once_and_cleanly(
        sig: int, pg: ThrowawayPostgres, tmp_path: Path) -> None:
    db = pg.create_database(f"stop_{signal.Signals(sig).name.lower()}")
    with Broker() as broker:
        proc = _serve(db, broker, tmp_path)
        probe = Probe("127.0.0.1", broker.port, "test-stop")
        try:
            assert probe.connect()
            for seq in (1, 2, 3):
                _send(probe, seq)
            assert wait_for(lambda: _count(db) == 3, 10), "the ledger stored nothing"
            t0 = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(STOP_BOUND_S + 5)
            took = time.monotonic() - t0
        finally:
            probe.close()
            proc.kill()
        out, err = proc.communicate()
    assert code == 0, err
    assert took < 3.0, f"{took:.1f} s to stop"
    assert "ledger: stopped; {'batches': 3, 'events': 3" in out, out
    assert "Traceback" not in err and "exiting with code" not in err, err


def test_a_ledger_whose_store_hangs_still_exits_within_the_bound(
        pg: ThrowawayPostgres, tmp_path: Path) -> None:
    db = pg.create_database("stop_stuck")
    with Broker() as broker:
        proc = _serve(db, broker, tmp_path)
        probe = Probe("127.0.0.1", broker.port, "test-stuck")
        backend = None
        try:
            assert probe.connect()
            _send(probe, 1)
            assert wait_for(lambda: _count(db) == 1, 10), "the ledger stored nothing"
            backend, client_port = _backend(db)
            os.kill(backend, signal.SIGSTOP)
            _send(probe, 2)
            # The writer has sent its transaction to the paused backend and waits for an
            # answer that does not come.
            assert wait_for(lambda: _unread_by_server(pg.port, client_port) > 0, 10), \
                "the ledger never wrote to its (paused) backend"
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(STOP_BOUND_S + 5)
            took = time.monotonic() - t0
        finally:
            if backend is not None:
                os.kill(backend, signal.SIGCONT)
            probe.close()
            proc.kill()
        _, err = proc.communicate()
    assert code == EXIT_STUCK, err
    assert took <= STOP_BOUND_S + 1.0, f"{took:.1f} s to exit"
    last = [line for line in err.splitlines() if "exiting with code" in line]
    assert len(last) == 1 and "the writer did not finish" in last[0], err


CHILD = """
import threading
from midshift.host_tools.ledger.stop_signals import StopSignals
stops = StopSignals(bound_s={bound}).install()
print("ready", flush=True)
threading.Event().wait()  # a main thread that never comes back to stop anything
"""


def test_the_bound_holds_when_the_main_thread_never_gets_to_stop() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(bound=1.0)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert code == EXIT_STUCK and 0.9 <= took < 5, (code, took, err)
    assert err.count("exiting with code 3") == 1 and "not stopped 1 s after SIGTERM" in err
