"""A throwaway PostgreSQL cluster for tests and benchmarks, from Debian's ``postgresql``.

``ThrowawayPostgres`` runs ``initdb`` into a fresh temporary directory, starts the server
(``postgres`` itself, as a child process, not daemonised by ``pg_ctl``, so it gets the
parent-death signal of ``midshift/simulator/children.py`` and never outlives a killed test run) on
a free loopback port (its unix socket in the same directory, so it never touches
``/var/run/postgresql``), creates a database, and removes everything on ``close()``. ``url`` is a ``postgresql://`` URL for psycopg and the ledger.

PostgreSQL refuses to run as root: as root, the cluster is owned by and run as an
unprivileged user (``postgres``, which Debian's package creates; override with ``user=``),
through ``runuser`` for the short tools and ``Popen(user=...)`` for the server, and the
temporary directory is handed to that user.

Settings: durability is left as shipped (``fsync``, ``synchronous_commit``,
``full_page_writes`` on), so a benchmark on it measures committed, flushed transactions.
Only sizes are raised (``shared_buffers``, ``max_wal_size``) so a million-row benchmark
does not spend its time in forced checkpoints. What it does not model: replicas,
failover, a network between worker and server (loopback TCP only).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from midshift.simulator.broker import free_port
from midshift.simulator.children import spawn


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says what to install or fix."""


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` with initdb, else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class ThrowawayPostgres:
    def __init__(self, database: str = "midshift", user: str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.bin = find_pg_bin()
        if self.bin is None:
            raise PostgresUnavailable("PostgreSQL is not installed (Debian: apt-get install "
                                      "postgresql; .ci/setup does it)")
        self.run_as = user or ("postgres" if os.geteuid() == 0 else None)
        if self.run_as is not None:
            try:
                pw = pwd.getpwnam(self.run_as)
            except KeyError:
                raise PostgresUnavailable(f"user {self.run_as!r} does not exist: PostgreSQL "
                                          "will not run as root (useradd --system "
                                          f"{self.run_as})") from None
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.database = database
        self.settings = {"shared_buffers": "256MB", "max_wal_size": "4GB",
                         "checkpoint_timeout": "15min", "max_connections": "50",
                         **(settings or {})}
        self.port = 0
        self.directory: Path | None = None
        self.server: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{self.database}"

    @property
    def role(self) -> str:
        return self.run_as or pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *cmd: str, timeout_s: float = 120) -> str:
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              cwd=self.directory)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{cmd[0]} failed ({done.returncode}): "
                                      f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def start(self) -> ThrowawayPostgres:
        self.directory = Path(tempfile.mkdtemp(prefix="midshift-pg-"))
        if self.run_as is not None:
            os.chown(self.directory, self.uid, self.gid)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-E", "UTF8", "--locale=C",
                      "-A", "trust", "-U", self.role)
            self.port = free_port()
            self._args = [a for k, v in {**self.settings, "listen_addresses": "127.0.0.1"}
                          .items() for a in ("-c", f"{k}={v}")]
            self._args += ["-p", str(self.port), "-k", str(self.directory)]
            self._start_server()
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.role,
                      self.database)
        except BaseException:
            self.close()
            raise
        return self

    def _start_server(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until it accepts connections (``pg_isready``)."""
        assert self.directory is not None
        argv = [str(self.bin / "postgres"), "-D", str(self.data_dir), *self._args]
        # SIGINT on our death: PostgreSQL's "fast" shutdown (sessions ended, clean exit).
        with open(self.directory / "pg.log", "ab") as log_file:
            self.server = spawn(argv, death_signal=signal.SIGINT, cwd=self.directory,
                                stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT,
                                **({"user": self.uid, "group": self.gid}
                                   if self.run_as is not None else {}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # bounded by the deadline
            if self.server.poll() is not None:
                raise PostgresUnavailable(f"postgres exited ({self.server.returncode}) at "
                                          f"start; its log says:\n{self.log_tail()}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port)], timeout=10, check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresUnavailable(f"postgres did not accept connections within {timeout_s} s; "
                                  f"its log says:\n{self.log_tail()}")

    def _signal_server(self, sig: int, timeout_s: float = 60.0) -> None:
        """SIGINT: fast shutdown; SIGQUIT: immediate (no checkpoint, as a crash)."""
        server, self.server = self.server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(sig)
        try:
            server.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)

    def restart(self, immediate: bool = True) -> None:
        """Stop (``immediate``: no checkpoint, as a crash; recovery replays the WAL) and
        start again on the same port."""
        self._signal_server(signal.SIGQUIT if immediate else signal.SIGINT)
        self._start_server()

    def create_database(self, name: str) -> str:
        """A new empty database in this cluster (one per test keeps tests apart); its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.role, name)
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{name}"

    def log_tail(self, lines: int = 30) -> str:
        path = (self.directory or Path("/nonexistent")) / "pg.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else "(no log)"

    def stop(self) -> None:
        self._signal_server(signal.SIGINT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        if self.directory is None:
            return
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
