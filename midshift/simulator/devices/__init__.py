"""The device emulators, one module per device type: ``midshift/simulator/devices/<type>.py``.

A type's module is found by the type's name, as the agent finds its driver in
``midshift/firmware/edges/<type>.py``; the file name is the registration. Besides its emulator
class, a type module exports what the rest of the simulator needs of it:

- ``TYPE`` (its own name), ``EMULATOR`` (the class: ``from_config(name, cfg, gt_dir)``,
  ``start()``, ``stop()``, ``describe()``);
- for a scenario file: ``SCENARIO_KEYS`` (the keys of its ``[devices.NAME]`` table besides
  ``type``) and ``SCENARIO_NUMBERS`` (key -> (default, lowest, highest));
- for the simulated site: ``emulate(name, spec, directory, seed, speed, ground_truth)``
  (the started emulator for a scenario's table; a serial one puts its port at
  ``directory/name``), ``SERIAL`` (its port goes in the board's ``[serial]`` table) and
  ``site_table(name, spec, device)`` (the lines of the agent's ``[devices.NAME]``);
- for the judge (``midshift/simulator/outcome.py``): ``TRANSACTION`` (a reading is a transaction,
  so a second copy in the ledger is a duplicate; telemetry read again is not),
  ``truth_value(entry)`` and ``ledger_value(data)``, the value that matches a ground-truth
  entry with a ledger event.

``pty_port.py`` is a shared part, not a type.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from midshift.firmware.edges.device_types import find_in

HERE = Path(__file__).resolve().parent


def find(dtype: Any) -> ModuleType | None:
    """The module of device type ``dtype``, or None."""
    return find_in(__name__, dtype)


def device_type(dtype: str) -> ModuleType:
    module = find(dtype)
    if module is None:
        raise KeyError(f"{dtype!r} is not a device type; known: {', '.join(known())}")
    return module


def known() -> list[str]:
    """The device types, from the files (without importing them: asyncua and pymodbus are
    slow to import, and a help text should not wait for them)."""
    return sorted(p.stem for p in HERE.glob("*.py")
                  if f'\nTYPE = "{p.stem}"\n' in p.read_text(encoding="utf-8"))


def is_transaction(dtype: str) -> bool:
    return bool(device_type(dtype).TRANSACTION)


def rounded(v: Any) -> Any:
    """Floats to 4 decimals, so a value and its trip through JSON compare equal."""
    return round(v, 4) if isinstance(v, float) else v
