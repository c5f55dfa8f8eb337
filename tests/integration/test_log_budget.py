"""The agent's console log at the default level stays small on a gateway's SD card.

A real agent process with a real asyncua server publishing every 100 ms and a real pymodbus
server that is stopped after start (its port refuses connections): the log says once that
the PLC is disconnected, nothing per retry or per publish, and the bytes written over a
steady window, extrapolated to a day, stay under ``BUDGET_PER_DAY``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import _log
from midshift.firmware.edges.console_log import LevelByOrigin, configure
from midshift.simulator.devices.modbus import ModbusPLC
from midshift.simulator.devices.opcua import OpcUaPLC

ROOT = Path(__file__).resolve().parents[2]
BUDGET_PER_DAY = 1_000_000  # bytes: under 1 MB a day at the default level
STEADY_S = 20.0


def _site(tmp: Path, plc: ModbusPLC, opc: OpcUaPLC, extra: str = "") -> Path:
    site = tmp / "site.toml"
    site.write_text(f'''board_config = "sim"
[gateway]
id = "gw1"
site = "s1"
[journal]
path = "{tmp / 'journal'}"
[status]
sync_log = "{tmp / 'sync.log'}"
[devices.plc1]
type = "modbus"
host = "127.0.0.1"
port = {plc.port}
poll_ms = 200
[[devices.plc1.registers]]
tag = "count"
address = 0
[devices.opc1]
type = "opcua"
endpoint = "{opc.endpoint}"
publishing_ms = 100
[[devices.opc1.nodes]]
tag = "counter"
node_id = "{opc.node_id('counter')}"
[[devices.opc1.nodes]]
tag = "temperature"
node_id = "{opc.node_id('temperature')}"
{extra}''')
    return site


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_for(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not logged: {path.read_text()[-2000:]}"
        time.sleep(0.1)


def test_log_bytes_per_day_under_budget_with_a_plc_unreachable(tmp_path: Path) -> None:
    plc = ModbusPLC("plc1", [{"tag": "count", "address": 0, "behaviour": "counter",
                              "period_ms": 100}]).start()
    opc = OpcUaPLC("opc1", port=0, period_ms=100).start()
    err = tmp_path / "agent.log"
    proc = None
    try:
        site = _site(tmp_path, plc, opc)
        with err.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "midshift.firmware", "run", "--config",
                                     str(site)], cwd=ROOT, stderr=out, stdout=out,
                                    env=os.environ | {"PYTHONPATH": str(ROOT)})
        _wait_for(err, "plc1: ok", 15)
        _wait_for(err, "opc1: ok", 15)
        plc.stop()  # the PLC's port now refuses: the driver retries with a backoff
        _wait_for(err, "plc1: disconnected", 10)
        time.sleep(2.0)  # the device_down alarm (device_down_s 10 s default) may still come
        _wait_for(err, "alarm device_down", 15)
        start = _size(err)
        time.sleep(STEADY_S)  # the steady window: opc1 publishing, plc1 refusing
        steady = _size(err) - start
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        opc.stop()
        plc.close()
    text = err.read_text()
    per_day = steady * 86400 / STEADY_S
    print(f"log: {steady} bytes in {STEADY_S:.0f} s steady, {per_day / 1e3:.0f} kB/day "
          f"extrapolated; {len(text)} bytes in all")
    assert per_day < BUDGET_PER_DAY, text[-3000:]
    assert "Publish callback" not in text and "pymodbus" not in text, text[-3000:]
    assert text.count("plc1: disconnected") == 1, text  # once, on the change
    assert proc.returncode == 0, text[-3000:]


@pytest.mark.parametrize("name,level,passes", [
    ("asyncua.common.subscription", "INFO", False),
    ("asyncua.client.ua_client", "ERROR", False),
    ("pymodbus.logging", "ERROR", False),
    ("pymodbus.logging", "CRITICAL", True),
    ("paho.mqtt.client", "INFO", False),
    ("cheroot.server", "WARNING", True),
])
def test_default_levels_by_origin(name: str, level: str, passes: bool) -> None:
    cfg = _log({})
    levels = LevelByOrigin(*(logging.getLevelName(cfg[k])
                             for k in ("level", "libraries", "device_libraries")))
    record = logging.LogRecord(name, logging.getLevelName(level), __file__, 1, "x", None, None)
    assert levels.filter(record) is passes


def test_log_table_is_checked() -> None:
    assert _log({"level": "debug"})["level"] == "DEBUG"
    with pytest.raises(ConfigError, match="log.libraries: 'LOUD' is not a log level"):
        _log({"libraries": "LOUD"})
    with pytest.raises(ConfigError, match="log.colour"):
        _log({"colour": True})


def test_set_log_level_command_still_reaches_the_console() -> None:
    """The agent's own lines follow the "firmware" logger's level, which the signed
    set-log-level command changes at run time; the libraries stay quiet."""
    import io
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("midshift.firmware").level)
    try:
        configure(_log({}), handler=logging.StreamHandler(out))
        logging.getLogger("midshift.firmware.agent").debug("hidden at INFO")
        logging.getLogger("midshift.firmware").setLevel("DEBUG")  # what SetLogLevel does
        logging.getLogger("midshift.firmware.agent").debug("shown at DEBUG")
        logging.getLogger("pymodbus.logging").error("retry noise")
        logging.getLogger("paho.mqtt.client").warning("a library warning")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("midshift.firmware").setLevel(saved[2])
        for name in ("asyncua", "pymodbus", "midshift", "__main__"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    text = out.getvalue()
    assert "shown at DEBUG" in text and "hidden at INFO" not in text
    assert "retry noise" not in text and "a library warning" in text
