"""A pseudo-terminal standing in for a USB-serial adapter, shared by the serial emulators.

The emulator owns the pty master; the client end is the slave (``/dev/pts/N``), which
pyserial opens like ``/dev/ttyUSB0``. Clients are configured with ``link_path``, a symlink
that stays put across unplug and replug, the way udev keeps ``/dev/serial/by-id/...``
stable, and is re-pointed at the new ``/dev/pts/N`` on ``reappear()``.

How it behaves when the far end is gone:

- No client has the slave open (the kernel reports POLLHUP on the master): ``write()``
  drops the bytes and returns 0, like a UART whose receiver is not listening. Dropping
  here, rather than letting the kernel buffer them, keeps a device's ground truth honest:
  pyserial flushes the input queue when it opens a port, so buffered bytes would be lost
  anyway, silently.
- A client has just opened the slave: writes are still dropped for ``connect_grace_s``
  (or until the client sends something), so bytes cannot fall into the input flush
  pyserial does right after ``open()``. ``wait_client()`` waits for the end of it.
- The client stops reading: the kernel buffers about 18 KiB, then ``write()`` accepts
  only part or nothing (an overrun); the rest is dropped and counted in ``dropped_bytes``.
- ``disappear()``: master closed, so the kernel hangs up the client's tty (pyserial's
  ``read()`` raises ``SerialException``, ``write()`` fails with EIO) and the symlink is
  removed, so opening it fails as with an unplugged adapter. ``reappear()`` makes a new
  pty and replaces the symlink atomically; the client must re-open the link.

One reader: ``read()`` is meant to be called by one thread (the device's own); ``write()``,
``disappear()``, ``reappear()`` and ``close()`` may come from any thread.

Not modelled: baud rate, parity, stop bits and line timing (a pty moves bytes at memory
speed and ignores the speed in termios, so a client's wrong baud setting changes nothing;
the scanner's ``wrong_baud_noise()`` produces its symptoms instead); modem lines (DTR,
RTS, CTS, DSR ioctls fail on a pty and pyserial ignores that); breaks, flow control,
framing and parity errors. A client that closes and re-opens the port within one poll
of the device thread (about 20 ms) is not seen to reconnect, so no grace applies.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
import tty
from pathlib import Path
from typing import Any, Self

from midshift.simulator.ground_truth import GroundTruthLog
from midshift.simulator.runtime_dir import runtime_dir

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often a reader re-checks whether a client has the port open
_HUP = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PtyPort:
    """A pty with a stable symlink; see the module docstring for the far-end behaviour."""

    def __init__(self, link_path: str | Path, connect_grace_s: float = 0.05) -> None:
        self.link_path = Path(link_path)
        self.connect_grace_s = connect_grace_s
        self.dropped_bytes = 0
        self.last_drop = ""  # why the last write() dropped bytes: port_gone, no_client, overrun
        self._lock = threading.Lock()
        self._master: int | None = None
        self._path = ""
        self._generation = 0
        self._client_since: float | None = None  # monotonic time a client was first seen
        self._client_ready = threading.Event()
        self._wake_r = self._wake_w = -1  # wakes a read() in progress; made by open()
        self._closed = False

    # -- life cycle ------------------------------------------------------------------

    def open(self) -> PtyPort:
        """Create the pty and point the link at it."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.link_path}: port is closed")
            if self._wake_r < 0:
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                os.set_blocking(self._wake_w, False)
            if self._master is None:
                self._create()
        return self

    def _create(self) -> None:
        if self.link_path.exists() and not self.link_path.is_symlink():
            raise FileExistsError(f"{self.link_path} exists and is not a symlink; "
                                  "refusing to replace it with a pty link")
        master, slave = os.openpty()
        try:
            # Raw mode: no echo, no CR/LF translation, no line editing. It stays set on
            # the pty after our slave fd is closed, so a client that sets nothing
            # (cat, a hand-written reader) still gets the bytes unchanged.
            tty.setraw(slave)
            path = os.ttyname(slave)
        finally:
            # Not holding the slave open is what makes the master report POLLHUP while
            # no client has the port open.
            os.close(slave)
        os.set_blocking(master, False)
        self.link_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(path, tmp)
        os.replace(tmp, self.link_path)
        self._master, self._path = master, path
        self._generation += 1
        self._client_since = None
        self._client_ready.clear()
        log.debug("%s -> %s", self.link_path, path)

    def _destroy(self) -> None:
        if self._master is None:
            return
        os.close(self._master)
        self._master = None
        if self.link_path.is_symlink() and os.readlink(self.link_path) == self._path:
            self.link_path.unlink()
        self._path = ""
        self._generation += 1
        self._client_since = None
        self._client_ready.clear()

    def disappear(self) -> None:
        """Unplug: hang up the client's tty and remove the link."""
        with self._lock:
            self._destroy()
        self.interrupt()
        log.info("%s: port gone", self.link_path)

    def reappear(self) -> None:
        """Replug: a new pty behind the same link path."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.link_path}: port is closed")
            if self._wake_r < 0:
                raise RuntimeError(f"{self.link_path}: reappear() before open()")
            if self._master is None:
                self._create()
        self.interrupt()
        log.info("%s: port back as %s", self.link_path, self._path)

    def close(self) -> None:
        """Close every fd this port holds and remove the link; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._destroy()
            self._closed = True
            if self._wake_r >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def __enter__(self) -> PtyPort:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The current slave device (``/dev/pts/N``), or "" while the port is gone."""
        return self._path

    @property
    def is_up(self) -> bool:
        return self._master is not None

    def wait_client(self, timeout_s: float) -> bool:
        """Wait until a client has the port open and is past its grace, so writes reach
        it. True if so within the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    return False
                if self._client_state(now):
                    return True
            if now >= deadline:
                return False
            self._client_ready.wait(min(POLL_S, deadline - now))

    def interrupt(self) -> None:
        """Wake a ``read()`` in progress (used on stop and on port changes)."""
        with self._lock:
            if self._wake_w < 0:
                return
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:
                pass  # the pipe is full: a wake is pending anyway

    def _client_state(self, now: float) -> bool:
        """Under the lock: is a client attached and past its grace? Updates the tracking."""
        if self._master is None:
            return False
        po = select.poll()
        po.register(self._master, select.POLLOUT)
        events = po.poll(0)
        if not events or events[0][1] & _HUP:
            if self._client_since is not None:
                log.debug("%s: client closed the port", self.link_path)
            self._client_since = None
            self._client_ready.clear()
            return False
        if self._client_since is None:
            self._client_since = now
        if now - self._client_since >= self.connect_grace_s:
            self._client_ready.set()
        return self._client_ready.is_set()

    # -- data ------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Send bytes to the client; returns how many were taken, the rest is dropped."""
        with self._lock:
            self.last_drop = ""
            if self._master is None:
                self.last_drop = "port_gone"
            elif not self._client_state(time.monotonic()):
                self.last_drop = "no_client"
            if self.last_drop:
                self.dropped_bytes += len(data)
                return 0
            view = memoryview(data)
            sent = 0
            while sent < len(data):
                try:
                    sent += os.write(self._master, view[sent:])
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.warning("%s: write failed: %s", self.link_path, exc)
                    break
            if sent < len(data):
                self.last_drop = "overrun"
                self.dropped_bytes += len(data) - sent
                log.warning("%s: overrun, %d of %d bytes dropped (client not reading)",
                            self.link_path, len(data) - sent, len(data))
            return sent

    def read(self, max_bytes: int = 4096, timeout_s: float = 0.1) -> bytes:
        """Bytes the client wrote, waiting up to ``timeout_s``; b"" on timeout, while the
        port is gone or no client is attached, and when woken by ``interrupt()``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            now = time.monotonic()
            with self._lock:
                if self._closed or self._wake_r < 0:
                    return b""
                wake_r = self._wake_r
                attached = self._client_state(now)
                fd, generation = self._master, self._generation
                client_seen = self._client_since is not None
                waiting_grace = client_seen and not attached
            remaining = deadline - now
            if remaining <= 0:
                return b""
            po = select.poll()
            po.register(wake_r, select.POLLIN)
            # While no client is attached the master reports POLLHUP all the time, so
            # it is only re-checked every POLL_S; otherwise wait on it directly.
            if fd is not None and client_seen:
                po.register(fd, select.POLLIN)
                slice_s = POLL_S if waiting_grace else remaining
            else:
                slice_s = POLL_S
            try:
                events = dict(po.poll(int(min(remaining, slice_s) * 1000) + 1))
            except OSError:
                events = {}
            if events.get(wake_r, 0):
                with self._lock:
                    if not self._closed:
                        try:
                            os.read(wake_r, 512)
                        except BlockingIOError:
                            pass
                return b""
            if fd is None or not events.get(fd, 0) & select.POLLIN:
                continue
            with self._lock:
                if generation != self._generation or self._master is None:
                    return b""  # the port changed while we waited; that fd is not ours
                try:
                    data = os.read(self._master, max_bytes)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EIO):
                        continue  # EIO: the client closed between poll and read
                    raise
                if data and not self._client_ready.is_set():
                    # The client writes, so its open() (and its input flush) is over.
                    self._client_ready.set()
                return data


def pty_device_config(name: str, kind: str, cfg: dict[str, Any], config_keys: tuple[str, ...],
                      ground_truth_dir: str | Path | None
                      ) -> tuple[str | Path, dict[str, Any], Path | None]:
    """The shared part of a pty device's ``from_config``: checks the keys and ``kind``, and
    returns (link path, the remaining keyword arguments, ground-truth file or None)."""
    unknown = sorted(set(cfg) - set(config_keys))
    if unknown:
        raise ValueError(f"devices.{name}: unknown key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(config_keys)}")
    if cfg.get("kind", kind) != kind:
        raise config_error(name, "kind", cfg["kind"], f"{kind!r}")
    path = cfg.get("path", runtime_dir() / name)
    if not isinstance(path, str | Path) or not str(path):
        raise config_error(name, "path", path, "a file path for the port's link")
    kwargs = {k: v for k, v in cfg.items() if k not in ("kind", "path")}
    gt = None
    if ground_truth_dir is not None:
        Path(ground_truth_dir).mkdir(parents=True, exist_ok=True)
        gt = Path(ground_truth_dir) / f"{name}.jsonl"
    return path, kwargs, gt


def config_error(name: str, key: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"devices.{name}.{key}: {value!r} is not {expected}")


class PtyDevice:
    """The life cycle the serial emulators share: one pty, one ground-truth log, one thread.

    A subclass sets ``kind`` and ``config_keys`` and, in its ``__init__``, ``name``,
    ``port`` (a ``PtyPort``), ``ground_truth`` (a ``GroundTruthLog``) and ``_truth_lock``
    (held while a write and its ground-truth entry happen, so ``truth()`` matches the wire),
    then calls ``_init_life()``; it implements ``_run()``, which returns soon after
    ``_stop`` is set.
    """

    kind = "device"
    config_keys: tuple[str, ...] = ()
    name: str
    port: PtyPort
    ground_truth: GroundTruthLog
    _truth_lock: threading.Lock

    def _init_life(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any],
                    ground_truth_dir: str | Path | None) -> Self:
        """Build from a ``[devices.NAME]`` table; the ground truth goes to ``DIR/NAME.jsonl``."""
        path, kwargs, gt = pty_device_config(name, cls.kind, cfg, cls.config_keys,
                                             ground_truth_dir)
        return cls(name, path, ground_truth_path=gt, **kwargs)

    def start(self) -> Self:
        if self._thread is not None or self._stopped:
            raise RuntimeError(f"{self.kind} {self.name}: start() once per instance")
        self.port.open()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, close the pty (the link goes) and the ground-truth file."""
        self._stop.set()
        self.port.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stopped = True
        self.port.close()
        self.ground_truth.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def truth(self) -> list[dict[str, Any]]:
        """The ground-truth entries so far, consistent with the wire: everything a client
        has received is in it."""
        with self._truth_lock:
            return list(self.ground_truth.entries)

    def _run(self) -> None:
        raise NotImplementedError
