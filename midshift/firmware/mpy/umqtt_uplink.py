"""The node's uplink: umqtt.simple (micropython-lib) to one broker, every call bounded.

umqtt.simple is a blocking client: ``connect`` waits for CONNACK, a QoS 1 ``publish``
waits for its PUBACK, ``wait_msg`` waits for a packet, and after ``check_msg`` it puts the
socket back in blocking mode with no timeout. A broker that accepts the TCP connection
and never answers would stall the node, and with it the scanner, forever. So umqtt's
``socket`` module is replaced (in umqtt's own namespace) by ``BoundedSockets``: every
socket it makes carries ``timeout_s``, and ``setblocking(True)`` restores that timeout
instead of waiting forever. Every network call therefore returns, or fails, within
``timeout_s`` per read or write; the main loop reads the UARTs between calls.

Any failure (``OSError`` from the socket, a timeout, and the ``AssertionError``,
``IndexError`` or ``MQTTException`` umqtt raises on a broker reply it does not expect:
umqtt checks replies with asserts) closes the connection: the uplink is ``down`` and is
retried after a backoff (0.25 s doubling to ``max_retry_ms``). Nothing is resent here:
the forwarder resends from the journal once the uplink is up again.

Health: a PINGREQ every ``ping_ms`` while connected; if no byte at all arrives within
``timeout_s`` of it, the link is dead (a blackholed path, a silent broker). Incoming
messages (acks, commands) are collected by the callback into ``inbox`` and taken by the
main loop with ``take_messages()``. A message over ``MAX_READ`` bytes is refused before
umqtt allocates it (counted ``oversized``): the link is dropped and made again.

Version notes: umqtt.simple 1.1 (the newest on PyPI that pip can install, used by the
CPython tests) has no keepalive, username or last will; the micropython-lib release that
``mip install umqtt.simple`` puts on a board (1.8.0) has all three. The keepalive and the
last will are used when the client has them (tests/integration/test_umqtt_180.py runs
this uplink with 1.8.0 against mosquitto). TLS is not done on the node yet (mqtt:// only):
the batches' HMAC still proves origin and integrity end to end.
"""

try:
    import usocket as _socket
except ImportError:
    try:
        import socket as _socket
    except ImportError:  # a build without sockets (the wasm test runner): pass one in
        _socket = None

FIRST_RETRY_MS = 250
# The most the node reads in one piece: an ack is at most 512 bytes and a command 4096,
# so anything larger is refused before a buffer is made for it (the heap is ~1 MiB).
MAX_READ = 8192


class MessageTooLarge(OSError):
    """The broker announced more bytes than any message for the node can hold."""


class BoundedSocket:
    """A socket whose every blocking operation gives up after ``timeout_s``."""

    def __init__(self, sock, timeout_s, max_read=MAX_READ, nodelay=None):
        self._s = sock
        self.timeout_s = timeout_s
        self.max_read = max_read
        self.rx_bytes = 0
        sock.settimeout(timeout_s)
        if nodelay is not None:  # umqtt writes a publish in four pieces; under Nagle each
            try:  # after the first waited for the broker's delayed ACK: 44 ms a publish
                sock.setsockopt(6, nodelay, 1)  # IPPROTO_TCP is 6 in lwIP and Linux
            except OSError:
                pass

    def connect(self, addr):
        self._s.connect(addr)

    def settimeout(self, t):
        self._s.settimeout(self.timeout_s if t is None else min(t, self.timeout_s))

    def setblocking(self, flag):
        self._s.settimeout(self.timeout_s if flag else 0)

    def read(self, n):
        if n > self.max_read:  # umqtt would allocate it whole: drop the link instead
            raise MessageTooLarge("%d bytes announced, the node reads at most %d" % (
                n, self.max_read))
        data = self._s.read(n)
        if data:
            self.rx_bytes += len(data)
        return data

    def write(self, buf, n=None):
        if n is not None:
            buf = memoryview(buf)[:n]
        return self._s.write(buf)

    def close(self):
        self._s.close()


class BoundedSockets:
    """Stands in for the ``socket`` module inside umqtt.simple; remembers the last socket."""

    def __init__(self, timeout_s, module=None):
        self.timeout_s = timeout_s
        self.module = module or _socket
        self.last = None

    def getaddrinfo(self, *args):
        return self.module.getaddrinfo(*args)

    def socket(self, *args):
        # TCP_NODELAY where the port's socket module has it (others may refuse or warn)
        self.last = BoundedSocket(self.module.socket(*args), self.timeout_s,
                                  nodelay=getattr(self.module, "TCP_NODELAY", None))
        return self.last


