"""The gateway's read-only status page for store staff, off unless ``[status_page] bind``.

cheroot's WSGI server (the one the till API runs; two threads) serves ``GET /``: the
agent's status document (``Agent.snapshot()``, the source of the ``status`` topic and the
metrics) rendered by ``status_view.render``, refreshing itself, no script. Every other
path is 404, every other method 405.

Who may read it: bound to loopback, anyone on the gateway; beyond loopback the site
config insists on a token (``token_file``: HTTP Basic with the token as the password, so
a plain browser asks for it, or ``Authorization: Bearer``; compared in constant time) or
client certificates (``client_ca``, TLS required, checked at the handshake). A request
without a valid token gets 401 and nothing else.

When the far end is gone: nothing is kept per visitor; a status document that cannot be
built (the agent stopping) is a 503 saying so, never a page with made-up values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from cheroot import wsgi

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.status_view import render

log = logging.getLogger(__name__)

HEADERS = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "no-referrer"),
           # Inline style only: no script can run even if an escape were ever missed.
           ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'")]
REALM = 'Basic realm="midshift gateway status", charset="UTF-8"'


def read_token(path: str) -> bytes:
    """The sha256 of the token in ``path`` (kept, the token itself is not)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("status_page.token_file", f"cannot read {path}: {exc.strerror}",
                          "a file holding the page's token") from None
    if len(token) < 16:
        raise ConfigError("status_page.token_file", f"{path}: a token of {len(token)} "
                          "characters is too short", "at least 16 characters "
                          "(openssl rand -hex 16)")
    return hashlib.sha256(token.encode()).digest()


def store_zone(store: dict[str, Any] | None) -> tuple[tzinfo | None, str]:
    """The store's zone (``[store] tz``), else the gateway's local time."""
    if store and store.get("tz"):
        from zoneinfo import ZoneInfo
        return ZoneInfo(store["tz"]), str(store["tz"])
    return None, time.strftime("%Z")


class StatusPage:
    """``status`` (a callable returning the status document) served per ``cfg``
    (``StatusPageConfig``); ``port`` is the bound one after ``start``."""

    def __init__(self, cfg: Any, status: Callable[[], dict[str, Any]],
                 store: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.status = status
        self.token_sha = read_token(cfg.token_file) if cfg.token_file else None
        self.tz, self.tz_name = store_zone(store)
        self.server: wsgi.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.counters = {"pages": 0, "unauthorized": 0}

    def start(self) -> StatusPage:
        host, port = self.cfg.bind
        self.server = wsgi.Server((host, port), self.app, numthreads=2,
                                  server_name="midshift-status", timeout=10,
                                  shutdown_timeout=2)
        if self.cfg.tls_cert:
            self.server.ssl_adapter = self._tls()
        try:
            self.server.prepare()
        except OSError as exc:
            raise ConfigError("status_page.bind", f"cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}", "a free port on an address of this "
                              "gateway") from None
        self.port = self.server.bind_addr[1]
        return self

    def serve(self) -> None:
        """Answer from now on (``start`` only binds: a visitor during the agent's start
        waits instead of reading a half-built status)."""
        if self.server is None:
            raise RuntimeError("start() first")
        self._thread = threading.Thread(target=self.server.serve, name="status-page",
                                        daemon=True)
        self._thread.start()
        log.info("status page on %s://%s:%d/", "https" if self.cfg.tls_cert else "http",
                 self.cfg.bind[0], self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._thread is not None:
            self._thread.join(5)

    def _tls(self) -> Any:
        import ssl

        from cheroot.ssl.builtin import BuiltinSSLAdapter
        adapter = BuiltinSSLAdapter(self.cfg.tls_cert, self.cfg.tls_key)
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cfg.client_ca:
            adapter.context.load_verify_locations(self.cfg.client_ca)
            adapter.context.verify_mode = ssl.CERT_REQUIRED
        return adapter

    # ---- HTTP ------------------------------------------------------------------------------

    def authorized(self, header: str) -> bool:
        """A token is asked for only when one is configured (loopback without one is open;
        client certificates were checked at the handshake)."""
        if self.token_sha is None:
            return True
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        else:
            return False
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self.token_sha)

    def app(self, environ: dict[str, Any],
            start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if not self.authorized(environ.get("HTTP_AUTHORIZATION", "")):
            self.counters["unauthorized"] += 1
            return self._send(start_response, "401 Unauthorized", "The page needs the "
                              "gateway's status page token.\n", [("WWW-Authenticate", REALM)])
        if path not in ("/", "/index.html"):
            return self._send(start_response, "404 Not Found", "Only / is here.\n")
        if method not in ("GET", "HEAD"):
            return self._send(start_response, "405 Method Not Allowed",
                              "The page is read-only.\n", [("Allow", "GET, HEAD")])
        try:
            page = render(self.status(), self.tz, self.cfg.refresh_s, self.tz_name)
        except Exception:  # noqa: BLE001 - a visitor must not take the agent down
            log.exception("status page: the status document could not be built")
            return self._send(start_response, "503 Service Unavailable",
                              "The gateway is starting or stopping; try again shortly.\n",
                              [("Retry-After", "5")])
        self.counters["pages"] += 1
        data = page.encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(data))), *HEADERS])
        return [b"" if method == "HEAD" else data]

    @staticmethod
    def _send(start_response: Callable[..., Any], status: str, text: str,
              extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        data = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(data))), *HEADERS, *(extra or [])])
        return [data]
