"""A tiny HTTP client on ``http.client``: every request has a timeout, every connection closes."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(repr=False)
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def request(
    addr: str,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """One HTTP/1.1 request to ``addr`` ("host:port"); raises ``OSError`` on transport failure."""
    host, port = split_addr(addr)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["X-Consul-Token"] = token
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, dict(resp.getheaders()), data)
    finally:
        conn.close()
