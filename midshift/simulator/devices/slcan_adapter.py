"""A USB-CAN adapter speaking slcan (the Lawicel ASCII protocol) on a pty, bridging a
process of its own to a virtual CAN bus with an emulated node on it.

Why this and not another cross-process bus: this kernel has no SocketCAN (not even vcan),
and a gateway without a CAN HAT reaches its bus through exactly such an adapter (CANable,
Lawicel CANUSB), so the agent's driver runs the code it runs in the field: python-can's
``slcan`` interface opening a serial port, setting the bitrate, reading ``t...`` lines,
and failing with a ``SerialException`` when the adapter is pulled. python-can's
``udp_multicast`` or ``socketcand`` would cross processes too, but no gateway uses them.

The host side (the agent) opens ``link_path``, a stable symlink to the pty's slave, as it
would ``/dev/serial/by-id/usb-CANable...`` (``pty_port.PtyPort``). Commands understood
(each ends with CR; the answer is CR for OK, BEL for an error): ``O`` and ``L`` (open; L is
listen-only), ``C`` (close), ``S0``..``S8`` (bitrate 10 k .. 1 M), ``sXXYY`` (BTR registers),
``V``/``v``/``N`` (versions, serial number), ``F`` (status flags: none), ``Z0``/``Z1``
(timestamps: accepted, never sent), ``tIIILDD..``/``TIIIIIIIILDD..``/``r``/``R`` (send a
frame: answered ``z``/``Z``). Frames from the bus go to the host as ``tIIILDD..\\r`` while
the channel is open.

Faults: ``unplug()`` and ``replug()`` (the adapter leaves and comes back, same path), and
a bitrate other than the bus's (``bus_bitrate``): nothing passes either way, counted in
``wrong_bitrate_frames``, as a real controller would see only errors.

Not modelled: the adapter's own queue limits and overruns beyond the pty's, error frames
and bus-off reports (slcan has no standard way to send them; python-can ignores ``F``),
CAN FD, the serial line's speed (a pty moves bytes at memory speed).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import can

from midshift.simulator.devices.pty_port import PtyPort

log = logging.getLogger(__name__)

BITRATES = {"S0": 10_000, "S1": 20_000, "S2": 50_000, "S3": 100_000, "S4": 125_000,
            "S5": 250_000, "S6": 500_000, "S7": 800_000, "S8": 1_000_000}
OK, ERROR = b"\r", b"\a"


def frame_line(msg: can.Message) -> bytes:
    """A frame as slcan sends it to the host."""
    if msg.is_extended_id:
        head = f"{'R' if msg.is_remote_frame else 'T'}{msg.arbitration_id:08X}{msg.dlc}"
    else:
        head = f"{'r' if msg.is_remote_frame else 't'}{msg.arbitration_id:03X}{msg.dlc}"
    data = "" if msg.is_remote_frame else bytes(msg.data).hex().upper()
    return (head + data).encode() + OK


def parse_frame(line: str) -> can.Message | None:
    """A host's ``t``/``T``/``r``/``R`` command as a frame, or None if malformed."""
    extended = line[0] in "TR"
    id_len = 8 if extended else 3
    try:
        can_id = int(line[1:1 + id_len], 16)
        dlc = int(line[1 + id_len])
        remote = line[0] in "rR"
        data = b"" if remote else bytes.fromhex(line[2 + id_len:2 + id_len + 2 * dlc])
    except (ValueError, IndexError):
        return None
    if dlc > 8 or (not remote and len(data) != dlc) or can_id > (0x1FFFFFFF if extended
                                                                 else 0x7FF):
        return None
    return can.Message(arbitration_id=can_id, is_extended_id=extended, is_remote_frame=remote,
                       dlc=dlc, data=data)


class SlcanAdapter:
    """A USB-CAN adapter on a pty in front of ``node`` (an emulator on a virtual bus)."""

    def __init__(self, link_path: str | Path, node: Any, bus_bitrate: int = 500_000) -> None:
        self.link_path = Path(link_path)
        self.node = node
        self.bus_bitrate = bus_bitrate
        self.port = PtyPort(self.link_path)
        self.bitrate: int | None = None
        self.is_open = False
        self.frames_in = 0    # host -> bus
        self.frames_out = 0   # bus -> host
        self.bad_commands = 0
        self.wrong_bitrate_frames = 0
        self._bus: can.BusABC | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        node.hearing = lambda: self.is_open and self.port.is_up

    def start(self) -> SlcanAdapter:
        self.node.start()
        self._bus = can.Bus(interface="virtual", channel=self.node.channel)
        self.port.open()
        self._stopping.clear()
        for target, name in ((self._from_host, "in"), (self._to_host, "out")):
            t = threading.Thread(target=target, name=f"slcan-{name}-{self.link_path.name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.port.interrupt()
        for t in self._threads:
            t.join(5)
        self._threads = []
        self.port.close()
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None
        self.node.stop()

    def __enter__(self) -> SlcanAdapter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- faults ----------------------------------------------------------------------

    def unplug(self) -> None:
        self.is_open = False
        self.port.disappear()
        self.node.ground_truth.record("fault", "adapter_unplugged", expect=False,
                                     fault="adapter_unplugged")

    def replug(self) -> None:
        self.port.reappear()
        self.node.ground_truth.record("fault", "adapter_replugged", expect=False,
                                      fault="adapter_replugged")

    # ---- the two directions ----------------------------------------------------------

    def _passes(self) -> bool:
        if not self.is_open:
            return False
        if self.bitrate is not None and self.bitrate != self.bus_bitrate:
            self.wrong_bitrate_frames += 1
            return False
        return True

    def _from_host(self) -> None:
        buf = b""
        while not self._stopping.is_set():
            data = self.port.read(4096, 0.1)
            if not data:
                if not self.port.is_up:
                    buf = b""
                continue
            buf += data
            *lines, buf = buf.split(b"\r")
            for raw in lines:
                self.port.write(self._command(raw.decode("ascii", "replace")))

    def _command(self, line: str) -> bytes:
        if not line:
            return OK
        op = line[0]
        if op in "tTrR":
            msg = parse_frame(line)
            if msg is None or not self.is_open:
                self.bad_commands += msg is None
                return ERROR
            if self._passes() and self._bus is not None:
                self._bus.send(msg)
                self.frames_in += 1
            return (b"Z" if msg.is_extended_id else b"z") + OK
        if op in "OL":
            self.is_open = True
            return OK
        if op == "C":
            self.is_open = False
            return OK
        if line in BITRATES:
            self.bitrate = BITRATES[line]
            return OK
        if op == "s" and len(line) == 5:
            self.bitrate = None  # register values: assume the integrator got them right
            return OK
        answers = {"V": b"V1013", "v": b"v1013", "N": b"NMS01", "F": b"F00"}
        if line in answers:
            return answers[line] + OK
        if line in ("Z0", "Z1"):
            return OK
        self.bad_commands += 1
        return ERROR

    def _to_host(self) -> None:
        while not self._stopping.is_set():
            bus = self._bus
            msg = bus.recv(0.1) if bus is not None else None
            if msg is None or msg.is_error_frame or not self._passes():
                continue
            if self.port.write(frame_line(msg)):
                self.frames_out += 1

    # ---- reports ---------------------------------------------------------------------

    def truth(self) -> list[dict[str, Any]]:
        return list(self.node.truth())

    def describe(self) -> dict[str, Any]:
        return self.node.describe() | {"port": str(self.link_path), "adapter": "slcan",
                                       "frames_in": self.frames_in,
                                       "frames_out": self.frames_out}
