"""A till's HTTP client for the till API tests and the bench (stdlib http.client)."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any


class TillClient:
    def __init__(self, port: int, token: str | None, host: str = "127.0.0.1",
                 timeout_s: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        self.conn: http.client.HTTPConnection = (
            http.client.HTTPConnection(host, port, timeout=timeout_s) if tls is None else
            http.client.HTTPSConnection(host, port, timeout=timeout_s, context=tls))
        self.token = token

    def request(self, method: str, path: str, body: Any = None, key: str | None = None,
                raw: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, Any]]:
        h = {"Content-Type": "application/json"}
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        if key is not None:
            h["Idempotency-Key"] = key
        h.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            self.conn.request(method, path, body=data, headers=h)
            resp = self.conn.getresponse()
            out = resp.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()  # the next request reconnects
            raise
        return resp.status, json.loads(out) if out else {}

    def post(self, doc: Any, key: str | None) -> tuple[int, dict[str, Any]]:
        return self.request("POST", "/v1/transactions", doc, key)

    def close(self) -> None:
        self.conn.close()
