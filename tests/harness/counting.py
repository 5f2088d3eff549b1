"""A tiny TCP proxy that counts what a client sends to Consul.

toxiproxy's API does not count requests. ``CountingProxy`` sits between a client and an
agent, counts accepted connections and bytes, and records every HTTP request line
(``PUT /v1/kv/a HTTP/1.1``) seen in the client-to-server stream *before* forwarding it, so
once the client has its answer the line is already recorded. Tests use it to prove that a
refused input sent nothing to Consul, and that a request reached the path it meant.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from typing import Any, Self

from .listening import LoopbackListener
from .ports import HOST, allocate_ports, release_ports

REQUEST_LINE = re.compile(rb"^(GET|PUT|DELETE|POST|HEAD|PATCH|OPTIONS) (\S+) HTTP/1\.[01]$")
_MAX_LINE = 64 * 1024


class _RequestStream:
    """Parser state of one client connection."""

    __slots__ = ("body_left", "buf")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.body_left = 0


class CountingProxy(LoopbackListener):
    """127.0.0.1:``listen_port`` -> ``upstream`` (an agent or "host:port"), counting."""

    def __init__(self, upstream: Any, *, connect_timeout: float = 5.0) -> None:
        self.upstream = upstream
        self.upstream_addr: str = getattr(upstream, "http_addr", None) or str(upstream)
        up_host, _, up_port = self.upstream_addr.rpartition(":")
        self._upstream = (up_host, int(up_port))
        self.connect_timeout = connect_timeout
        self.host = HOST
        self._ports: list[int] = []
        self.listen_port = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conn_threads: list[threading.Thread] = []
        self._connections = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._request_lines: list[str] = []

    # -- addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.listen_port

    # -- counters (connections, requests, request_lines: LoopbackListener) --------------
    @property
    def paths(self) -> list[str]:
        """The request targets (path and query) of ``request_lines``."""
        return [line.split(" ")[1] for line in self.request_lines]

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._bytes_up

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return self._bytes_down

    def reset(self) -> None:
        """Zero every counter and forget the recorded lines."""
        with self._lock:
            self._connections = self._bytes_up = self._bytes_down = 0
            self._request_lines.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.requests < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.request_lines

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        self._ports = allocate_ports(1)
        self.listen_port = self._ports[0]
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.listen_port))
            listener.listen(64)
        except BaseException:
            listener.close()
            raise
        listener.settimeout(0.1)
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"counting-proxy-{self.listen_port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for t in list(self._conn_threads):
            t.join(5)
        if self._ports:
            release_ports(self._ports)
            self._ports = []

    def __enter__(self) -> Self:
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections += 1
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._conn_threads = [c for c in self._conn_threads if c.is_alive()]
            self._conn_threads.append(t)
            t.start()

    def _record(self, stream: _RequestStream, data: bytes) -> None:
        """Frame the client's bytes as HTTP/1.1 requests: header block, then Content-Length
        bytes of body, then the next request line (a body need not end in a newline)."""
        buf = stream.buf
        buf += data
        while buf:
            if stream.body_left:
                taken = min(stream.body_left, len(buf))
                del buf[:taken]
                stream.body_left -= taken
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_LINE:  # not HTTP we understand: keep only a tail
                    del buf[:-256]
                return
            head = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            line = head[0]
            if REQUEST_LINE.match(line):
                with self._lock:
                    self._request_lines.append(line.decode("latin-1"))
            for header in head[1:]:
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    stream.body_left = int(value.strip() or 0)

    def _serve(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            try:
                upstream = socket.create_connection(self._upstream, timeout=self.connect_timeout)
            except OSError:
                return
            stack.enter_context(upstream)
            client.settimeout(10)
            upstream.settimeout(10)
            peer = {client: upstream, upstream: client}
            reading = {client, upstream}
            stream = _RequestStream()
            while reading and not self._stop.is_set():
                try:
                    ready, _, _ = select.select(list(reading), [], [], 0.1)
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            reading.discard(sock)
                            with contextlib.suppress(OSError):
                                peer[sock].shutdown(socket.SHUT_WR)
                            continue
                        if sock is client:
                            self._record(stream, data)
                            with self._lock:
                                self._bytes_up += len(data)
                        else:
                            with self._lock:
                                self._bytes_down += len(data)
                        peer[sock].sendall(data)
                except OSError:
                    return

    def __repr__(self) -> str:
        return (
            f"<CountingProxy {self.listen_addr} -> {self.upstream_addr}: "
            f"{self.connections} connections, {self.requests} requests>"
        )
