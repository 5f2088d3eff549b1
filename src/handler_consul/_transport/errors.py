"""What the transport raises: the only failures that cross from HTTP into the handler.

Every one says whether the request may have reached Consul (``request_sent``): that, and not
the exception's type, decides whether a write whose answer was lost may be sent again.
Messages name the method, the path and the address tried; never a header, never the token.

    TransportError
    ├── TransportConnectionError   no answer: refused, reset, DNS, TLS, a malformed answer
    ├── TransportTimeout           no complete answer before the request's deadline
    ├── ResponseTooLarge           the answer is larger than the configured cap
    └── HTTPStatusError            Consul answered with an error status (not 404: see below)

A 404 is not an error here: python-consul2's endpoint callbacks decide what it means (a missing
key reads as ``None``, an unknown service deregisters as ``False``).
"""

from __future__ import annotations

__all__ = [
    "MAX_ERROR_BODY",
    "HTTPStatusError",
    "ResponseTooLarge",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeout",
]

# Consul's error bodies are one line of text; anything longer is cut so that a huge error
# page neither fills logs nor travels with the exception.
MAX_ERROR_BODY = 512


class TransportError(Exception):
    """A request that did not end in a usable HTTP answer."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class TransportConnectionError(TransportError):
    """The connection failed before a complete answer arrived."""


class TransportTimeout(TransportError):
    """The request's absolute deadline passed before a complete answer arrived."""


class ResponseTooLarge(TransportError):
    """The answer's body exceeded the size cap; the connection was closed unread."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, request_sent=True)
        self.limit = limit


class HTTPStatusError(TransportError):
    """Consul answered with a status of 400 or more (other than 404)."""

    def __init__(self, status: int, body: str, *, method: str, path: str) -> None:
        self.status = status
        self.body = body[:MAX_ERROR_BODY]
        super().__init__(f"{method} {path}: HTTP {status}", request_sent=True)
