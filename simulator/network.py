"""A TCP fault proxy on loopback: one per uplink, switchable while running.

    client --> FaultProxy(listen) --> upstream (the broker)

Modes (``set_mode(name, **params)``, or a JSON line on the control socket):

- ``pass``: forward both ways.
- ``blackhole``: accept, keep every socket open, forward nothing either way: the client's
  connection stays ESTABLISHED, no FIN or RST, and nothing comes back (a cable cut past
  the first hop). New connections are accepted too, and stay silent.
- ``refuse``: close the listener (a connect is refused) and reset the open connections.
- ``reset``: RST every open connection once (SO_LINGER 0), then back to ``pass``.
- ``latency``: delay every chunk by ``ms`` plus up to ``jitter_ms``, order kept.
- ``bandwidth``: at most ``bytes_per_s`` each way.
- ``stall``: forward, but pause for ``ms`` at random moments, about every ``every_ms``.
- ``flap``: alternate ``up_ms`` of ``pass`` with ``down_ms`` of ``down_mode``
  (``blackhole`` or ``refuse``).

Not modelled: silence at the TCP level. The proxy's kernel still ACKs what the client
sends into its socket buffer (kept small here), so a client's TCP_USER_TIMEOUT fires only
once that buffer is full; the MQTT ping timeout is what notices a blackhole through this
proxy. For packet-level loss use a network namespace with ``tc netem`` or an nft drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("pass", "blackhole", "refuse", "reset", "latency", "bandwidth", "stall", "flap")
PARAMS = {
    "pass": set(), "blackhole": set(), "refuse": set(), "reset": set(),
    "latency": {"ms", "jitter_ms"}, "bandwidth": {"bytes_per_s"},
    "stall": {"ms", "every_ms"}, "flap": {"up_ms", "down_ms", "down_mode"},
}
CHUNK = 16384
SOCKET_BUFFER = 16384  # small, so a paused proxy pushes back on the sender soon


def runtime_dir() -> Path:
    d = Path(os.environ.get("MIDSHIFT_RUNTIME_DIR", Path(tempfile.gettempdir()) / "midshift-sim"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_mode(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a mode and its parameters; returns them with defaults filled in."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    unknown = set(params) - PARAMS[mode]
    if unknown:
        raise ValueError(f"mode {mode}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(PARAMS[mode])) or 'none'}")
    p = dict(params)
    if mode == "latency":
        p.setdefault("ms", 50)
        p.setdefault("jitter_ms", 0)
    elif mode == "bandwidth":
        p.setdefault("bytes_per_s", 10_000)
    elif mode == "stall":
        p.setdefault("ms", 500)
        p.setdefault("every_ms", 2000)
    elif mode == "flap":
        p.setdefault("up_ms", 3000)
        p.setdefault("down_ms", 3000)
        p.setdefault("down_mode", "blackhole")
        if p["down_mode"] not in ("blackhole", "refuse"):
            raise ValueError(f"flap down_mode {p['down_mode']!r} is not blackhole or refuse")
    for k, v in p.items():
        if k != "down_mode" and (not isinstance(v, int | float) or v < 0):
            raise ValueError(f"mode {mode}: {k}={v!r} must be a number >= 0")
    if mode == "bandwidth" and p["bytes_per_s"] <= 0:
        raise ValueError("bandwidth: bytes_per_s must be > 0")
    return p


class _Link:
    """One proxied connection: two sockets and the tasks pumping between them."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task] = []

    def reset(self) -> None:
        for w in (self.client, self.upstream):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


