"""The HTTP transport under python-consul2 in a worker thread: http.client, a small pool.

Why not python-consul2's default (requests): measured on the same agent and thread pool,
requests manages about a third of the throughput of a bare HTTP/1.1 client and holds the
GIL longer, which shows up as event-loop lag. ``http.client`` is the leanest client in the
standard library; what requests added on top we either do not want (environment proxies,
``.netrc`` credentials, redirects that could carry the token elsewhere) or do here in a few
lines (pooling, deadlines, TLS).

Guarantees:
- every request has one absolute deadline, from connect to the last body byte, whatever the
  server does (trickled headers or body, a 1xx and then silence);
- the token is added here, as the ``X-Consul-Token`` header, and nowhere else;
- no proxy from the environment and no redirects are followed;
- a request is re-sent only when it provably never left (the write itself failed on an idle
  connection the server had closed); once written, its fate is the caller's to decide;
- a connection goes back to the pool only after a complete, well-formed answer;
- the pool keeps at most ``pool_size`` idle connections: sized to the thread pool, no
  connection is discarded under full concurrency;
- every failure is one of :mod:`.errors`, raised from nothing (no chained stdlib frames that
  hold the request's bytes, token included).
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import TypeVar

from handler_consul._consul import consul_base
from handler_consul._transport.base import (
    Params,
    TransportBase,
    accepted,
    clean,
    describe,
    target,
)
from handler_consul._transport.connections import TransportConfig, new_connection
from handler_consul._transport.errors import (
    ResponseTooLarge,
    TransportConnectionError,
    TransportError,
    TransportTimeout,
)
from handler_consul._transport.inflight import InFlight, shut_down
from handler_consul._transport.response import ConsulHTTPResponse

__all__ = ["ConsulTransport", "TransportConfig"]

T = TypeVar("T")

# A write that fails with one of these on a reused connection failed because the server had
# already closed it: nothing of the request can have been read by Consul.
_DEAD_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class ConsulTransport(TransportBase):
    """A ``consul.base.HTTPClient`` that python-consul2's endpoint classes call into, from
    worker threads."""

    def __init__(
        self,
        config: TransportConfig,
        *,
        pool_size: int,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(config, pool_size=pool_size, token=token, ssl_context=ssl_context)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        # Connections whose request is sent and whose answer is awaited (abort_in_flight).
        self._receiving: set[http.client.HTTPConnection] = set()
        self._aborting = False
        self._local = threading.local()
        # Built once: the token goes in this header and nowhere else.
        self._base_headers: dict[str, str] = {"Accept": "application/json"}
        if self._token:
            self._base_headers["X-Consul-Token"] = self._token

    # -- per-request timeout ------------------------------------------------------------

    def set_call(self, call: InFlight | None) -> None:
        """Let ``call`` abort the requests this thread makes next (see :class:`InFlight`)."""
        self._local.call = call

    def set_request_deadline(self, deadline: float | None) -> None:
        """Bound the requests this thread makes next by an absolute ``time.monotonic()``
        instant (the envelope's deadline): time spent waiting for a worker counts too."""
        self._local.deadline = deadline

    def _deadline(self) -> tuple[float, float]:
        """This request's absolute deadline, and the timeout it amounts to (for messages)."""
        now = time.monotonic()
        configured: float = self.config.timeout
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None or deadline > now + configured:
            return now + configured, configured
        return deadline, max(deadline - now, 0.0)

    # -- consul.base.HTTPClient (its ``headers`` ignored: see TransportBase) --------------

    def get(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self.request("GET", path, params, None, accept=accepted(callback)))

    def put(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self.request("PUT", path, params, data, accept=accepted(callback)))

    def delete(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self.request("DELETE", path, params, data, accept=accepted(callback)))

    def post(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self.request("POST", path, params, data, accept=accepted(callback)))

    # -- connections ---------------------------------------------------------------------

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        return new_connection(self.config, timeout=timeout, ssl_context=self._ssl_context)

    def _checkout(self) -> tuple[http.client.HTTPConnection | None, bool]:
        """An idle connection that still looks alive, or None (the caller opens one)."""
        while True:
            with self._lock:
                if self._closed:
                    raise TransportConnectionError("transport is closed", request_sent=False)
                if not self._idle:
                    return None, False
                conn = self._idle.pop()
            if _looks_alive(conn):
                return conn, True
            conn.close()

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections; connections in use close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def abort_in_flight(self) -> None:
        """End every request waiting for its answer now, from any thread: their sockets are
        shut down, so each worker's read fails at once instead of at its deadline.

        For the long-poll transport at shutdown: a blocking query would otherwise hold its
        thread for the rest of its wait. Their outcome is reported as unknown (sent).
        """
        with self._lock:
            # A worker between its checkout and its first read is not in _receiving yet: the
            # flag makes it end its request itself, so none slips through and blocks.
            self._aborting = True
            waiting = list(self._receiving)
        for conn in waiting:
            shut_down(conn)

    # -- one request ---------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: Params,
        data: str | bytes | None,
        *,
        accept: Collection[int] = (),
    ) -> consul_base.Response:
        """One request under one deadline: a Response, or a TransportError from nothing.

        ``accept`` names error statuses the caller interprets itself (a transaction's 409
        carries which operation failed); they come back as a Response, whole.
        """
        try:
            return self._request(method, path, params, data, accept)
        except TransportError as exc:
            error = exc
        # Outside the except block: this module's frames hold the request's bytes and the
        # header dict, token included.
        raise clean(error)

    def _request(
        self,
        method: str,
        path: str,
        params: Params,
        data: str | bytes | None,
        accept: Collection[int] = (),
    ) -> consul_base.Response:
        where_to = target(path, params)
        body = data.encode("utf-8") if isinstance(data, str) else data
        headers = self._base_headers
        if body:
            headers = {**headers, "Content-Type": "application/octet-stream"}
        deadline, timeout = self._deadline()
        where = self._where(method, path)
        conn, reused = self._checkout()
        while True:
            if conn is None:
                conn = self._new_connection(max(deadline - time.monotonic(), 0.001))
            try:
                _send(conn, method, where_to, body, headers, deadline)
            except _DEAD_CONNECTION_ERRORS as exc:
                conn.close()
                conn = None
                if reused:
                    # The idle connection died between the liveness check and the write: the
                    # request never left, so it goes once more on a fresh connection.
                    reused = False
                    continue
                raise TransportConnectionError(
                    f"{where}: connection lost while sending ({type(exc).__name__})",
                    request_sent=False,
                ) from None
            except BaseException as exc:
                conn.close()
                raise _failure(exc, where, timeout, request_sent=False) from None
            break
        with self._lock:
            self._receiving.add(conn)
            aborting = self._aborting
        call: InFlight | None = getattr(self._local, "call", None)
        if call is not None and not call.attach(conn):
            with self._lock:
                self._receiving.discard(conn)
            conn.close()
            raise TransportConnectionError(f"{where}: abandoned by its caller", request_sent=True)
        if aborting:
            shut_down(conn)
        try:
            response, content = self._receive(conn, deadline, where)
        except BaseException as exc:
            conn.close()
            # Sent: Consul may have applied it. Re-sending is the caller's decision.
            raise _failure(exc, where, timeout, request_sent=True) from None
        finally:
            with self._lock:
                self._receiving.discard(conn)
            if call is not None:
                call.detach()
        if response.will_close:
            conn.close()
        else:
            self._checkin(conn)
        return self._answer(method, path, response.status, response.headers, content, accept)

    def _receive(
        self, conn: http.client.HTTPConnection, deadline: float, where: str
    ) -> tuple[http.client.HTTPResponse, bytes]:
        # http.client builds the response as response_class(sock, method=...): the partial
        # hands this request's deadline to its reader.
        conn.response_class = partial(ConsulHTTPResponse, deadline=deadline)  # type: ignore[assignment]
        response = conn.getresponse()
        limit = self.config.max_response_bytes
        length = response.length
        if length is not None and length > limit:
            raise ResponseTooLarge(
                f"{where}: the answer announces {length} bytes, over the {limit}-byte cap",
                limit=limit,
            )
        content = response.read(limit + 1) if length is None else response.read()
        if len(content) > limit:
            raise ResponseTooLarge(f"{where}: the answer exceeds the {limit}-byte cap", limit=limit)
        if length is None and not response.isclosed():
            # A chunked answer read to the cap may still have its terminator unread: the
            # connection's position in the stream is unknown, so it is not reused.
            response.will_close = True
        return response, content


def _send(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | None,
    headers: Mapping[str, str],
    deadline: float,
) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    conn.timeout = remaining
    if conn.sock is not None:
        conn.sock.settimeout(remaining)
    conn.request(method, target, body=body, headers=headers)


def _looks_alive(conn: http.client.HTTPConnection) -> bool:
    """False when an idle connection is readable: the server closed it or sent stray bytes.

    Catches the common race (a server closing an idle keep-alive connection) before anything
    is written, so a write is not lost on a connection that was already dead.
    """
    sock = conn.sock
    if sock is None:
        return False
    # poll, not select: select refuses descriptors above 1024, common in busy processes.
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _failure(
    exc: BaseException, where: str, timeout: float, *, request_sent: bool
) -> BaseException:
    """The transport's error for a stdlib failure; anything else is passed on unchanged."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TimeoutError):
        return TransportTimeout(
            f"{where}: no complete answer within {timeout:.3g}s", request_sent=request_sent
        )
    if isinstance(exc, OSError | http.client.HTTPException):
        return TransportConnectionError(f"{where}: {describe(exc)}", request_sent=request_sent)
    return exc
