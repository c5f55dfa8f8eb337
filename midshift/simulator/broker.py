"""A local MQTT broker for tests and scenarios: mosquitto from a generated config.

``Broker`` writes ``mosquitto.conf`` into its own directory and runs mosquitto as a child
process: a plain listener on a free loopback port, optionally a TLS listener (client
certificates required, the certificate's CN used as the username, which the ACL file's
``pattern ... %u`` lines then confine to the gateway's own topics), optional persistence,
an optional ACL file, a log file. MQTT 5, 3.1.1 and 3.1 clients all work against it.

- ``start()`` returns once every listener accepts connections (bounded wait; a config
  mosquitto rejects is reported with its log).
- ``crash()`` is SIGKILL, as a power cut or the OOM killer would be: no clean shutdown.
- ``restart()`` comes back on the same ports; ``stop()`` is SIGTERM, waited for.

Persistence: with ``persistence=True`` mosquitto saves its database after every
``autosave_changes`` changes (subscriptions, retained and queued messages), not only at
shutdown, so a SIGKILL loses at most the last changes, and a restart brings back sessions,
queued QoS 1 messages and retained messages. Without it a restart forgets all of them:
the case the agent's end-to-end acks exist for. Note mosquitto saves shortly *after* it
acknowledges: a PUBACK does not mean the message is on disk.

Sharp edges: mosquitto started as root drops to user ``mosquitto``, which cannot write our
temporary directory, so the config says ``user root`` when we are root. Ports are picked
free just before start; another process may take one in between (start then fails loudly).

Fallback: where mosquitto is not installed (or ``backend="amqtt"``), an in-process amqtt
broker runs on a background thread instead, with a warning. It speaks MQTT 3.1.1 only
(MQTT 5 clients are refused), keeps nothing across a restart, cannot require client
certificates or read a mosquitto ACL file (asking for those raises ``BrokerUnavailable``),
and ``crash()`` is a shutdown, since a thread cannot be SIGKILLed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midshift.firmware.core import topics
from midshift.host_tools.provision.acl import PROMPT_PACKETS
from midshift.simulator.children import spawn

log = logging.getLogger(__name__)

MOSQUITTO_FALLBACK_PATH = "/usr/sbin/mosquitto"  # Debian installs it outside a user's PATH


class BrokerUnavailable(RuntimeError):
    """The broker cannot be started as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener: the CA that signs client certificates, the server's cert and key."""

    cafile: str | Path
    certfile: str | Path
    keyfile: str | Path
    require_certificate: bool = True
    use_identity_as_username: bool = False
    port: int = 0  # 0: a free port, kept across restarts
    crlfile: str | Path | None = None  # a CRL from the CA: revoked client certs are refused


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and os.access(MOSQUITTO_FALLBACK_PATH, os.X_OK):
        found = MOSQUITTO_FALLBACK_PATH
    return found


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One local broker; see the module docstring. Use as a context manager or start/close."""

    def __init__(self, directory: str | Path | None = None, port: int = 0,
                 persistence: bool = False, acl_file: str | Path | None = None,
                 allow_anonymous: bool = True, tls: TlsListener | None = None,
                 autosave_changes: int = 1, backend: str = "auto",
                 host: str = "127.0.0.1", bridge_to: str | None = None,
                 bridge_topics: tuple[str, ...] = (topics.ROOT + "/#",)) -> None:
        if backend not in ("auto", "mosquitto", "amqtt"):
            raise ValueError(f"broker backend {backend!r} is not one of auto, mosquitto, amqtt")
        self.binary = find_mosquitto() if backend != "amqtt" else None
        if self.binary is None and backend == "mosquitto":
            raise BrokerUnavailable("mosquitto is not installed (Debian: apt-get install "
                                    "mosquitto); backend='auto' falls back to amqtt")
        self.backend = "mosquitto" if self.binary else "amqtt"
        if self.backend == "amqtt":
            if tls is not None or acl_file is not None:
                raise BrokerUnavailable("TLS client certificates and ACL files need mosquitto "
                                        "(apt-get install mosquitto); the amqtt fallback has "
                                        "neither")
            log.warning("%s: using an in-process amqtt broker (MQTT 3.1.1 only, nothing "
                        "kept across restarts)", "asked for amqtt" if backend == "amqtt"
                        else "mosquitto not found")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="midshift-broker-")
        self.directory = Path(directory) if directory else Path(self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.tls_port = (tls.port or free_port(host)) if tls else None
        self.persistence = persistence
        self.autosave_changes = autosave_changes
        self.acl_file = Path(acl_file) if acl_file else None
        self.allow_anonymous = allow_anonymous
        # A mosquitto bridge to another broker ("HOST:PORT"), as a site broker bridged to a
        # cloud broker: each topic pattern both ways at QoS 1. mosquitto keeps the bridge
        # from echoing a message back where it came from (try_private), so one publish
        # reaches a subscriber on either side once.
        self.bridge_to = bridge_to
        self.bridge_topics = bridge_topics
        self.process: subprocess.Popen | None = None
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.db_path = self.directory / "mosquitto.db"
        self._amqtt: _AmqttThread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls_port else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        if self.backend == "amqtt":
            return self._amqtt is not None
        return self.process is not None and self.process.poll() is None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "url": self.url, "tls_url": self.tls_url,
                "pid": self.pid, "persistence": self.persistence,
                "directory": str(self.directory), "log": str(self.log_path)}

    def write_config(self) -> Path:
        lines = ["# generated by midshift midshift/simulator/broker.py"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot write here
        lines += [
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "max_queued_messages 100000",
            PROMPT_PACKETS,  # as provision broker's config
        ]
        if self.persistence and self.autosave_changes > 0:
            lines += ["autosave_on_changes true", f"autosave_interval {self.autosave_changes}"]
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls is not None:
            t = self.tls
            lines += [f"listener {self.tls_port} {self.host}", f"cafile {t.cafile}",
                      f"certfile {t.certfile}", f"keyfile {t.keyfile}",
                      f"require_certificate {'true' if t.require_certificate else 'false'}",
                      "use_identity_as_username "
                      f"{'true' if t.use_identity_as_username else 'false'}"]
            if t.crlfile is not None:  # read at start: restart() after the CRL changes
                lines.append(f"crlfile {t.crlfile}")
        if self.bridge_to:  # a bridge section comes last: its options end the file
            lines += [f"connection bridge-{self.port}", f"address {self.bridge_to}",
                      "try_private true", "cleansession true", "restart_timeout 1 2",
                      "bridge_protocol_version mqttv311"]
            lines += [f"topic {t} both 1" for t in self.bridge_topics]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self, timeout_s: float = 10.0) -> Broker:
        if self.running:
            return self
        if self.backend == "amqtt":
            self._amqtt = _AmqttThread(self.host, self.port, self.allow_anonymous).start(timeout_s)
            return self
        self.write_config()
        assert self.binary is not None
        with open(self.directory / "stderr.log", "ab") as err:
            # A child of its own group that dies with us (midshift/simulator/children.py).
            self.process = spawn([self.binary, "-c", str(self.config_path)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err)
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        deadline = time.monotonic() + timeout_s
        waiting = list(ports)
        while waiting and time.monotonic() < deadline:  # bounded by the deadline
            if self.process.poll() is not None:
                break
            if _accepts(self.host, waiting[0]):
                waiting.pop(0)
            else:
                time.sleep(0.02)
        if waiting:
            self._signal_and_wait(signal.SIGKILL)
            raise BrokerUnavailable(f"mosquitto did not listen on {self.host}:{waiting[0]} "
                                    f"within {timeout_s} s; its log says:\n{self.log_tail()}")
        log.info("mosquitto pid %d listening on %s%s", self.process.pid, self.url,
                 f" and {self.tls_url}" if self.tls_url else "")
        return self

    def crash(self) -> None:
        """SIGKILL: no clean shutdown, no final persistence save."""
        if self.backend == "amqtt":
            self.stop()
        else:
            self._signal_and_wait(signal.SIGKILL)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait (mosquitto saves its database on the way out)."""
        if self.backend == "amqtt":
            if self._amqtt is not None:
                self._amqtt.stop(timeout_s)
                self._amqtt = None
            return
        self._signal_and_wait(signal.SIGTERM, timeout_s)

    def restart(self, crash: bool = False, timeout_s: float = 10.0) -> Broker:
        """Stop (or crash) and start again on the same ports."""
        if crash:
            self.crash()
        else:
            self.stop(timeout_s)
        return self.start(timeout_s)

    def _signal_and_wait(self, sig: int, timeout_s: float = 10.0) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto pid %d ignored signal %d for %s s: SIGKILL", p.pid, sig,
                        timeout_s)
            p.kill()
            p.wait(timeout=10)

    def wait_saved(self, *needles: bytes, timeout_s: float = 5.0) -> bool:
        """True once the saved database holds every needle (a client id, a topic, a
        payload); False after ``timeout_s``. mosquitto saves just after it acknowledges,
        so a crash straight after a SUBACK or PUBACK may lose that change: a test of
        "back from its saved state" waits here first. mosquitto writes the file aside
        and renames it, so a read never sees half a save."""
        deadline = time.monotonic() + timeout_s
        while True:  # bounded by the deadline
            try:
                saved = self.db_path.read_bytes()
            except FileNotFoundError:
                saved = b""
            if all(n in saved for n in needles):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for path in (self.directory / "stderr.log", self.log_path):
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out) or "(no log)"

    def close(self) -> None:
        """Stop and remove the temporary directory, if this broker made it."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AmqttThread:
    """An amqtt broker on its own event loop thread: the fallback where mosquitto is absent."""

    def __init__(self, host: str, port: int, allow_anonymous: bool) -> None:
        self.config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": allow_anonymous}},
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float) -> _AmqttThread:
        try:
            from amqtt.broker import Broker as AmqttBroker
        except ImportError as exc:
            raise BrokerUnavailable("neither mosquitto nor amqtt is installed "
                                    "(apt-get install mosquitto, or pip install amqtt)") from exc
        ready = threading.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            broker = AmqttBroker(self.config)
            try:
                await broker.start()
            except BaseException as exc:  # handed to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            await self._stop.wait()
            await broker.shutdown()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True,
                                        name="amqtt-broker")
        self._thread.start()
        if not ready.wait(timeout_s):
            raise BrokerUnavailable(f"amqtt broker did not start within {timeout_s} s")
        if errors:
            self._thread.join(timeout_s)
            raise BrokerUnavailable(f"amqtt broker did not start: {errors[0]}")
        return self

    def stop(self, timeout_s: float) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout_s)