class UmqttUplink:
    def __init__(self, host, port, client_id, subscriptions, timeout_s=1.0, ping_ms=1000,
                 keepalive_s=5, max_retry_ms=4000, will=None, mqtt_module=None,
                 socket_module=None):
        if mqtt_module is None:
            from umqtt import simple as mqtt_module
        self.mqtt = mqtt_module
        self.sockets = BoundedSockets(timeout_s, socket_module)
        mqtt_module.socket = self.sockets  # umqtt makes its sockets through this
        self.host = host
        self.port = port
        # Bytes, not str: umqtt sends len(s) as the length, right only for bytes.
        self.client_id = _b(client_id)
        self.subscriptions = [_b(t) for t in subscriptions]
        self.timeout_ms = int(timeout_s * 1000)
        self.ping_ms = ping_ms
        self.keepalive_s = keepalive_s
        self.max_retry_ms = max_retry_ms
        self.will = will
        self.client = None
        self.connected = False
        self.inbox = []
        self.last_error = None
        self._next_try_ms = 0
        self._retry_ms = FIRST_RETRY_MS
        self._ping_sent_ms = None
        self._ping_rx = 0
        self._last_ping_ms = 0
        self.counters = {"connects": 0, "connect_failures": 0, "disconnects": 0,
                         "published": 0, "publish_errors": 0, "messages": 0, "pings": 0,
                         "ping_timeouts": 0, "oversized": 0}

    # ---- connection ----------------------------------------------------------------------

    def due(self, mono_ms):
        return not self.connected and mono_ms >= self._next_try_ms

    def connect(self, mono_ms):
        """One bounded attempt (TCP, CONNECT/CONNACK, SUBSCRIBE/SUBACK each); True if up."""
        try:
            try:
                client = self.mqtt.MQTTClient(self.client_id, self.host, self.port,
                                              keepalive=self.keepalive_s)
            except TypeError:  # umqtt.simple 1.1: no keepalive argument
                client = self.mqtt.MQTTClient(self.client_id, self.host, self.port)
            if self.will is not None and hasattr(client, "set_last_will"):
                client.set_last_will(_b(self.will[0]), self.will[1], retain=True, qos=1)
            client.set_callback(self._on_message)
            self.client = client
            client.connect(True)
            for topic in self.subscriptions:
                client.subscribe(topic, 1)
        except Exception as exc:  # noqa: BLE001 - any failure means "not up"; see docstring
            self.counters["connect_failures"] += 1
            self._fail(mono_ms, "connect: %r" % (exc,))
            return False
        self.connected = True
        self.counters["connects"] += 1
        self._retry_ms = FIRST_RETRY_MS
        self._ping_sent_ms = None
        self._last_ping_ms = mono_ms
        self.last_error = None
        return True

    def _fail(self, mono_ms, why, exc=None):
        if isinstance(exc, MessageTooLarge):
            self.counters["oversized"] += 1
        if self.connected:
            self.counters["disconnects"] += 1
        self.connected = False
        self.last_error = why
        sock = self.sockets.last
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.client = None
        self._next_try_ms = mono_ms + self._retry_ms
        self._retry_ms = min(self._retry_ms * 2, self.max_retry_ms)

    def drop(self, mono_ms, why):
        """Give the connection up (Wi-Fi went down under it)."""
        if self.connected or self.client is not None:
            self._fail(mono_ms, why)

    # ---- traffic ---------------------------------------------------------------------------

    def publish(self, topic, payload, mono_ms, qos=1, retain=False):
        """Send one message (QoS 1: until the broker's PUBACK, bounded); False if the link
        failed, which also takes it down."""
        if not self.connected:
            return False
        try:
            self.client.publish(_b(topic), payload, retain, qos)
        except Exception as exc:  # noqa: BLE001
            self.counters["publish_errors"] += 1
            self._fail(mono_ms, "publish: %r" % (exc,), exc)
            return False
        self.counters["published"] += 1
        return True

    def service(self, mono_ms, max_packets=16):
        """Read what the broker sent (acks, commands, PINGRESP) without waiting for more,
        and keep the link checked by ping. False if the link failed."""
        if not self.connected:
            return False
        sock = self.sockets.last
        try:
            for _ in range(max_packets):
                before = sock.rx_bytes
                self.client.check_msg()
                if sock.rx_bytes == before:
                    break  # nothing was waiting
            if self._ping_sent_ms is not None:
                if sock.rx_bytes != self._ping_rx:
                    self._ping_sent_ms = None  # the broker is alive
                elif mono_ms - self._ping_sent_ms >= self.timeout_ms:
                    self.counters["ping_timeouts"] += 1
                    self._fail(mono_ms, "no answer to ping within %d ms" % self.timeout_ms)
                    return False
            if self._ping_sent_ms is None and mono_ms - self._last_ping_ms >= self.ping_ms:
                self._ping_rx = sock.rx_bytes
                self.client.ping()
                self.counters["pings"] += 1
                self._ping_sent_ms = self._last_ping_ms = mono_ms
        except Exception as exc:  # noqa: BLE001
            self._fail(mono_ms, "read: %r" % (exc,), exc)
            return False
        return True

    def deadline_ms(self):
        """When ``service`` or ``connect`` next has something to do by the clock."""
        if not self.connected:
            return self._next_try_ms
        if self._ping_sent_ms is not None:
            return self._ping_sent_ms + self.timeout_ms
        return self._last_ping_ms + self.ping_ms

    def _on_message(self, topic, payload):
        self.counters["messages"] += 1
        self.inbox.append((bytes(topic).decode(), bytes(payload)))

    def take_messages(self):
        out = self.inbox
        self.inbox = []
        return out

    def status(self):
        return {"connected": self.connected, "last_error": self.last_error,
                "counters": dict(self.counters)}

    def close(self):
        if self.client is not None and self.connected:
            try:
                self.client.disconnect()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.drop(0, "closed")


def _b(text):
    return text.encode() if isinstance(text, str) else text
