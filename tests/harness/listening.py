"""What the harness's loopback servers share: their addresses and request counters."""

from __future__ import annotations

import threading

__all__ = ["LoopbackListener"]


class LoopbackListener:
    """Addresses derived from ``host`` and ``port``, and counters kept under ``_lock``.

    A subclass sets ``host``, provides ``port`` (an attribute or a property), and counts
    into ``_connections`` and ``_request_lines``.
    """

    host: str
    port: int
    _lock: threading.Lock
    _connections: int
    _request_lines: list[str]

    @property
    def listen_addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http_addr(self) -> str:
        return self.listen_addr

    @property
    def url(self) -> str:
        return f"http://{self.listen_addr}"

    @property
    def connections(self) -> int:
        """Client connections accepted."""
        with self._lock:
            return self._connections

    @property
    def requests(self) -> int:
        """Request lines seen from clients (counted before any answer is sent)."""
        with self._lock:
            return len(self._request_lines)

    @property
    def request_lines(self) -> list[str]:
        """A copy of every request line seen, e.g. ``"PUT /v1/kv/a?cas=0 HTTP/1.1"``."""
        with self._lock:
            return list(self._request_lines)