class FaultProxy:
    """Forward ``listen`` to ``upstream`` with switchable faults; see the module docstring."""

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                 name: str | None = None, seed: int = 0, control: bool = True) -> None:
        self.upstream = upstream
        self.listen_addr = listen
        self.name = name or f"proxy-{os.getpid()}-{id(self) & 0xFFFF:x}"
        self.rng = random.Random(seed)
        self.mode = "pass"
        self.params: dict[str, Any] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections_total = 0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._control_server: asyncio.base_events.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._mode_task: asyncio.Task | None = None
        self._want_control = control
        self.control_path = runtime_dir() / f"{self.name}.sock"
        self.port = 0

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # surfaced to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-proxy {self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"fault proxy {self.name} did not start")
        if errors:
            raise errors[0]
        log.info("fault proxy %s: 127.0.0.1:%d -> %s:%d", self.name, self.port, *self.upstream)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
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
                "params": self.params, "control": str(self.control_path),
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "connections_open": len(self._links), "connections_total": self.connections_total}

    def set_mode(self, mode: str, **params: Any) -> dict[str, Any]:
        """Switch mode now (thread-safe); returns the proxy's description."""
        checked = check_mode(mode, params)
        if self._loop is None:
            raise RuntimeError("fault proxy is not running")
        fut = asyncio.run_coroutine_threadsafe(self._apply(mode, checked), self._loop)
        fut.result(timeout=10)
        return self.describe()

    # ---- inside the loop -----------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()
        if self._want_control:
            with contextlib.suppress(FileNotFoundError):
                self.control_path.unlink()
            self._control_server = await asyncio.start_unix_server(
                self._control, path=str(self.control_path))

    async def _listen(self) -> None:
        port = self.port or self.listen_addr[1]
        self._server = await asyncio.start_server(self._accept, self.listen_addr[0], port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._mode_task:
            self._mode_task.cancel()
        for link in list(self._links):
            link.reset()
        for srv in (self._server, self._control_server):
            if srv is not None:
                srv.close()
                with contextlib.suppress(Exception):
                    await srv.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()

    async def _apply(self, mode: str, params: dict[str, Any]) -> None:
        if self._mode_task is not None:
            self._mode_task.cancel()
            self._mode_task = None
        self.params = params
        if mode == "reset":
            for link in list(self._links):
                link.reset()
            mode = "pass"
            self.params = {}
        await self._enter(mode)
        if mode == "stall":
            self._mode_task = asyncio.ensure_future(self._stall_loop(params))
        elif mode == "flap":
            self._mode_task = asyncio.ensure_future(self._flap_loop(params))
        log.info("fault proxy %s: mode %s %s", self.name, mode, self.params or "")

    async def _enter(self, mode: str) -> None:
        """Set the basic state for a mode: flowing or not, listening or not."""
        assert self._flowing is not None
        self.mode = mode if mode not in ("reset",) else "pass"
        if mode in ("blackhole", "refuse"):
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            for link in list(self._links):
                link.reset()
        elif self._server is None:
            await self._listen()

    async def _stall_loop(self, p: dict[str, Any]) -> None:
        assert self._flowing is not None
        while True:  # ends when the mode changes (task cancelled)
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * p["every_ms"] / 1000)
            self._flowing.clear()
            await asyncio.sleep(p["ms"] / 1000)
            self._flowing.set()

    async def _flap_loop(self, p: dict[str, Any]) -> None:
        while True:  # ends when the mode changes (task cancelled)
            await self._enter("pass")
            self.mode = "flap"
            await asyncio.sleep(p["up_ms"] / 1000)
            await self._enter(p["down_mode"])
            self.mode = "flap"
            await asyncio.sleep(p["down_ms"] / 1000)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _small_buffers(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.info("fault proxy %s: upstream %s:%d unreachable: %s", self.name,
                     *self.upstream, exc)
            writer.transport.abort()
            return
        _small_buffers(up_writer)
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.connections_total += 1
        link.tasks = [asyncio.ensure_future(self._pump(reader, up_writer, "up")),
                      asyncio.ensure_future(self._pump(up_reader, writer, "down"))]
        try:
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in link.tasks:
                t.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        assert self._flowing is not None
        pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:  # ends when the connection ends (None) or is cancelled
                item = await pending.get()
                if item is None:
                    return
                due, data = item
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                if self.mode == "bandwidth":
                    await asyncio.sleep(len(data) / self.params["bytes_per_s"])

        sender = asyncio.ensure_future(deliver())
        try:
            while True:  # ends at EOF or when the link is reset
                await self._flowing.wait()  # a blackhole stops reading: back-pressure
                data = await reader.read(CHUNK if self.mode != "bandwidth" else 1024)
                if not data:
                    break
                due = loop.time()
                if self.mode == "latency":
                    due += (self.params["ms"] + self.rng.uniform(0, self.params["jitter_ms"])) / 1000
                await pending.put((due, data))
            await pending.put(None)
            await sender
        finally:
            sender.cancel()

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            req = json.loads(line or b"{}")
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            if "mode" in req:
                mode = req.pop("mode")
                params = check_mode(mode, req)
                await self._apply(mode, params)
            reply = {"ok": True, **self.describe()}
        except (ValueError, TimeoutError) as exc:
            reply = {"ok": False, "error": str(exc)}
        writer.write((json.dumps(reply) + "\n").encode())
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()


def _small_buffers(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


def send_control(name: str, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Talk to a running proxy by name (its control socket in the runtime directory)."""
    path = runtime_dir() / f"{name}.sock"
    if not path.exists():
        running = sorted(p.stem for p in runtime_dir().glob("*.sock"))
        raise ValueError(f"no fault proxy named {name!r} is running "
                         f"(running: {', '.join(running) or 'none'})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):  # bounded by the timeout
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
