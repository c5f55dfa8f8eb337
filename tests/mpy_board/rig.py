"""The MicroPython node's test rig on CPython: the node (``midshift/firmware/mpy/main.py``
unchanged) with the board stand-ins of this directory, a real mosquitto behind a fault
proxy, the reference ledger on SQLite, and the scanner (and scale) emulators on ptys.

The node runs in a thread of the test process (``start``) so a test can read its
counters and journal, or in its own process (``spawn``) so a test can SIGKILL it.
``board_modules()`` puts this directory first on ``sys.path`` for the test only and
takes it, and every module imported through it, away afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.service import LedgerService
from midshift.host_tools.mpy_bundle import KEY_FILES, node_document
from midshift.simulator.broker import Broker
from midshift.simulator.network import FaultProxy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GATEWAY = "node-1"
SITE = "door3"
KEY = bytes(range(40, 72))
COMMAND_KEY = bytes(range(140, 172))
SHIM_MODULES = ("machine", "network", "usocket", "ustruct", "ubinascii", "umqtt",
                "umqtt.simple")
FAST = {"timeout_s": 0.5, "ping_ms": 500, "max_retry_ms": 500, "ack_timeout_ms": 3000,
        "commit_every_ms": 500,
        "idle_ms": 5, "status_period_ms": 1000}




def _forget_board_imports() -> None:
    """The stand-ins, and node modules that bound them (or, imported elsewhere, bound
    CPython's ``socket`` or no ``network``) at import time."""
    for name in list(sys.modules):
        if name in SHIM_MODULES or name.startswith("midshift.firmware.mpy"):
            del sys.modules[name]


@contextmanager
def board_modules() -> Iterator[None]:
    _forget_board_imports()
    sys.path.insert(0, str(HERE))
    try:
        yield
    finally:
        sys.path.remove(str(HERE))
        _forget_board_imports()


def site_doc(scanner: bool = True, scale: bool = False,
             broker_port: int = 1883) -> dict[str, Any]:
    devices: dict[str, Any] = {}
    if scanner:
        devices["scanner1"] = {"type": "scanner", "port": "scanner", "charset": "digits",
                               "min_length": 8, "inter_char_timeout_ms": 100}
    if scale:
        devices["scale1"] = {"type": "scale", "port": "scale", "poll_ms": 50,
                             "timeout_ms": 500, "stale_s": 2.0}
    return {"gateway": {"id": GATEWAY, "site": SITE},
            "wifi": {"ssid": "goods-in"},
            "devices": devices,
            "uplinks": {"wifi": {"broker": f"mqtt://127.0.0.1:{broker_port}"}}}


class NodeRig:
    def __init__(self, tmp: Path, scanner: bool = True, scale: bool = False,
                 board: str = "pico-w", commands: bool = False) -> None:
        from midshift.simulator.devices.scale import Scale
        from midshift.simulator.devices.scanner import BarcodeScanner
        self.tmp = tmp
        self.broker = Broker(tmp / "broker").start()
        self.proxy = FaultProxy(("127.0.0.1", self.broker.port), control=False).start()
        self.store = open_store(f"sqlite:///{tmp / 'ledger.db'}")
        self.ledger = LedgerService(self.store, {GATEWAY: KEY},
                                    f"mqtt://127.0.0.1:{self.broker.port}").start()
        self.scanner = (BarcodeScanner("scanner1", tmp / "scanner1", seed=9).start()
                        if scanner else None)
        self.scale = Scale("scale1", tmp / "scale1", seed=9, settle_readings=1,
                           reading_interval_s=0.02).start() if scale else None
        self.uarts = {}
        if scanner:
            self.uarts[0] = str(tmp / "scanner1")
        if scale:
            self.uarts[1] = str(tmp / "scale1")
        self.node_dir = tmp / "node"
        self.node_dir.mkdir()
        doc, _ = node_document(board, site_doc(scanner, scale, self.proxy.address[1]),
                               command_key=commands)
        (self.node_dir / "node.json").write_text(json.dumps(doc))
        (self.node_dir / KEY_FILES["hmac"]).write_text(KEY.hex())
        if commands:
            (self.node_dir / KEY_FILES["command"]).write_text(COMMAND_KEY.hex())
        self.node: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- the node in this process --------------------------------------------------------

    def start(self, **options: Any) -> Any:
        import machine

        from midshift.firmware.mpy import main
        machine.PORTS.clear()
        machine.PORTS.update(self.uarts)
        self.node = main.build(str(self.node_dir) + "/", FAST | options)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mpy-node", daemon=True)
        self._thread.start()
        for dev in (self.scanner, self.scale):
            if dev is not None:
                assert dev.wait_client(5)
        return self.node

    def _run(self) -> None:
        from midshift.firmware.mpy import main
        try:
            self.node.run(main._sleep_ms, self._stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            assert not self._thread.is_alive(), "node loop did not stop"
            self._thread = None
            self.node.close()
        assert not self.errors, self.errors
        assert self.node is None or self.node.counters["loop_errors"] == 0, \
            self.node.last_loop_error

    # ---- the node in its own process -----------------------------------------------------

    def spawn(self, **options: Any) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "run_node.py"), str(self.node_dir),
             json.dumps({str(k): v for k, v in self.uarts.items()}), json.dumps(FAST | options)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.tmp / "node.err", "ab"))
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)  # the power cut
            self.proc.wait(10)
            self.proc = None

    # ---- what the ledger holds -----------------------------------------------------------

    def ledger_count(self) -> int:
        """The devices' events in the ledger (the node's own link incidents left out)."""
        return self.store.query("SELECT COUNT(*) FROM event_fields WHERE gateway=? AND "
                                "source <> 'agent'", (GATEWAY,))[0][0]

    def incidents(self) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT data FROM event_fields WHERE gateway=? AND "
                                "source = 'agent' ORDER BY seq", (GATEWAY,))
        return [json.loads(r[0]) for r in rows]

    def ledger_values(self, key: str = "code") -> list[Any]:
        rows = self.store.query("SELECT data FROM event_fields WHERE gateway=? AND "
                                "source <> 'agent' ORDER BY seq", (GATEWAY,))
        return [json.loads(r[0])[key] for r in rows]

    def expected_scans(self) -> list[str]:
        assert self.scanner is not None
        return [e["value"] for e in self.scanner.truth() if e["kind"] == "scan" and e["expect"]]

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            self.node.close()
        if self.proc is not None:
            self.kill()
        for dev in (self.scanner, self.scale):
            if dev is not None:
                dev.stop()
        self.ledger.stop()
        self.proxy.stop()
        self.broker.stop()
        self.store.close()
