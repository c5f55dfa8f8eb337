"""A power cut in the middle of applying a large delta: a child process applying 25,000
price changes is SIGKILLed, before its COMMIT and at an unplanned moment; the store is
then at the old version or the new one, its rows hashing to that version's checksum."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from midshift.firmware.core.refdata import RefdataGate, checksum_of, sign_message
from midshift.firmware.core.signing import Signer
from midshift.firmware.edges.refdata_store import RefdataStore

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(100, 132))
N = 25000  # a second or more of applying on a Pi: a window to cut into


def prepared(tmp: Path) -> tuple[Path, Path, dict[int, str]]:
    """A store at version 1 and the signed delta 1 -> 2 changing every row; checksums."""
    signer = Signer(KEY)
    base = {"v": 1, "kind": "delta", "gateway": "gw-t", "store": "s", "dataset": "prices"}
    rows = [{f"S{i:06d}": {"price": i + v} for i in range(N)} for v in (0, 1)]
    sums = {1: checksum_of(rows[0]), 2: checksum_of(rows[1])}
    deltas = [sign_message(signer, dict(base, **{"from": v}, to=v + 1, checksum=sums[v + 1],
                                        ops=[[k, r[k]] for k in r]))
              for v, r in enumerate(rows)]
    gate = RefdataGate(signer, "gw-t")
    store = RefdataStore(tmp / "refdata.sqlite")
    store.apply_delta(gate, gate.read(deltas[0]), 1)
    store.close()
    (tmp / "delta").write_bytes(deltas[1])
    return tmp / "refdata.sqlite", tmp / "delta", sums


@pytest.mark.parametrize("mode", ["pause", "run"])
def test_a_killed_apply_leaves_the_old_version_or_the_new(tmp_path: Path, mode: str) -> None:
    store_path, delta, sums = prepared(tmp_path)
    child = subprocess.Popen([sys.executable, "-m", "tests.integration.refdata_child",
                              str(store_path), str(delta), KEY.hex(), mode],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "applying"
        if mode == "pause":  # every row written, the COMMIT not yet issued
            assert child.stdout.readline().strip() == "before-commit"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    store = RefdataStore(store_path)
    try:
        version, checksum, _, _ = store.state("prices")
        if mode == "pause":
            assert version == 1
        assert version in (1, 2) and checksum == sums[version]
        assert store.checksum_now("prices") == checksum
        price = store.lookup("prices", "S000123")
        assert price == {"price": 123 + version - 1}
    finally:
        store.close()
