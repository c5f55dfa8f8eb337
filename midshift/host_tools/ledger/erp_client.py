"""One HTTP conversation with the ERP's webhook (issue 20), stdlib ``http.client`` only.

``post`` sends one JSON body with ``Idempotency-Key`` and the bearer token and returns an
``Answer`` (status, ``Retry-After`` in seconds, body text); it never raises for the far
end: a refused connection, a reset or a timeout is status 0 with the error as the text,
so the delivery worker has one shape to judge. The connection is kept alive between
requests and opened again after any failure. Every call is bounded by ``timeout_s``.
"""

from __future__ import annotations

import email.utils
import http.client
import time
from urllib.parse import urlsplit

MAX_RETRY_AFTER_S = 600.0  # a Retry-After beyond this is read as this (a misconfigured ERP)


class Answer:
    """What the ERP said: ``status`` 0 when it said nothing (connection failed)."""

    __slots__ = ("status", "retry_after_s", "text")

    def __init__(self, status: int, retry_after_s: float | None, text: str) -> None:
        self.status, self.retry_after_s, self.text = status, retry_after_s, text

    def __repr__(self) -> str:
        return f"Answer({self.status}, retry_after_s={self.retry_after_s}, {self.text[:80]!r})"


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an ``http(s)://HOST[:PORT]/PATH`` URL; ValueError
    restating the form otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not http(s)://HOST[:PORT]/PATH")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number in 1..65535") from None
    return parts.scheme, parts.hostname, port, (parts.path or "/") + (
        f"?{parts.query}" if parts.query else "")


def retry_after_s(value: str | None, now_s: float | None = None) -> float | None:
    """RFC 9110 10.2.3: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when - (time.time() if now_s is None else now_s)), MAX_RETRY_AFTER_S)


class ErpClient:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.scheme, self.host, self.port, self.path = parse_url(url)
        self.token, self.timeout_s = token, timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def post(self, body: bytes, key: str) -> Answer:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn = self._connection()
            conn.request("POST", self.path, body, headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            answer = Answer(resp.status, retry_after_s(resp.getheader("Retry-After")), text)
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            return answer
        except (OSError, http.client.HTTPException) as exc:  # timeouts are OSErrors
            self.close()
            return Answer(0, None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
