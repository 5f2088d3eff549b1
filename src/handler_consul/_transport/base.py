"""What the two transports share: how a request is addressed, how an answer becomes a
python-consul2 ``Response`` or an error, and how the token is kept out of both.

:class:`~.blocking.ConsulTransport` (worker threads, http.client) and
:class:`~.aio.AsyncConsulTransport` (the event loop, httptools) differ in how bytes move;
everything a request means is decided here once, so the two modes cannot drift apart on it:

- the request target is the path percent-encoded (``/`` and ``:`` kept) plus the encoded
  query: no CR, LF, ``?`` or ``#`` from a key or an ID can reach the request line or
  change which endpoint is asked;
- an error status (other than 404, and the statuses a callback reads itself) is an
  :class:`HTTPStatusError` whose text has the token redacted before the error exists;
- a transport error leaves a transport raised from nothing (:func:`clean`), so no chained
  frame holds the request's bytes;
- the token is held masked (:class:`MaskedToken`), for locals-capturing error trackers.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from handler_consul._consul import consul_base
from handler_consul._errors import redact
from handler_consul._transport.connections import TransportConfig
from handler_consul._transport.errors import HTTPStatusError, TransportError

__all__ = [
    "MaskedToken",
    "Params",
    "TransportBase",
    "accepted",
    "clean",
    "describe",
    "target",
]

E = TypeVar("E", bound=TransportError)
Params = Sequence[tuple[str, Any]] | Mapping[str, Any] | None


class MaskedToken(str):
    """The token as a value whose repr is masked: traceback renderers that show frame
    locals (Sentry, ``pytest --showlocals``) repr what a failing request held."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


# python-consul2 ships no types, hence the ignore.
class TransportBase(consul_base.HTTPClient):  # type: ignore[misc]
    """A ``consul.base.HTTPClient`` bound to one agent (``config``), with at most
    ``pool_size`` idle connections kept. The SSL context is built by the caller (a missing
    CA file is a configuration error, reported before any transport exists).

    The ``headers`` python-consul2 passes to ``get``/``put``/``delete``/``post`` would only
    ever carry its own token, which the client is built without; subclasses ignore them so
    the token has exactly one source.
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        pool_size: int,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            host=config.host,
            port=config.port,
            scheme=config.scheme,
            verify=config.verify,
            cert=None,
            timeout=config.timeout,
        )
        self.config = config
        self._pool_size = pool_size
        self._ssl_context = ssl_context
        self._closed = False
        self._token = MaskedToken(token) if token else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.address!r}, pool_size={self._pool_size})"

    def _where(self, method: str, path: str) -> str:
        """What a message names: the method, the path and the address (built only on error)."""
        return f"{method} {path} at {self.config.address}"

    def _answer(
        self,
        method: str,
        path: str,
        status: int,
        headers: Any,
        content: bytes,
        accept: Collection[int],
    ) -> consul_base.Response:
        """A complete answer as python-consul2's Response, or the HTTPStatusError it is."""
        if status >= 400 and status != 404 and status not in accept:
            # A server that echoes the request (a proxy's error page, say) would hand the
            # token back in the body: it is redacted before the error exists.
            answer = redact(_text(content), self._token)
            raise HTTPStatusError(status, answer, method=method, path=path)
        return consul_base.Response(status, headers, _text(content), content)


def target(path: str, params: Params) -> str:
    """The request target: the path percent-encoded, then the encoded query. Nothing in
    it can end the request line or turn part of the path into a query or a fragment."""
    encoded = quote(path, safe="/:")
    if params:
        encoded = f"{encoded}?{urlencode(params)}"
    return encoded


def clean(error: E) -> E:
    """``error`` ready to be raised from nothing: no ``__context__`` links to library
    frames and no traceback of the frame that raised it (whose locals hold the request's
    bytes, token included), for locals-capturing error trackers. Raise the result outside
    the ``except`` block that caught it."""
    error.__suppress_context__ = True
    error.__context__ = None
    return error.with_traceback(None)


def accepted(callback: Callable[..., Any]) -> Collection[int]:
    """The error statuses a callback interprets itself (its ``accept_statuses``)."""
    accept: Collection[int] = getattr(callback, "accept_statuses", ())
    return accept


def describe(exc: BaseException) -> str:
    """A short, secret-free description: exception type and errno text, no request data."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__}: {exc.reason}"
    return type(exc).__name__


def _text(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")
