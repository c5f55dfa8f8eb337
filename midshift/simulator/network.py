"""A TCP fault proxy on loopback, one per uplink, switchable while running.

    client --> FaultProxy (127.0.0.1:port) --> upstream (the broker, or a device)

Modes, set with ``set_mode(name, **params)`` or a JSON line on the control socket:

- ``pass``: forward both ways.
- ``blackhole``: forward nothing either way and close nothing: the client's connection stays
  ESTABLISHED with no FIN and no RST, and nothing comes back (a cable cut past the first
  hop, a dead LTE bearer). New connections are accepted too, but the upstream is not even
  dialled until traffic flows again; an upstream that hangs up meanwhile is not passed on.
- ``refuse``: close the listening socket, so a connect gets ECONNREFUSED, and reset (RST)
  the open connections, as a broker whose port went away would. The port stays held by a
  bound socket that never listens, so nothing else takes it before the proxy listens again.
- ``reset``: an action, not a state: RST every open connection now (SO_LINGER 0, then
  close) and stay in the current mode.
- ``latency``: delay each chunk by ``ms`` +/- ``jitter_ms`` (uniform), keeping byte order.
- ``bandwidth``: at most ``bytes_per_s`` in each direction, shared by all connections.
- ``stall``: forward, but about every ``every_ms`` (0.5x to 1.5x, seeded) pause all
  forwarding for ``ms`` with probability ``probability``.
- ``flap``: alternate ``up_ms`` of ``pass`` with ``down_ms`` of ``down_mode`` (``blackhole``
  or ``refuse``), starting up.

Counters (``describe()``): bytes each way, connections total/open/reset/rejected, stalls,
flaps. Memory is bounded: at most ``max_connections`` links (more are reset on accept),
and per direction a bounded queue of 16 KiB chunks, so a paused proxy pushes back on its
sender instead of buffering.

Not modelled: silence at the TCP level. The proxy's own kernel still ACKs what a client
sends into its socket buffer (kept small here), so a client's TCP_USER_TIMEOUT fires only
once that buffer is full; an MQTT ping timeout is what notices a blackhole through this
proxy. Packet loss, reordering and duplication are not modelled either (TCP hides them
from the application); for those use a network namespace with ``tc netem``. Half-close is
not kept: when one side ends, both are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from midshift.simulator.runtime_dir import runtime_dir

log = logging.getLogger(__name__)

MODES = ("pass", "blackhole", "refuse", "reset", "latency", "bandwidth", "stall", "flap")
PARAMS: dict[str, dict[str, Any]] = {  # allowed parameters and their defaults, per mode
    "pass": {}, "blackhole": {}, "refuse": {}, "reset": {},
    "latency": {"ms": 50, "jitter_ms": 0},
    "bandwidth": {"bytes_per_s": 10_000},
    "stall": {"ms": 500, "every_ms": 2000, "probability": 1.0},
    "flap": {"up_ms": 3000, "down_ms": 3000, "down_mode": "blackhole"},
}
DOWN_MODES = ("blackhole", "refuse")  # what "down" means in flap
PARAM_HELP = {  # each parameter in a sentence, for the command line's proxy-set flags
    "ms": "latency delay, or stall length (ms)", "jitter_ms": "latency spread, +/- ms",
    "bytes_per_s": "bandwidth cap per direction",
    "every_ms": "stall: mean time between stall chances (ms)",
    "probability": "stall: chance of a stall at each chance, 0..1",
    "up_ms": "flap: time up (ms)", "down_ms": "flap: time down (ms)",
    "down_mode": "flap: what down means (default blackhole)",
}
CHUNK = 16384
QUEUE_CHUNKS = 16
# Small, so a paused proxy pushes back on the sender soon; TCP_NODELAY beside it, or
# Nagle and delayed ACKs on such small windows cap loopback at ~200 KB/s.
SOCKET_BUFFER = 65536
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def control_path(name: str) -> Path:
    return runtime_dir() / f"{name}.sock"


def check_mode(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a mode and its parameters; returns them with defaults filled in."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    unknown = set(params) - set(PARAMS[mode])
    if unknown:
        raise ValueError(f"mode {mode}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(PARAMS[mode])) or 'none'}")
    p = {**PARAMS[mode], **params}
    for k, v in p.items():
        if k == "down_mode":
            if v not in DOWN_MODES:
                raise ValueError(f"mode flap: down_mode {v!r} is not blackhole or refuse")
        elif isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ValueError(f"mode {mode}: {k}={v!r} must be a number >= 0")
    if mode == "bandwidth" and p["bytes_per_s"] <= 0:
        raise ValueError("mode bandwidth: bytes_per_s must be > 0")
    if mode == "stall" and (p["probability"] > 1 or p["every_ms"] <= 0):
        raise ValueError("mode stall: probability must be in [0, 1] and every_ms > 0")
    if mode == "flap" and (p["up_ms"] <= 0 or p["down_ms"] <= 0):
        raise ValueError("mode flap: up_ms and down_ms must be > 0")
    return p


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER on, timeout 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _small_buffers(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Link:
    """One proxied connection: its sockets, its handler task and its two pumps."""

    def __init__(self, client: asyncio.StreamWriter, handler: asyncio.Task | None) -> None:
        self.writers = [client]
        self.handler = handler
        self.pumps: list[asyncio.Task] = []

    def reset(self) -> None:
        for w in self.writers:
            _abort(w)
        for t in self.pumps:
            t.cancel()
        if self.handler is not None:
            self.handler.cancel()


class FaultProxy:
    """Forward ``listen`` to ``upstream`` with switchable faults; see the module docstring."""

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                 name: str | None = None, seed: int = 0, control: bool = True,
                 max_connections: int = 256) -> None:
        self.name = name or f"proxy-{os.getpid()}-{id(self) & 0xFFFF:x}"
        if not _NAME.match(self.name):
            raise ValueError(f"proxy name {self.name!r}: use 1-64 letters, digits, '_', '.', '-'")
        self.upstream = upstream
        self.listen_addr = listen
        self.rng = random.Random(seed)
        self.max_connections = max_connections
        self.mode = "pass"
        self.params: dict[str, Any] = {}
        self.port = 0
        self.bytes_up = self.bytes_down = 0
        self.connections_total = self.connections_reset = self.connections_rejected = 0
        self.stalls = self.flaps = 0
        self.control_path = control_path(self.name) if control else None
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._port_hold: socket.socket | None = None  # bound, never listening: see _hold_port
        self._control_server: asyncio.Server | None = None
        self._mode_task: asyncio.Task | None = None
        self._next_free_s = {"up": 0.0, "down": 0.0}

    # ---- from any thread -----------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> FaultProxy:
        if self.control_path is not None:
            self._claim_control_path()
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(ready, errors),),
                                        name=f"fault-proxy {self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError(f"fault proxy {self.name} did not start within {timeout_s} s")
        if errors:
            self._thread.join(timeout_s)
            raise errors[0]
        log.info("fault proxy %s: %s:%d -> %s:%d", self.name, self.listen_addr[0], self.port,
                 *self.upstream)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Reset every connection, close the listener and the control socket, end the thread."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_addr[0], self.port)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "listen": f"{self.listen_addr[0]}:{self.port}",
                "upstream": f"{self.upstream[0]}:{self.upstream[1]}", "mode": self.mode,
                "params": dict(self.params),
                "forwarding": bool(self._flowing and self._flowing.is_set()),
                "listening": self._server is not None,
                "control": str(self.control_path) if self.control_path else None,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "connections_open": len(self._links),
                "connections_total": self.connections_total,
                "connections_reset": self.connections_reset,
                "connections_rejected": self.connections_rejected,
                "stalls": self.stalls, "flaps": self.flaps}

    def set_mode(self, mode: str, **params: Any) -> dict[str, Any]:
        """Switch mode now (thread-safe); returns the proxy's description."""
        checked = check_mode(mode, params)
        if self._loop is None:
            raise RuntimeError(f"fault proxy {self.name} is not running")
        asyncio.run_coroutine_threadsafe(self._apply(mode, checked), self._loop).result(10)
        return self.describe()

    def _claim_control_path(self) -> None:
        assert self.control_path is not None
        if len(str(self.control_path).encode()) > 107:  # sun_path is 108 bytes with the NUL
            raise ValueError(f"control socket path {self.control_path} is too long for a Unix "
                             "socket; set MIDSHIFT_RUNTIME_DIR to a shorter directory")
        if self.control_path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.control_path))
                except OSError:  # nobody listening: left over from a killed proxy
                    self.control_path.unlink(missing_ok=True)
                else:
                    raise RuntimeError(f"a fault proxy named {self.name!r} is already running "
                                       f"(control socket {self.control_path})")

    # ---- inside the loop -----------------------------------------------------------------

    async def _main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        try:
            await self._listen()
            if self.control_path is not None:
                self._control_server = await asyncio.start_unix_server(
                    self._control, path=str(self.control_path))
        except BaseException as exc:  # handed to start()'s caller
            errors.append(exc)
            ready.set()
            await self._close_servers()
            return
        ready.set()
        await self._stopping.wait()
        if self._mode_task is not None:
            self._mode_task.cancel()
        for link in list(self._links):
            link.reset()
        await self._close_servers()
        # asyncio.run cancels and awaits whatever handler tasks remain.

    async def _close_servers(self) -> None:
        self._release_port()
        for srv in (self._server, self._control_server):
            if srv is not None:
                srv.close()
                with contextlib.suppress(Exception):
                    await srv.wait_closed()
        self._server = self._control_server = None
        if self.control_path is not None:
            self.control_path.unlink(missing_ok=True)

    async def _listen(self) -> None:
        port = self.port or self.listen_addr[1]
        self._release_port()
        self._server = await asyncio.start_server(self._accept, self.listen_addr[0], port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _apply(self, mode: str, params: dict[str, Any]) -> None:
        if mode == "reset":
            self._reset_links()
            log.info("fault proxy %s: reset, staying in %s", self.name, self.mode)
            return
        if self._mode_task is not None:
            self._mode_task.cancel()
            self._mode_task = None
        self.mode, self.params = mode, params
        self._next_free_s = {"up": 0.0, "down": 0.0}
        await self._set_state(flowing=mode not in ("blackhole", "refuse"),
                              listening=mode != "refuse")
        if mode == "stall":
            self._mode_task = asyncio.ensure_future(self._stall_loop(params))
        elif mode == "flap":
            self._mode_task = asyncio.ensure_future(self._flap_loop(params))
        log.info("fault proxy %s: mode %s %s", self.name, mode, params or "")

    def _hold_port(self) -> None:
        """Keep the port while refusing: a socket bound to it but not listening, so a
        connect is still refused (RST) but no other socket can take the port meanwhile.
        Without it the proxy lost its port now and then: the kernel hands free ports in
        the ephemeral range to outgoing connects, including the agent's own retries to
        that very port (a TCP self-connect), and listening again failed "address in use".
        Any socket bound by bind(), even with SO_REUSEADDR, keeps connects off the port."""
        for reuse in (0, 1):  # plain first: then no other bind() may share the port;
            hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:  # SO_REUSEADDR only where our own closed links left TIME_WAITs on it
                hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                hold.bind((self.listen_addr[0], self.port))
                break
            except OSError as exc:
                hold.close()
                error = exc
        else:  # connects are refused all the same; only the port may be lost
            log.warning("fault proxy %s: cannot hold port %d while refusing: %s", self.name,
                        self.port, error)
            return
        self._port_hold = hold

    def _release_port(self) -> None:
        if self._port_hold is not None:
            self._port_hold.close()
            self._port_hold = None

    def _reset_links(self) -> None:
        for link in list(self._links):
            link.reset()
            self._links.discard(link)
            self.connections_reset += 1

    async def _set_state(self, flowing: bool, listening: bool) -> None:
        assert self._flowing is not None
        if not listening:
            if self._server is not None:
                self._server.close()
                self._server = None
                self._hold_port()
            self._reset_links()
        elif self._server is None:
            await self._listen()
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _stall_loop(self, p: dict[str, Any]) -> None:
        assert self._flowing is not None
        while True:  # ends when the mode changes (task cancelled)
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * p["every_ms"] / 1000)
            if self.rng.random() < p["probability"]:
                self.stalls += 1
                self._flowing.clear()
                await asyncio.sleep(p["ms"] / 1000)
                self._flowing.set()

    async def _flap_loop(self, p: dict[str, Any]) -> None:
        while True:  # ends when the mode changes (task cancelled)
            try:
                await self._set_state(flowing=True, listening=True)
            except OSError as exc:  # the port was taken while we refused: try next period
                log.warning("fault proxy %s: cannot listen again on %d: %s", self.name,
                            self.port, exc)
            await asyncio.sleep(p["up_ms"] / 1000)
            self.flaps += 1
            await self._set_state(flowing=False, listening=p["down_mode"] != "refuse")
            await asyncio.sleep(p["down_ms"] / 1000)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        if len(self._links) >= self.max_connections:
            self.connections_rejected += 1
            _abort(writer)
            return
        _small_buffers(writer)
        link = _Link(writer, asyncio.current_task())
        self._links.add(link)
        self.connections_total += 1
        try:
            await self._serve(link, reader, writer)
        except asyncio.CancelledError:
            # Reset, or shutdown: the link's end is the outcome. Not re-raised, because
            # Python 3.11's start_server callback logs a cancelled handler as an error.
            pass
        finally:
            for t in link.pumps:
                t.cancel()
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved: the link's end is the outcome, not an error
            for w in link.writers:
                with contextlib.suppress(Exception):
                    w.close()
            self._links.discard(link)

    async def _serve(self, link: _Link, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        await self._flowing.wait()  # blackholed: accepted, but the upstream is not dialled
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), 10)
        except (OSError, TimeoutError) as exc:
            log.info("fault proxy %s: upstream %s:%d unreachable: %s", self.name,
                     *self.upstream, exc)
            _abort(writer)  # as if the far end refused: the client sees a reset
            return
        _small_buffers(up_writer)
        link.writers.append(up_writer)
        link.pumps = [asyncio.ensure_future(self._pump(reader, up_writer, "up")),
                      asyncio.ensure_future(self._pump(up_reader, writer, "down"))]
        done, _ = await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
        await self._flowing.wait()  # a hang-up is news too: not passed on while silent
        if any(not t.cancelled() and isinstance(t.exception(), ConnectionResetError)
               for t in done):
            for w in link.writers:  # pass a reset on as a reset
                _abort(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        """Read one direction into a bounded queue; a second task writes it out when due."""
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.ensure_future(self._deliver(queue, writer, direction))
        last_due = 0.0
        try:
            while True:  # ends at EOF, on a socket error, or when the link is reset
                await self._flowing.wait()  # paused: stop reading, let back-pressure work
                data = await reader.read(CHUNK)
                if not data:
                    break
                due = loop.time()
                if self.mode == "latency":
                    spread = self.rng.uniform(-1, 1) * self.params["jitter_ms"]
                    due += max(0.0, self.params["ms"] + spread) / 1000
                last_due = max(due, last_due)  # jitter never reorders bytes
                await queue.put((last_due, data))
            await queue.put(None)
            await sender
        finally:
            sender.cancel()

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter,
                       direction: str) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        while True:  # ends at the end marker (None) or when cancelled
            item = await queue.get()
            if item is None:
                return
            due, data = item
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            while data:  # bounded: each pass writes at least one byte
                piece = data[:self._piece_size()]
                await self._throttle(direction, len(piece))
                await self._flowing.wait()  # nothing awaits between this and the write
                writer.write(piece)
                if direction == "up":
                    self.bytes_up += len(piece)
                else:
                    self.bytes_down += len(piece)
                data = data[len(piece):]
                await writer.drain()

    def _piece_size(self) -> int:
        if self.mode != "bandwidth":
            return CHUNK
        return max(1, min(CHUNK, int(self.params["bytes_per_s"] / 20)))  # ~50 ms per piece

    async def _throttle(self, direction: str, n_bytes: int) -> None:
        """Bandwidth cap: schedule this piece after the ones before it, all links together."""
        if self.mode != "bandwidth":
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next_free_s[direction])
        self._next_free_s[direction] = start + n_bytes / self.params["bytes_per_s"]
        if start > now:
            await asyncio.sleep(start - now)

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            req = json.loads(line or b"{}")
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object like {\"mode\": \"pass\"}")
            if "mode" in req:
                mode = req.pop("mode")
                await self._apply(mode, check_mode(mode, req))
            elif req:
                raise ValueError(f"request has no 'mode' (modes: {', '.join(MODES)})")
            reply = {"ok": True, **self.describe()}
        except (ValueError, OSError, TimeoutError) as exc:
            reply = {"ok": False, "error": str(exc)}
        with contextlib.suppress(Exception):
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
            writer.close()


def send_control(name: str, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request to a running proxy by name; returns its JSON reply."""
    path = control_path(name)
    not_running = ValueError(f"no fault proxy named {name!r} is running in {runtime_dir()} "
                             f"(running: {', '.join(running_proxies()) or 'none'})")
    if not path.exists():
        raise not_running
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise not_running from None
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):  # bounded by the socket timeout and the reply's end
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ValueError(f"fault proxy {name!r} closed its control socket without a reply")
    return json.loads(data)


def running_proxies() -> list[str]:
    return sorted(p.stem for p in runtime_dir().glob("*.sock"))
