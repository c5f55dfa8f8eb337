"""``machine.UART`` and ``machine.Pin`` on CPython for the node's tests: a UART is a pty.

``PORTS`` maps a UART id to the path of a pty link (the scanner or scale emulator's).
Reads are non-blocking (``timeout=0`` is all the node uses): ``any()`` is the bytes the
kernel holds, ``read(n)`` returns up to ``n`` bytes or ``None``. A device that was
unplugged (the emulator closed the pty: reads fail with EIO, or the link is gone) reads
as silence, as a real UART with nothing on its RX pin does, and the link is re-opened on
a later call. Writes go to the pty; while no device is there they are dropped, like bits
on an open line. See README.md for what is not modelled.
"""

import errno
import fcntl
import os
import struct
import termios
import tty

PORTS: dict[int, str] = {}


class Pin:
    def __init__(self, pin_id, *args, **kwargs):
        self.id = pin_id


class UART:
    def __init__(self, uart_id, baudrate=9600, tx=None, rx=None, rxbuf=256, timeout=0,
                 **kwargs):
        if uart_id not in PORTS:
            raise ValueError(f"UART({uart_id}) does not exist")
        self.id = uart_id
        self.path = PORTS[uart_id]
        self.baudrate = baudrate
        self.rxbuf = rxbuf
        self.timeout = timeout
        self._fd = None
        self.reopens = 0
        self._open()

    def _open(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            self._fd = None
            return False
        try:
            tty.setraw(fd)
        except termios.error:
            pass
        self._fd = fd
        return True

    def _lost(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.reopens += 1

    def _ready(self):
        return self._fd is not None or self._open()

    def any(self):
        if not self._ready():
            return 0
        buf = bytearray(4)
        try:
            fcntl.ioctl(self._fd, termios.FIONREAD, buf)
        except OSError:
            self._lost()
            return 0
        return struct.unpack("i", bytes(buf))[0]

    def read(self, n=None):
        if not self._ready():
            return None
        try:
            data = os.read(self._fd, n or 4096)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:  # the device end hung up: silence, re-open later
                self._lost()
                return None
            raise
        return data or None

    def write(self, data):
        if not self._ready():
            return len(data)  # nobody on the line: the bits go nowhere
        try:
            return os.write(self._fd, bytes(data))
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno == errno.EIO:
                self._lost()
                return len(data)
            raise

    def deinit(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
