"""The driver contract: device types found by name, and what a source learns of a refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from midshift.firmware.core.errors import ConfigError, JournalFull, StorageError
from midshift.firmware.core.event import Event
from midshift.firmware.core.pipeline import InvalidEvent
from midshift.firmware.edges import device_types
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.config_file import load_config
from midshift.firmware.edges.driver import Driver, Emitted


def test_every_edge_device_module_is_found_by_its_name() -> None:
    assert {"modbus", "opcua", "scale", "scanner"} <= set(device_types.known())
    for name in device_types.known():
        module = device_types.find(name)
        assert module is not None and module.TYPE == name
        assert module.DEFAULT_CLASS in ("txn", "telemetry")
        assert issubclass(module.DRIVER, Driver) and module.DRIVER.kind == name
    for not_a_type in ("mqtt", "driver", "device_types", "no_such", "../agent", "", None):
        assert device_types.find(not_a_type) is None  # type: ignore[arg-type]


def _site(tmp: Path, device: str) -> Path:
    (tmp / "board.toml").write_text('[board]\nname = "test"\n[journal]\npath = "j"\n')
    site = tmp / "site.toml"
    site.write_text(f'board_config = "board.toml"\n[gateway]\nid = "gw-1"\nsite = "s"\n'
                    f"[devices.d1]\n{device}\n")
    return site


def test_the_loader_takes_the_default_class_from_the_type_module(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, 'type = "scale"\nport = "/dev/ttyUSB0"'))
    assert (cfg.devices[0].type, cfg.devices[0].cls) == ("scale", "txn")
    cfg = load_config(_site(tmp_path, 'type = "modbus"\nhost = "10.0.0.5"\n'
                            '[[devices.d1.registers]]\ntag = "a"\naddress = 0'))
    assert (cfg.devices[0].type, cfg.devices[0].cls) == ("modbus", "telemetry")


@pytest.mark.parametrize("dtype", ["printer", "mqtt", "flash"])
def test_an_unknown_type_names_file_key_value_and_the_known_types(tmp_path: Path,
                                                                  dtype: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_site(tmp_path, f'type = "{dtype}"'))
    text = str(err.value)
    assert err.value.key == "devices.d1.type"
    assert text.startswith(f"{tmp_path / 'site.toml'}: devices.d1.type: '{dtype}' ")
    assert text.endswith("allowed: " + ", ".join(device_types.known())), text
    assert "scale, scanner" in text


class _Probe(Driver):
    kind = "probe"

    def _run(self) -> None:
        pass


@pytest.mark.parametrize("raised, reason, counter", [
    (JournalFull("txn", 100, 0), "journal_full", "refused_journal_full"),
    (InvalidEvent("bad_time", "read time 5 is not epoch milliseconds"), "invalid:bad_time",
     "refused_invalid_event"),
    (StorageError("record 7 not durable within 5 s"), "storage", "refused_storage"),
])
def test_emit_tells_the_source_why_a_record_was_refused(raised: Exception, reason: str,
                                                         counter: str) -> None:
    def refuse(event: Event) -> Any:
        raise raised
    drv = _Probe("p1", {}, refuse, SystemClock())
    result = drv.emit(Event("p1", "scan", 1_700_000_000_000, {}))
    assert not result and not result.ok and result.seq is None
    assert (result.reason, result.text) == (reason, str(raised))
    assert drv.status.counter("refused") == 1 and drv.status.counter(counter) == 1


def test_emit_returns_the_seq_of_an_accepted_record() -> None:
    drv = _Probe("p1", {}, lambda event: 42, SystemClock())
    result = drv.emit(Event("p1", "scan", 1_700_000_000_000, {}))
    assert isinstance(result, Emitted) and result and result.seq == 42 and result.reason is None
    assert drv.status.counter("events") == 1
