"""Device type ``canopen``: one CANopen node on a CAN bus (python-can and canopen).

The node's TPDOs and the objects polled over SDO become ``canopen`` events; its EMCY
frames become ``alarm`` events. Exports ``TYPE``, ``DEFAULT_CLASS`` and ``DRIVER``, as every
``midshift/firmware/edges/<type>.py``.

Config (``[devices.NAME]``, type ``canopen``; ``docs/configuration.md`` has an example):

- ``interface`` (``socketcan``: a Pi CAN HAT, ``can0``; ``slcan``: a USB-CAN adapter on a
  serial port; ``virtual``: python-can's in-process bus, for tests), ``channel`` (required:
  ``can0``, ``/dev/serial/by-id/...``), ``bitrate`` (500000; slcan sets it on the adapter,
  socketcan takes it from ``ip link``);
- ``node_id`` (1 to 127), ``eds`` (the node's EDS file, relative to the site file),
  ``tpdos`` (TPDO numbers to take, [] for none), ``pdo_mapping`` (``eds``: the mapping is
  the EDS's defaults; ``sdo``: read from the node over SDO at every (re)start);
- ``heartbeat_ms`` (1000): written to the node's 0x1017 at every (re)start; no heartbeat
  for twice that makes the device ``disconnected``; ``start_node`` (true): send NMT
  start after a (re)start; ``sdo_timeout_s`` (0.5);
- ``objects``, a list of tables: ``tag``, ``index``, ``subindex`` (0), ``poll_ms`` (poll
  the object over SDO this often; absent: the object comes by TPDO only), ``scale`` (1.0),
  ``deadband`` (0). A TPDO-mapped object without a table is tagged with its EDS name in
  snake_case (``Pack voltage`` -> ``pack_voltage``), scale 1, deadband 0.

Events: kind ``canopen``, data ``{"tag", "value", "index", "subindex", "via"}`` (``via``
``tpdo`` or ``sdo``), ``read_ms`` the wall time the frame arrived. A value is emitted when
first seen and then when it moves by more than its deadband from the last value emitted,
as for Modbus. EMCY: kind ``alarm``, data ``{"code", "error_register", "text", "vendor"}``
(``code`` 0 is the node's error reset); every EMCY frame is one event.

States, as the node's far end goes wrong:

- ``disconnected``: the bus cannot be opened (counter ``bus_open_failures``), its receive
  thread failed (``bus_errors``: a USB-CAN adapter unplugged) or a bus-off error frame
  came (``bus_off``, SocketCAN's ``CAN_ERR_BUSOFF``): the bus is closed and opened again
  with a backoff (0.2 s doubling to 5 s) and the node restarted; or no heartbeat for
  ``2 * heartbeat_ms`` (``heartbeat_losses``): the node is asked again (0x1017, NMT start)
  every second until it answers, and when heartbeats return;
- ``stale``: heartbeats say an NMT state other than OPERATIONAL (``PRE-OPERATIONAL``
  after a reboot: counter ``node_boots``, the driver re-reads the PDO configuration,
  writes the heartbeat time and starts the node if ``start_node``);
- ``error``: the node answered an SDO with an abort (``SDO abort 0x06020000 (Object does
  not exist) reading 0x2099:00``; counters ``sdo_aborts``, ``sdo_abort_<code>``), until
  that object reads again; an SDO with no answer counts ``sdo_timeouts``;
- frames of this node with the wrong length or an unknown NMT state are dropped and
  counted in ``bad_frames`` (no event); frames of other nodes are not looked at.

Threads: one receives frames and checks them (heartbeats, SDO answers and TPDO decoding
never wait for anything else), one supervises (heartbeat watchdog, restarts, SDO polls),
and ``LANES`` hand events to the journal, each tag's in arrival order
(``midshift/firmware/edges/emit_lanes.py``). Every emit waits for its record to be durable, so the
journal's sync time bounds the rate of each tag (about 2,000 a second on an SSD, far less
on an SD card) while different tags share syncs; events wait in a lane of ``QUEUE_MAX``,
and beyond it new ones are dropped and counted (``queue_overflows``), never silently. On
stop, queued events are still journaled (up to ``DRAIN_S``).

Sharp edges: socketcan recovers from bus-off only with ``restart-ms`` set on the link
(``ip link set can0 type can bitrate 500000 restart-ms 100``): the driver reopens its
socket but cannot restart the controller without root. Not modelled: RPDOs (writes to the
node), SYNC-driven TPDOs as a SYNC producer, SDO block transfers, LSS, several nodes in one
driver (configure one device per node; on socketcan they share the interface).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import can
import canopen
from canopen.emcy import EmcyError
from canopen.nmt import NMT_STATES
from canopen.sdo import SdoAbortedError, SdoCommunicationError, SdoVariable

from midshift.firmware.core.event import Event
from midshift.firmware.edges.canopen_config import load_eds, snake, validate_config
from midshift.firmware.edges.driver import Driver
from midshift.firmware.edges.emit_lanes import EmitLanes

log = logging.getLogger(__name__)

TICK_S = 0.02            # the supervision loop: heartbeat watchdog, SDO polls, restarts
RECV_TIMEOUT_S = 0.1     # how long the receive thread blocks; bounds stop()
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
# Events read but not yet journaled wait in lanes (midshift/firmware/edges/emit_lanes.py): each
# emit waits for a journal sync, and the frames must not wait behind it.
LANES = 4                # journaling threads: up to 4 changing tags share one sync
QUEUE_MAX = 5_000        # events waiting per lane; beyond: counted drops
DRAIN_S = 5.0            # how long stop() lets queued events reach the journal
CONFIGURE_RETRY_S = 1.0  # a node that does not answer its (re)start SDOs is asked again
SLCAN_SETTLE_S = 0.2
CAN_ERR_BUSOFF = 0x40    # linux/can/error.h: error class bit in an error frame's id
OPERATIONAL = 5
NMT_START = 1            # CiA 301 7.2.8.3.1: start remote node


class _Receiver:
    """The bus's receive thread: each frame of our node is checked before canopen sees it.

    Not a ``can.Notifier``: when the interface fails (an adapter pulled out) a Notifier's
    thread either dies with a traceback or, told the error is handled, spins on it; this
    one keeps the error for the supervision loop and ends."""

    def __init__(self, driver: CanOpenDriver, network: Any, bus: can.BusABC) -> None:
        self.driver = driver
        self.network = network
        self.bus = bus
        self.failure: Exception | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"can-rx-{driver.name}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = self.bus.recv(RECV_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any interface failure ends this bus
                if not self._stopping.is_set():
                    self.failure = exc
                return
            if msg is not None:
                self.driver._on_frame(self.network, msg)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(RECV_TIMEOUT_S * 20)


class CanOpenDriver(Driver):
    kind = "canopen"

    validate_config = staticmethod(validate_config)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        self.od = load_eds(cfg["eds"], cfg["node_id"], f"devices.{self.name}.eds")
        self.by_index = {(o["index"], o["subindex"]): o for o in cfg["objects"]}
        self.polled = [o for o in cfg["objects"] if o["poll_ms"]]
        self.heartbeat_timeout_ms = 2 * cfg["heartbeat_ms"]
        self._lock = threading.Lock()            # _last and the frame-side state
        self._last: dict[str, Any] = {}          # tag -> last value emitted (accepted)
        self._network: Any = None
        self._receiver: _Receiver | None = None
        self._node: Any = None
        self._pdo_lengths: dict[int, int] = {}   # TPDO COB-ID -> data bytes it must carry
        self._hb_mono: int | None = None         # monotonic ms of the last heartbeat
        self._nmt_state: int | None = None
        self._hb_lost = False
        self._configure_due: int | None = None   # monotonic ms the node is to be (re)started
        self._bus_off = False
        self._aborted: dict[str, str] = {}       # tag -> its last SDO abort, until it reads
        self._next_poll: dict[str, int] = {}
        # Read, not yet journaled: frames never wait for a sync (emit_lanes.py says why).
        self._lanes = EmitLanes(self.name, self.emit_many, self._refused, LANES, QUEUE_MAX)
        self._overflowing = False

    # -- the bus ----------------------------------------------------------------------

    def _open(self) -> bool:
        cfg = self.cfg
        # python-can waits 2 s after opening an slcan port (for boards that reset on
        # open); a CANable or Lawicel adapter answers at once, and a replug waits less.
        extra = {"sleep_after_open": SLCAN_SETTLE_S} if cfg["interface"] == "slcan" else {}
        try:
            bus = can.Bus(interface=cfg["interface"], channel=cfg["channel"],
                          bitrate=cfg["bitrate"], **extra)
        except (can.CanError, OSError, ValueError) as exc:
            self.status.count("bus_open_failures")
            self.set_state("disconnected", f"cannot open {cfg['interface']} {cfg['channel']}: "
                           f"{exc}")
            return False
        network = canopen.Network(bus)
        node = canopen.RemoteNode(cfg["node_id"], self.od)
        node.sdo.RESPONSE_TIMEOUT = cfg["sdo_timeout_s"]
        node.sdo.MAX_RETRIES = 1  # one request, no retry (0 would retry forever)
        network.add_node(node)
        node.emcy.add_callback(self._on_emcy)
        for n in cfg["tpdos"]:
            node.tpdo[n].add_callback(self._on_tpdo)
        with self._lock:
            self._network, self._node = network, node
            self._receiver = _Receiver(self, network, bus)
            self._hb_mono = self._nmt_state = None
            self._bus_off = False
        self._configure_due = self.clock.monotonic_ms()
        self.status.count("bus_opens")
        return True

    def _close(self) -> None:
        with self._lock:
            network, self._network, self._node = self._network, None, None
            receiver, self._receiver = self._receiver, None
            self._pdo_lengths = {}
        if receiver is not None:
            receiver.stop()
        if network is not None:
            try:
                network.disconnect()
            except Exception:  # noqa: BLE001 - a dead adapter may fail to shut down
                log.debug("%s: closing the bus failed", self.name, exc_info=True)

    def _run(self) -> None:
        self._lanes.start()
        try:
            self._supervise()
        finally:
            self._close()
            self._lanes.close(DRAIN_S)  # what was read while we watched is still journaled

    def _supervise(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            if self._network is None:
                if not self._open():
                    if self.wait(backoff):
                        break
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = BACKOFF_FIRST_S
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the driver outlives any one bad tick
                log.log(logging.ERROR if self.status.state != "error" else logging.DEBUG,
                        "%s: supervision failed", self.name, exc_info=True)
                self.status.count("tick_failures")
                self.set_state("error", f"driver failed: {exc!r}")
            if self.wait(TICK_S):
                break

    def _tick(self) -> None:
        failed = self._receiver.failure if self._receiver is not None else None
        if failed is not None or self._bus_off:
            self.status.count("bus_off" if self._bus_off else "bus_errors")
            why = "bus-off" if self._bus_off else f"CAN interface failed: {failed!r}"
            self.set_state("disconnected", why)
            self._close()
            return
        now = self.clock.monotonic_ms()
        with self._lock:
            hb_mono, nmt_state = self._hb_mono, self._nmt_state
        if hb_mono is None or now - hb_mono > self.heartbeat_timeout_ms:
            if hb_mono is not None and not self._hb_lost:
                self._hb_lost = True
                self.status.count("heartbeat_losses")
                # A node that rebooted unseen may have its heartbeat off: ask it again.
                self._configure_due = now + int(CONFIGURE_RETRY_S * 1000)
            if self._configure_due is not None and now >= self._configure_due:
                self._configure(now)  # a node that boots without telling us: try anyway
            waited = "no heartbeat yet" if hb_mono is None else \
                f"no heartbeat for {(now - hb_mono) / 1000:.1f} s"
            self.set_state("disconnected", waited)
            return
        if self._hb_lost:  # heartbeats again: the node may have lost its settings meanwhile
            self._hb_lost = False
            self._configure_due = now
        if self._configure_due is not None and now >= self._configure_due:
            self._configure(now)
        self._poll_due(now)
        if nmt_state != OPERATIONAL:
            self.set_state("stale", f"NMT state {NMT_STATES.get(nmt_state or 0, nmt_state)}")
        elif self._aborted:
            self.set_state("error", "; ".join(self._aborted[t] for t in sorted(self._aborted)))
        else:
            self.set_state("ok")

    # -- (re)starting the node ----------------------------------------------------------

    def _configure(self, now: int) -> None:
        """Read the PDO configuration, write the heartbeat time, start the node."""
        node = self._node
        from_od = self.cfg["pdo_mapping"] == "eds"
        try:
            lengths = {}
            for n in self.cfg["tpdos"]:
                pdo = node.tpdo[n]
                pdo.read(from_od=from_od)
                lengths[pdo.cob_id] = (pdo.length + 7) // 8
            node.sdo[0x1017].raw = self.cfg["heartbeat_ms"]
            if self.cfg["start_node"]:
                node.nmt.send_command(NMT_START)
        except SdoAbortedError as exc:
            self._sdo_aborted("configure", exc, "configuring the node")
            self._configure_due = now + int(CONFIGURE_RETRY_S * 1000)
            return
        except SdoCommunicationError:
            self.status.count("sdo_timeouts")
            self._configure_due = now + int(CONFIGURE_RETRY_S * 1000)
            return
        with self._lock:
            self._pdo_lengths = lengths
        self._aborted.pop("configure", None)
        self._configure_due = None
        self.status.count("configures")

    # -- SDO polls ----------------------------------------------------------------------

    def _poll_due(self, now: int) -> None:
        for obj in self.polled:
            tag = obj["tag"]
            if now < self._next_poll.get(tag, 0):
                continue
            self._next_poll[tag] = now + obj["poll_ms"]
            var = self._node.sdo[obj["index"]]
            if not isinstance(var, SdoVariable):
                var = var[obj["subindex"]]
            try:
                value = var.raw
            except SdoAbortedError as exc:
                self._sdo_aborted(tag, exc, f"reading 0x{obj['index']:04X}:{obj['subindex']:02X}")
                continue
            except SdoCommunicationError:
                self.status.count("sdo_timeouts")
                continue
            self._aborted.pop(tag, None)
            self.status.count("sdo_reads")
            self._changed(obj, obj["tag"], value, self.clock.now_ms(), "sdo")

    def _sdo_aborted(self, key: str, exc: SdoAbortedError, doing: str) -> None:
        self.status.count("sdo_aborts")
        self.status.count(f"sdo_abort_0x{exc.code:08X}")
        text = SdoAbortedError.CODES.get(exc.code, "unknown abort code")
        self._aborted[key] = f"SDO abort 0x{exc.code:08X} ({text}) {doing}"

    # -- frames (the receive thread) --------------------------------------------------

    def _on_frame(self, network: Any, msg: can.Message) -> None:
        if msg.is_error_frame:
            self.status.count("error_frames")
            if msg.arbitration_id & CAN_ERR_BUSOFF:
                self._bus_off = True
            return
        if msg.is_remote_frame:
            return
        can_id, data, node_id = msg.arbitration_id, msg.data, self.cfg["node_id"]
        if can_id == 0x700 + node_id:
            if len(data) != 1 or (data[0] & 0x7F) not in NMT_STATES:
                self._bad_frame(can_id, data)
                return
            state = data[0] & 0x7F
            with self._lock:
                self._hb_mono = self.clock.monotonic_ms()
                self._nmt_state = state
            if state == 0:  # boot-up: CiA 301 7.2.8.3.2.1
                self.status.count("node_boots")
                log.warning("%s: node %d booted; restarting it", self.name, node_id)
                self._configure_due = self.clock.monotonic_ms()
            return
        if can_id == 0x80 + node_id and len(data) != 8:
            self._bad_frame(can_id, data)
            return
        if can_id == 0x580 + node_id and len(data) != 8:
            self._bad_frame(can_id, data)
            return
        want = self._pdo_lengths.get(can_id)
        if want is not None and len(data) != want:
            self._bad_frame(can_id, data)
            return
        try:
            network.notify(can_id, data, msg.timestamp)
        except Exception:  # noqa: BLE001 - one frame must not end the receive thread
            self.status.count("frame_failures")
            log.debug("%s: frame 0x%03X failed", self.name, can_id, exc_info=True)

    def _bad_frame(self, can_id: int, data: bytes) -> None:
        self.status.count("bad_frames")
        log.debug("%s: bad frame 0x%03X %s", self.name, can_id, bytes(data).hex())

    def _on_tpdo(self, pdo: Any) -> None:
        read_ms = self.clock.now_ms()
        for var in pdo.map:
            obj = self.by_index.get((var.index, var.subindex))
            tag = obj["tag"] if obj is not None else snake(var.name)
            self._changed(obj, tag, var.raw, read_ms, "tpdo", var.index, var.subindex)
        self.status.count("tpdos")

    def _on_emcy(self, entry: EmcyError) -> None:
        self.status.count("emcy")
        self._queue_event(Event(self.name, "alarm", self.clock.now_ms(), {
            "code": entry.code, "error_register": entry.register, "text": str(entry),
            "vendor": bytes(entry.data).hex()}))

    def _changed(self, obj: dict[str, Any] | None, tag: str, value: Any, read_ms: int,
                 via: str, index: int | None = None, subindex: int | None = None) -> None:
        scale = obj["scale"] if obj is not None else 1.0
        deadband = obj["deadband"] if obj is not None else 0.0
        if isinstance(value, int | float) and not isinstance(value, bool) and scale != 1.0:
            value = round(value * scale, 9)
        with self._lock:
            if tag in self._last:
                last = self._last[tag]
                if deadband == 0 or not isinstance(value, int | float):
                    if value == last:
                        return
                elif abs(value - last) <= deadband:
                    return
            event = Event(self.name, "canopen", read_ms, {
                "tag": tag, "value": value,
                "index": obj["index"] if obj is not None else index,
                "subindex": obj["subindex"] if obj is not None else subindex, "via": via})
            if self._queue_event(event):
                self._last[tag] = value  # taken back if the journal refuses it

    # -- the journal's side: one thread, so frames never wait for a sync ---------------

    def _queue_event(self, event: Event) -> bool:
        """Hand ``event`` to the journal's lanes; False (counted) if its lane is full."""
        key = event.data["tag"] if event.kind == "canopen" else "(alarm)"
        if not self._lanes.put(key, event):
            self.status.count("queue_overflows")
            if not self._overflowing:
                self._overflowing = True
                log.error("%s: %d events of %s wait for the journal; dropping new ones",
                          self.name, QUEUE_MAX, key)
            return False
        self._overflowing = False
        return True

    def _refused(self, event: Event) -> None:
        """The journal refused ``event``: the next reading of its tag is emitted again."""
        if event.kind != "canopen":
            return
        tag, value = event.data["tag"], event.data["value"]
        with self._lock:
            if tag in self._last and self._last[tag] == value:
                del self._last[tag]

TYPE = "canopen"
DEFAULT_CLASS = "telemetry"  # measurements a node sends again: state, not transactions
DRIVER = CanOpenDriver
