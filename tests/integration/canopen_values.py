"""What a CANopen test compares: per tag, the values a node put on the wire (its ground
truth) and the values journaled, EMCY codes under ``(emcy)``."""

from __future__ import annotations

from typing import Any

from midshift.simulator.devices.canopen import BatteryModule
from tests.integration.event_sink import Sink


def wire_values(bm: BatteryModule) -> dict[str, list[Any]]:
    """Per tag, every value the node sent that differs from its last (its ground truth)."""
    out: dict[str, list[Any]] = {}
    for e in bm.truth():
        if e["kind"] == "canopen":
            out.setdefault(e["tag"], []).append(e["value"])
        elif e["kind"] == "emcy":
            out.setdefault("(emcy)", []).append(e["value"])
    return out


def journaled_values(sink: Sink) -> dict[str, list[Any]]:
    """Per tag, the values of the events; an event of another kind fails the test."""
    out: dict[str, list[Any]] = {}
    for e in sink.snapshot():
        if e.kind == "canopen":
            out.setdefault(e.data["tag"], []).append(e.data["value"])
        else:
            assert e.kind == "alarm", e
            out.setdefault("(emcy)", []).append(e.data["code"])
    return out
