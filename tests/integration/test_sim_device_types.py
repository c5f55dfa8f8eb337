"""The simulator's device types: one module each, found by name, mirroring the agent's."""

from __future__ import annotations

from midshift.firmware.edges import device_types as agent_types
from midshift.simulator import devices


def test_each_simulated_type_has_an_agent_driver_and_exports_what_the_simulator_needs() -> None:
    assert devices.known() == agent_types.known()  # every agent type has its emulator
    assert {"modbus", "opcua", "scale", "scanner"} <= set(devices.known())
    for name in devices.known():
        m = devices.device_type(name)
        assert m.TYPE == name and callable(m.EMULATOR.from_config)
        assert all(isinstance(k, str) and k != "type" for k in m.SCENARIO_KEYS)
        assert set(m.SCENARIO_NUMBERS) <= set(m.SCENARIO_KEYS)
        for attr in ("emulate", "site_table", "truth_value", "ledger_value"):
            assert callable(getattr(m, attr)), (name, attr)
        assert isinstance(m.SERIAL, bool) and isinstance(m.TRANSACTION, bool)
        # a transaction type's readings are journaled as transactions by default
        assert m.TRANSACTION == (agent_types.find(name).DEFAULT_CLASS == "txn")
    assert devices.find("pty_port") is None and devices.find("nothing") is None


def test_ground_truth_and_ledger_values_meet() -> None:
    scale = devices.device_type("scale")
    assert scale.truth_value({"kind": "weight", "value": 1250.0}) == scale.ledger_value(
        {"weight": 1.25, "unit": "kg", "stable": True})
    scanner = devices.device_type("scanner")
    card = "4111111111111111"  # masked in the ledger as in the ground truth's reading
    assert scanner.truth_value({"kind": "scan", "value": card}) != card
    modbus = devices.device_type("modbus")
    assert modbus.truth_value({"tag": "t", "value": 21.50000001}) == modbus.ledger_value(
        {"tag": "t", "value": 21.5})
