"""Device types found by name: type ``T`` is the module ``midshift/firmware/edges/T.py``.

As pyserial finds the handler of ``socket://`` in ``serial/urlhandler/protocol_socket.py``,
the agent finds the driver of ``type = "scale"`` by importing ``midshift.firmware.edges.scale``. A
device module exports ``TYPE`` (its own name, so a module that is not a device type is
never taken for one), ``DEFAULT_CLASS`` (``txn`` or ``telemetry``) and ``DRIVER`` (the
driver class, with its ``validate_config``). There is no table to keep in step: adding a
type is adding its module (``docs/device-types.md``). A module is imported only when a
config uses its type, so pymodbus or asyncua load only where a PLC is configured.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterator, Mapping
from types import ModuleType

import midshift.firmware.edges
from midshift.firmware.core.site_config import DeviceType

log = logging.getLogger(__name__)
PACKAGE = "midshift.firmware.edges"


def find(dtype: str) -> ModuleType | None:
    """The module of device type ``dtype``, or None if there is no such type here."""
    return find_in(PACKAGE, dtype)


def find_in(package: str, dtype: str) -> ModuleType | None:
    """Module ``package.dtype`` if it exports ``TYPE == dtype`` (the simulator's emulators
    follow the same convention), else None; a module whose library is missing is logged."""
    if not isinstance(dtype, str) or not dtype.isidentifier():
        return None
    name = f"{package}.{dtype}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the module is there, its library is not
            log.warning("device type %s is not available: %s", dtype, exc)
        return None
    return module if getattr(module, "TYPE", None) == dtype else None


def driver_class(dtype: str) -> type:
    module = find(dtype)
    if module is None:
        raise KeyError(f"no device type {dtype!r}")
    return module.DRIVER


def known() -> list[str]:
    """Every device type of this build (imports each edge module: for error messages)."""
    return sorted(m.name for m in pkgutil.iter_modules(midshift.firmware.edges.__path__)
                  if find(m.name) is not None)


class EdgeDeviceTypes(Mapping[str, DeviceType]):
    """The gateway's device types, for ``site_config.validate``: looked up by name on
    demand; iterating lists them all (only an unknown type's error message does that)."""

    def __getitem__(self, dtype: str) -> DeviceType:
        module = find(dtype)
        if module is None:
            raise KeyError(dtype)
        return DeviceType(module.DEFAULT_CLASS, module.DRIVER.validate_config)

    def __iter__(self) -> Iterator[str]:
        return iter(known())

    def __len__(self) -> int:
        return len(known())
