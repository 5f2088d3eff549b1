"""An ``http.client`` response whose headers are parsed without the ``email`` package.

``http.client`` hands every response's header block to ``email.parser``, which was about a
third of the CPU a worker spends on a Consul call (profiled in bench/, ~65 µs of ~200 µs per
kv_get), all of it holding the GIL the event loop also needs. Consul's responses are small,
well-formed HTTP/1.1; a plain parser that keeps http.client's limits is enough.

``begin()`` mirrors CPython's ``HTTPResponse.begin`` (identical in 3.11, 3.12 and 3.13) with
one change: the header parser. Everything else (status line, chunked bodies, keep-alive) is
http.client's own code.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from typing import IO, Any

__all__ = ["ConsulHTTPResponse", "DeadlineReader", "Headers"]

_MAXLINE = 65536
_MAXHEADERS = 100


class Headers(dict[str, str]):
    """Response headers with case-insensitive lookup, stored under lower-case names.

    Offers what http.client and python-consul2 use of ``email.message.Message``: ``get``,
    ``[]`` (``None`` when missing, as Message does), ``in``, ``get_all``, ``items``.
    """

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def get_all(self, name: str, failobj: Any = None) -> list[str] | Any:
        value = dict.get(self, name.lower())
        return failobj if value is None else [value]


def parse_headers(fp: IO[bytes]) -> Headers:
    """Read a header block up to the blank line, with http.client's line and count limits."""
    headers = Headers()
    count = 0
    while True:
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return headers
        count += 1
        if count > _MAXHEADERS:
            raise http.client.HTTPException(f"got more than {_MAXHEADERS} headers")
        name, sep, value = line.decode("iso-8859-1").partition(":")
        if not sep:
            continue  # not a header line (e.g. an obsolete folded continuation): ignored
        key = name.strip().lower()
        value = value.strip()
        previous = dict.get(headers, key)
        headers[key] = value if previous is None else f"{previous}, {value}"


class DeadlineReader(socket.SocketIO):
    """A socket reader that enforces one absolute deadline over every read.

    A socket timeout bounds each read separately, so a server that sends one byte every
    0.4 s would hold a worker for as long as it likes. Here each read gets only the time
    left until the request's deadline, and a read that starts past it raises TimeoutError:
    the whole answer, status line to last body byte, arrives before the deadline or not at all.

    Built as ``sock.makefile("rb")`` builds its reader, reference included: http.client
    closes the connection's socket as soon as it sees ``Connection: close``, and the socket
    must stay open until this reader is done with the body.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock, "rb")
        sock._io_refs += 1  # type: ignore[attr-defined]  # what makefile() does
        self._deadline = deadline

    def readinto(self, buffer: Any) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed while reading the answer")
        self._sock.settimeout(remaining)  # type: ignore[attr-defined]
        return super().readinto(buffer)


class ConsulHTTPResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` with :func:`parse_headers` in place of ``email.parser``,
    reading through a :class:`DeadlineReader`."""

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: float,
    ) -> None:
        # http.client's own __init__, except that the reader is a DeadlineReader where it
        # would call sock.makefile("rb") (same buffering; one deadline over every read).
        self.fp = io.BufferedReader(DeadlineReader(sock, deadline))
        self.debuglevel = debuglevel
        self._method = method
        self.headers = self.msg = None  # type: ignore[assignment]
        unknown = http.client._UNKNOWN  # type: ignore[attr-defined]
        self.version = self.status = self.reason = unknown
        self.chunked = self.chunk_left = self.length = self.will_close = unknown

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if not 100 <= status < 200:
                break
            if status == http.client.SWITCHING_PROTOCOLS:
                # Nothing here asks to switch protocols: the connection's state is unknown.
                raise http.client.HTTPException("unexpected 101 Switching Protocols")
            # Every other 1xx (100 Continue, 103 Early Hints, ...) is informational: its
            # headers are skipped and the final answer follows on the same connection. Taking
            # one as the answer would leave the real one unread, to be read by the next request.
            parse_headers(self.fp)
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)

        headers = parse_headers(self.fp)
        self.headers = self.msg = headers

        tr_enc = headers.get("transfer-encoding")
        if tr_enc and tr_enc.lower() == "chunked":
            self.chunked = True
            self.chunk_left = None
        else:
            self.chunked = False
        self.will_close = self._check_close()

        self.length = None
        length = headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if (
            status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
            or 100 <= status < 200
            or self._method == "HEAD"
        ):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
