"""``ledger serve`` against a broker that speaks only MQTT 3.1.1 (amqtt, standing in for
aedes): ``--shared`` and ``--workers N`` say in one line that shared subscriptions need
MQTT 5 and that a single worker works, and exit 2 instead of retrying forever; a single
worker serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.simulator.broker import Broker

ROOT = Path(__file__).resolve().parents[2]
ENV = os.environ | {"PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def broker311() -> Iterator[Broker]:
    with Broker(backend="amqtt") as b:
        yield b


def _serve(broker: Broker, tmp: Path, db: str, *extra: str) -> list[str]:
    keys = tmp / "keys.toml"
    keys.write_text('[gateways]\n"gw-1" = "%s"\n' % ("00" * 32))
    return [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", db,
            "--broker", broker.url, "--keys", str(keys), *extra]


@pytest.mark.parametrize("extra,db", [
    (("--shared", "g1"), "sqlite:///{tmp}/l.db"),
    # Never connected to: the broker is checked before any worker or store.
    (("--workers", "2"), "postgresql://nobody@127.0.0.1:1/ledger"),
])
def test_shared_subscription_needs_mqtt5_one_line_exit_2(broker311: Broker, tmp_path: Path,
                                                         extra: tuple[str, ...], db: str) -> None:
    started = time.monotonic()
    p = subprocess.run(_serve(broker311, tmp_path, db.format(tmp=tmp_path), *extra),
                       capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("ledger: broker ") and "ledger: ledger:" not in lines[0]
    assert "MQTT 5 shared subscriptions" in lines[0] and "single worker" in lines[0]
    assert time.monotonic() - started < 15  # no retry loop


def test_single_worker_serves_on_mqtt311(broker311: Broker, tmp_path: Path) -> None:
    p = subprocess.Popen(_serve(broker311, tmp_path, f"sqlite:///{tmp_path}/l.db"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=ENV)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()  # bounded: the service gives up after 10 s
        assert first.startswith("ledger: serving 1 gateway(s)"), first
    finally:
        p.terminate()
        p.wait(15)
