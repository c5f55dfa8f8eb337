"""MicroPython's ``socket`` (as ``usocket``) on CPython for the node's tests.

MicroPython sockets are streams: ``read(n)`` returns up to ``n`` bytes (fewer only at the
end of the stream or when a timeout cuts in after some arrived), ``None`` when the socket
is non-blocking and nothing is there, and raises ``OSError(ETIMEDOUT)`` when a timeout
passes with nothing read; ``write(buf)`` sends it all or raises. This module gives a
CPython socket that surface, and refuses to connect while ``network.WLAN.link_up`` is
false. See README.md for what is not modelled.
"""

import errno
import socket as _s
import weakref

AF_INET = _s.AF_INET
SOCK_STREAM = _s.SOCK_STREAM
IPPROTO_TCP = _s.IPPROTO_TCP  # as ports built with lwIP's TCP options have them
TCP_NODELAY = _s.TCP_NODELAY
_live: "weakref.WeakSet[socket]" = weakref.WeakSet()


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return _s.getaddrinfo(host, port, af, type or _s.SOCK_STREAM, proto, flags)


def sever_all():
    for sock in list(_live):
        sock.sever()


class socket:  # noqa: N801 - MicroPython's name
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        self._s = _s.socket(af, type, proto)
        _live.add(self)

    def settimeout(self, t):
        self._s.settimeout(t)

    def setblocking(self, flag):
        self._s.setblocking(flag)

    def setsockopt(self, level, opt, value):
        self._s.setsockopt(level, opt, value)

    def connect(self, addr):
        import network
        if not network.WLAN.link_up:
            raise OSError(errno.EHOSTUNREACH, "no route to host (Wi-Fi down)")
        try:
            self._s.connect(addr)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "connect timed out") from None

    def read(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self._s.recv(n - len(buf))
            except BlockingIOError:
                return buf or None
            except TimeoutError:
                if buf:
                    return buf
                raise OSError(errno.ETIMEDOUT, "read timed out") from None
            if not chunk:
                return buf
            buf += chunk
        return buf

    def write(self, buf):
        data = buf.encode() if isinstance(buf, str) else bytes(buf)  # MicroPython takes str
        try:
            self._s.sendall(data)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "write timed out") from None
        return len(data)

    def sever(self):
        try:
            self._s.shutdown(_s.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        _live.discard(self)
        self._s.close()
