"""The HTTP transport under python-consul2 on the event loop (``io="asyncio"``).

python-consul2's endpoint classes return whatever the HTTP client's methods return; here
those are coroutines, so ``await client.kv.get(key)`` runs on the loop with no thread at all
(the same seam python-consul2's own ``consul.aio`` uses, without its session per request).

It keeps every promise of the threads mode's :class:`~.blocking.ConsulTransport`:

- every request has one absolute deadline, from connect to the last body byte, whatever the
  server does (trickled headers or body, a 1xx and then silence);
- the token is added here, as the ``X-Consul-Token`` header, and nowhere else;
- no proxy from the environment and no redirects are followed;
- a request is re-sent only when it provably never left (the write itself failed on an idle
  connection the server had closed); once written, its fate is the caller's to decide;
- a connection goes back to the pool only after a complete, well-formed answer; one whose
  exchange was cut short (deadline, cancellation, an error) is dropped, never reused;
- the pool keeps at most ``pool_size`` idle connections, sized to the bulkhead;
- every failure is one of :mod:`.errors`, raised from nothing.

The request's deadline comes from a context variable (:func:`set_request_deadline`), the
asyncio counterpart of the threads mode's thread-local.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from handler_consul._consul import consul_base
from handler_consul._deadlines import Deadlines
from handler_consul._transport.aioconn import (
    Connection,
    ConnectionFault,
    TooLarge,
    open_connection,
)
from handler_consul._transport.base import (
    Params,
    TransportBase,
    accepted,
    clean,
    describe,
    target,
)
from handler_consul._transport.connections import TransportConfig
from handler_consul._transport.errors import (
    ResponseTooLarge,
    TransportConnectionError,
    TransportError,
    TransportTimeout,
)

__all__ = ["AsyncConsulTransport", "reset_request_deadline", "set_request_deadline"]

T = TypeVar("T")

# The envelope's deadline (an absolute time.monotonic() instant) for the requests made in
# this context; None: only the configured timeout bounds them.
_DEADLINE: ContextVar[float | None] = ContextVar("handler_consul_request_deadline", default=None)


def set_request_deadline(deadline: float | None) -> Token[float | None]:
    """Bound the requests this context makes next by an absolute ``time.monotonic()``
    instant (the envelope's deadline: time spent waiting for a slot counts too); give the
    token back to :func:`reset_request_deadline` when done."""
    return _DEADLINE.set(deadline)


def reset_request_deadline(token: Token[float | None]) -> None:
    _DEADLINE.reset(token)


class _MaskedBytes(bytes):
    """The token's header line, whose repr is masked (locals-capturing error trackers)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "b'X-Consul-Token: **********'"

    # bytes' own str() (and so %s and format()) would not go through __repr__.
    __str__ = __repr__


class AsyncConsulTransport(TransportBase):
    """A ``consul.base.HTTPClient`` whose methods are coroutines.

    Built on any thread; used only from the event loop it first connects on (a connection of
    another loop is never reused).
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        pool_size: int,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(config, pool_size=pool_size, token=token, ssl_context=ssl_context)
        self._idle: list[Connection] = []
        self._deadlines: Deadlines | None = None  # of the loop in use
        if config.unix_socket:
            host = "localhost"  # the agent does not look at it; HTTP/1.1 requires one
        else:
            shown = f"[{config.host}]" if ":" in config.host else config.host
            host = f"{shown}:{config.port}"
        # Built once: the token goes in this header line and nowhere else.
        self._fixed = f"Host: {host}\r\nAccept: application/json\r\n".encode("ascii")
        self._auth = _MaskedBytes(f"X-Consul-Token: {token}\r\n".encode("ascii") if token else b"")

    # -- per-request deadline (set_request_deadline) -----------------------------------------

    def _deadline(self) -> tuple[float, float]:
        """Seconds left for this request, and the timeout they amount to (for messages)."""
        now = time.monotonic()
        configured: float = self.config.timeout
        deadline = _DEADLINE.get()
        if deadline is None or deadline > now + configured:
            return configured, configured
        remaining = max(deadline - now, 0.0)
        return remaining, remaining

    # -- consul.base.HTTPClient (its ``headers`` ignored: see TransportBase) ----------------

    async def get(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(await self.request("GET", path, params, None, accept=accepted(callback)))

    async def put(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(await self.request("PUT", path, params, data, accept=accepted(callback)))

    async def delete(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(await self.request("DELETE", path, params, data, accept=accepted(callback)))

    async def post(
        self,
        callback: Callable[[consul_base.Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(await self.request("POST", path, params, data, accept=accepted(callback)))

    # -- connections -------------------------------------------------------------------------

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def _checkout(self, loop: asyncio.AbstractEventLoop) -> Connection | None:
        """An idle connection of this loop that still looks alive, or None."""
        if self._closed:
            raise TransportConnectionError("transport is closed", request_sent=False)
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.loop is loop and conn.looks_alive():
                return conn
            conn.close()
        return None

    def _checkin(self, conn: Connection) -> None:
        if conn.reusable and not self._closed and len(self._idle) < self._pool_size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close idle connections; connections in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- one request -------------------------------------------------------------------------

    def _encode(self, method: str, path: str, params: Params, body: bytes | None) -> bytes:
        """The request's bytes. Path and query are percent-encoded, so no CR or LF can reach
        the request line; the token header is the one built in __init__."""
        head = f"{method} {target(path, params)} HTTP/1.1\r\n".encode("ascii") + self._fixed
        if body:
            length = b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n" % len(body)
            return b"".join((head, self._auth, length, b"\r\n", body))
        if method == "GET":
            return b"".join((head, self._auth, b"\r\n"))
        return b"".join((head, self._auth, b"Content-Length: 0\r\n\r\n"))

    async def request(
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
            return await self._request(method, path, params, data, accept)
        except TransportError as exc:
            error = exc
        # Outside the except block: this module's frames hold the request's bytes, token
        # included.
        raise clean(error)

    async def _request(
        self,
        method: str,
        path: str,
        params: Params,
        data: str | bytes | None,
        accept: Collection[int] = (),
    ) -> consul_base.Response:
        loop = asyncio.get_running_loop()
        body = data.encode("utf-8") if isinstance(data, str) else data
        remaining, timeout = self._deadline()
        if remaining <= 0:
            # Past its deadline, a request is not written at all (as in threads mode): on a
            # reused connection it would otherwise leave, and its outcome become unknown.
            raise TransportTimeout(
                f"{self._where(method, path)}: no complete answer within {timeout:.3g}s",
                request_sent=False,
            )
        # The loop's clock may not be time.monotonic()'s (uvloop's is not): convert once.
        loop_deadline = loop.time() + remaining
        conn = self._checkout(loop)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(loop, loop_deadline, method, path, timeout)
            waiter = conn.send(self._encode(method, path, params, body))
            if not conn.write_failed():
                break
            waiter.cancel()
            conn.abort()
            conn = None
            if reused:
                # The idle connection died between the liveness check and the write: the
                # request never left, so it goes once more on a fresh connection.
                reused = False
                continue
            raise TransportConnectionError(
                f"{self._where(method, path)}: connection lost while sending", request_sent=False
            )
        status, headers, content = await self._receive(
            conn, waiter, loop_deadline, method, path, timeout
        )
        self._checkin(conn)
        return self._answer(method, path, status, headers, content, accept)

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        loop_deadline: float,
        method: str,
        path: str,
        timeout: float,
    ) -> Connection:
        remaining = loop_deadline - loop.time()
        late = f"no complete answer within {timeout:.3g}s"
        if remaining <= 0:
            raise TransportTimeout(f"{self._where(method, path)}: {late}", request_sent=False)
        try:
            return await open_connection(
                self.config, ssl_context=self._ssl_context, timeout=remaining
            )
        except TimeoutError:
            raise TransportTimeout(
                f"{self._where(method, path)}: {late}", request_sent=False
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise TransportConnectionError(
                f"{self._where(method, path)}: {describe(exc)}", request_sent=False
            ) from None

    async def _receive(
        self,
        conn: Connection,
        waiter: asyncio.Future[tuple[Any, Any, bytes]],
        loop_deadline: float,
        method: str,
        path: str,
        timeout: float,
    ) -> tuple[int, Any, bytes]:
        """The answer, or the transport's error; on any failure, cancellation included, the
        connection is dropped: its position in the stream is unknown."""
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not conn.loop:
            deadlines = self._deadlines = Deadlines(conn.loop)
        timer = deadlines.schedule(loop_deadline, conn.expire)
        answered = False
        try:
            answer = await waiter
            answered = True
        except TooLarge as exc:
            limit = self.config.max_response_bytes
            raise ResponseTooLarge(f"{self._where(method, path)}: {exc}", limit=limit) from None
        except TimeoutError:
            # Sent: Consul may have applied it. Re-sending is the caller's decision.
            raise TransportTimeout(
                f"{self._where(method, path)}: no complete answer within {timeout:.3g}s",
                request_sent=True,
            ) from None
        except ConnectionFault as exc:
            raise TransportConnectionError(
                f"{self._where(method, path)}: {exc}", request_sent=True
            ) from None
        finally:
            deadlines.cancel(timer)
            if not answered:
                # Failed, timed out or cancelled, even cancelled just after its answer had
                # come: the caller will not check it in, so it is dropped here, never left
                # open without an owner.
                conn.abort()
        return answer
