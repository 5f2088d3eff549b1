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
from typing import IO, Any

__all__ = ["ConsulHTTPResponse", "Headers"]

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


class ConsulHTTPResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` with :func:`parse_headers` in place of ``email.parser``."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            parse_headers(self.fp)  # the 100 response's headers are skipped
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
