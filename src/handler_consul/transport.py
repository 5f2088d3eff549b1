"""The HTTP transport under python-consul2: http.client with a small connection pool.

Why not python-consul2's default (requests): measured on the same agent and thread pool,
requests manages about a third of the throughput of a bare HTTP/1.1 client and holds the
GIL longer, which shows up as event-loop lag. ``http.client`` is the leanest client in the
standard library; what requests added on top we either do not want (environment proxies,
``.netrc`` credentials, redirects that could carry the token elsewhere) or do here in a few
lines (pooling, timeouts, TLS).

Guarantees:
- every request has a timeout (per socket operation, set from the envelope's remaining time);
- the token is added here, as the ``X-Consul-Token`` header, and nowhere else;
- no proxy from the environment and no redirects are followed;
- the pool keeps at most ``pool_size`` idle connections: sized to the thread pool, no
  connection is discarded under full concurrency.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from consul.base import HTTPClient, Response

from handler_consul._http import ConsulHTTPResponse

__all__ = ["ConsulTransport", "TransportError"]

T = TypeVar("T")
Params = Sequence[tuple[str, Any]] | Mapping[str, Any] | None

# Reused keep-alive connections may have been closed by the server while idle; a request
# that fails on one before any response byte arrived is re-sent once on a fresh connection.
_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class TransportError(Exception):
    """A request that got no HTTP answer.

    ``kind`` is ``"timeout"`` or ``"connection"``; ``request_sent`` says whether the request
    may have reached Consul, which decides whether a non-idempotent write may be re-sent.
    The message names the method and path only: never a header, never the token.
    """

    def __init__(self, kind: str, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.request_sent = request_sent


class ConsulTransport(HTTPClient):  # type: ignore[misc]  # python-consul2 ships no types
    """A ``consul.base.HTTPClient`` that python-consul2's endpoint classes call into."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        scheme: str,
        timeout: float,
        pool_size: int,
        token: str | None = None,
        verify: bool = True,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(
            host=host, port=port, scheme=scheme, verify=verify, cert=None, timeout=timeout
        )
        self._pool_size = pool_size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._local = threading.local()
        self._ssl_context = _ssl_context(verify, cacert, cert, key) if scheme == "https" else None
        # Built once: the token goes in this header and nowhere else.
        self._base_headers: dict[str, str] = {"Accept": "application/json"}
        if token:
            self._base_headers["X-Consul-Token"] = _MaskedHeader(token)

    def __repr__(self) -> str:
        return f"ConsulTransport({self.base_uri!r}, pool_size={self._pool_size})"

    # -- per-request timeout ------------------------------------------------------------

    def set_request_timeout(self, seconds: float | None) -> None:
        """Bound the requests this thread makes next (the envelope's remaining time)."""
        self._local.timeout = seconds

    def _timeout(self) -> float:
        timeout: float | None = getattr(self._local, "timeout", None)
        configured: float = self.timeout
        return configured if timeout is None else min(timeout, configured)

    # -- consul.base.HTTPClient ----------------------------------------------------------

    def get(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self._request("GET", path, params, None))

    def put(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self._request("PUT", path, params, data))

    def delete(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self._request("DELETE", path, params, data))

    def post(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return callback(self._request("POST", path, params, data))

    # The ``headers`` python-consul2 passes would only ever carry its own token, which the
    # client is built without; they are ignored so the token has exactly one source.

    # -- connections ---------------------------------------------------------------------

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._ssl_context is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self._ssl_context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        # Headers parsed without the email package: see _http.py.
        conn.response_class = ConsulHTTPResponse
        return conn

    def _checkout(
        self, timeout: float, *, fresh: bool = False
    ) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise TransportError("connection", "transport is closed", request_sent=False)
            if self._idle and not fresh:
                conn = self._idle.pop()
                reused = True
            else:
                conn = None
                reused = False
        if conn is None:
            conn = self._new_connection(timeout)
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        return conn, reused

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

    # -- one request ---------------------------------------------------------------------

    def _target(self, path: str, params: Params) -> str:
        target = quote(path, safe="/:")
        if params:
            target = f"{target}?{urlencode(params)}"
        return target

    def _request(
        self, method: str, path: str, params: Params, data: str | bytes | None
    ) -> Response:
        target = self._target(path, params)
        body = data.encode("utf-8") if isinstance(data, str) else data
        headers = self._base_headers
        if body:
            headers = {**headers, "Content-Type": "application/octet-stream"}
        timeout = self._timeout()
        for fresh_retry in (False, True):
            conn, reused = self._checkout(timeout, fresh=fresh_retry)
            sent = False
            answered = False
            try:
                conn.request(method, target, body=body, headers=headers)
                sent = True
                response = conn.getresponse()
                answered = True
                content = response.read()
            except _STALE_CONNECTION_ERRORS as exc:
                conn.close()
                # An idle keep-alive connection the server had already closed: nothing was
                # answered, so the request is re-sent once on a brand-new connection.
                if reused and not fresh_retry and not answered:
                    continue
                raise TransportError(
                    "connection",
                    f"{method} {path}: connection lost ({type(exc).__name__})",
                    request_sent=sent,
                ) from None
            except TimeoutError:
                conn.close()
                raise TransportError(
                    "timeout", f"{method} {path}: no answer within {timeout:g}s", request_sent=sent
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(
                    "connection", f"{method} {path}: {_describe_os_error(exc)}", request_sent=sent
                ) from None
            except BaseException:
                conn.close()
                raise
            if response.will_close:
                conn.close()
            else:
                self._checkin(conn)
            return Response(response.status, response.headers, _text(content), content)
        raise AssertionError("unreachable")  # pragma: no cover


class _MaskedHeader(str):
    """The token as a header value whose repr is masked.

    Traceback renderers that show frame locals (Sentry, ``pytest --showlocals``) repr the
    headers dict of a failing request; http.client only ever encodes the value.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


def _text(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


def _describe_os_error(exc: BaseException) -> str:
    """A short, secret-free description: exception type and errno text, no request data."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


def _ssl_context(
    verify: bool, cacert: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cacert)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key)
    return context
