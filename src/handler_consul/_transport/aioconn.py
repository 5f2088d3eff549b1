"""One HTTP/1.1 connection on the event loop, its answers read by httptools (llhttp).

An ``asyncio.Protocol``: the loop hands it bytes as they arrive and llhttp, Node's parser,
frames them (status line, headers, Content-Length or chunked bodies, keep-alive). Nothing
here parses HTTP by hand; what is ours is the policy around it:

- one exchange at a time, and the connection is reusable only after a complete answer whose
  framing llhttp vouched for, with no byte after it;
- interim answers (100 Continue, 103 Early Hints) are skipped; a 101 is a protocol error;
- the header block and the body are capped while they arrive, so a server cannot make the
  client buffer without bound;
- every failure is a :class:`ConnectionFault` the transport turns into its own errors; the
  fault says whether the answer was cut short, never what was sent.

The deadline is the transport's: it calls :meth:`Connection.expire` from a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from typing import Any, NoReturn, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from handler_consul._transport.base import describe
from handler_consul._transport.connections import TransportConfig
from handler_consul._transport.response import Headers

__all__ = ["Answer", "Connection", "ConnectionFault", "TooLarge", "open_connection"]

# The same limits as the threads mode's header parser: 100 headers of at most 64 KiB each.
# Counted as bytes arrive (llhttp itself has no limit on a header's length).
_MAX_HEADERS = 100
_MAX_HEAD_BYTES = 100 * 65536


class ConnectionFault(Exception):
    """The exchange failed; ``reason`` is safe to show (no request or answer bytes)."""


class TooLarge(ConnectionFault):
    """The answer is larger than the cap (announced, or read past it)."""

    def __init__(self, reason: str, *, announced: bool) -> None:
        super().__init__(reason)
        self.announced = announced


Answer = tuple[int, Headers, bytes]


class Connection(asyncio.Protocol):
    """A kept-alive connection to the agent: one request at a time, answers via httptools."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_response_bytes: int) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._limit = max_response_bytes
        self._parser = HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._fault: ConnectionFault | None = None
        self._poller: Any = None  # select.poll of the socket, for looks_alive()
        # Reusable only between exchanges, after a complete answer that allows keep-alive.
        self.reusable = False
        self.lost = False
        self._reset_answer()

    def _raise(self, fault: ConnectionFault) -> NoReturn:
        """End the exchange from inside a parser callback (httptools turns the exception
        into its own error; the fault is kept for :meth:`data_received`)."""
        self._fault = fault
        raise fault

    def _reset_answer(self) -> None:
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers = Headers()
        self._head_bytes = 0
        self._headers_done = False
        self._interim = False
        self._body: list[bytes] = []
        self._size = 0
        self._framed = False  # Content-Length or chunked: the end is not the end of stream

    # -- the exchange ----------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Answer]:
        """Write one request; the future gets its answer or a :class:`ConnectionFault`."""
        transport = self.transport
        if transport is None:
            raise ConnectionFault("not connected")
        self.reusable = False
        self._reset_answer()
        waiter: asyncio.Future[Answer] = self.loop.create_future()
        self._waiter = waiter
        transport.write(data)
        return waiter

    def write_failed(self) -> bool:
        """Whether the last write failed at once: the transport closed itself inside write()
        (the send raised: the peer had reset the connection), so no byte of it left."""
        return self.transport is None or self.transport.is_closing()

    def expire(self) -> None:
        """The request's deadline passed: fail the exchange and drop the connection. An
        answer that completed in the same loop iteration is kept (and so is its connection)."""
        if self._waiter is not None:
            self._fail(TimeoutError("the request's deadline passed"))

    def abort(self) -> None:
        """Drop the connection at once, nothing flushed: its state is unknown, or it is idle.

        Also how an idle connection is closed: there is nothing to flush, and a TLS
        close_notify exchange would keep the socket open for more loop iterations than a
        shutdown waits (an HTTP/1.1 answer is framed without it).
        """
        self.reusable = False
        self.lost = True
        transport = self.transport
        if transport is None:
            return
        if self.loop.is_closed():
            _close_orphaned(transport)
        else:
            transport.abort()

    close = abort

    def looks_alive(self) -> bool:
        """An idle connection is usable if nothing has arrived on it since its last answer:
        readable means the server closed it (FIN, RST) or sent stray bytes. Asked of the
        socket itself, so a FIN that arrived since the loop's last poll is seen too."""
        transport = self.transport
        if self.lost or not self.reusable or transport is None or transport.is_closing():
            return False
        poller = self._poller
        if poller is None:
            return False
        try:
            return not poller.poll(0)
        except OSError:
            return False

    def _fail(self, error: BaseException) -> None:
        self.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses, hence the cast).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Registered once (the descriptor is this connection's until it closes, and it is
            # asked only while open). poll, not select: select refuses descriptors above 1024.
            poller = select.poll()
            with contextlib.suppress(OSError, ValueError):
                poller.register(sock.fileno(), select.POLLIN)
                self._poller = poller

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the connection's position in the stream is unknown.
            self.abort()
            return
        if not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail(ConnectionFault("the answer's header block is too large"))
                return
        self._fault = None
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(ConnectionFault("the server switched protocols"))
        except HttpParserError as exc:
            # A fault raised by one of the callbacks below (kept here too: httptools chains it
            # to its own error only in some versions), or llhttp's verdict on the bytes.
            fault = self._fault or ConnectionFault(f"malformed answer ({type(exc).__name__})")
            self._fail(fault)

    def eof_received(self) -> bool:
        self._stream_ended(None)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self._stream_ended(exc)

    def _stream_ended(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is None:
            return  # idle: the transport closes itself, and the pool skips a dead connection
        if exc is None and self._headers_done and not self._framed:
            # An answer without Content-Length or chunked framing ends with the stream.
            self._complete(keep_alive=False)
        elif exc is None:
            self._fail(ConnectionFault("the server closed the connection before answering"))
        else:
            self._fail(ConnectionFault(f"connection lost ({describe(exc)})"))

    # -- httptools callbacks (a ConnectionFault raised here ends the exchange) ----------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self._raise(ConnectionFault("the server sent more than one answer"))

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._raw_headers
        if len(raw) >= _MAX_HEADERS:
            self._raise(ConnectionFault(f"the answer has more than {_MAX_HEADERS} headers"))
        raw.append((name, value))  # decoded once, at the end of the block

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self._raise(ConnectionFault("unexpected 101 Switching Protocols"))
            # Informational: its headers are dropped and the final answer follows on the same
            # connection. llhttp completes it as a body-less message (on_message_complete).
            self._interim = True
            self._raw_headers = []
            return
        self._headers_done = True
        self._headers = headers = _headers(self._raw_headers)
        length = headers.get("content-length")
        chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
        self._framed = chunked or length is not None or status in (204, 304)
        # llhttp has validated the Content-Length digits by now.
        if length is not None and not chunked and length.isdigit() and int(length) > self._limit:
            self._raise(
                TooLarge(
                    f"the answer announces {int(length)} bytes, over the {self._limit}-byte cap",
                    announced=True,
                )
            )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            self._raise(TooLarge(f"the answer exceeds the {self._limit}-byte cap", announced=False))
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        status = self._parser.get_status_code()
        answer: Answer = (status, self._headers, b"".join(self._body))
        self._body = []
        # Not reusable while part of the request is still unwritten (the server answered
        # before reading it all): the next request would follow the rest of this one's body.
        transport = self.transport
        self.reusable = (
            keep_alive
            and not self.lost
            and transport is not None
            and not transport.get_write_buffer_size()
        )
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)


async def open_connection(
    config: TransportConfig,
    *,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
) -> Connection:
    """A connected :class:`Connection` (TCP, TLS or unix socket) within ``timeout`` seconds.

    A connection the caller gives up on (deadline, cancellation) is closed by asyncio.
    """
    loop = asyncio.get_running_loop()
    limit = config.max_response_bytes

    def factory() -> Connection:
        return Connection(loop, limit)

    async with asyncio.timeout(timeout):
        if config.unix_socket:
            _, protocol = await loop.create_unix_connection(factory, config.unix_socket)
        elif ssl_context is not None:
            _, protocol = await loop.create_connection(
                factory,
                config.host,
                config.port,
                ssl=ssl_context,
                # SNI and the name verified: tls_server_name when set, else the host.
                server_hostname=config.server_name or config.host,
                ssl_handshake_timeout=max(timeout, 0.001),
            )
        else:
            _, protocol = await loop.create_connection(factory, config.host, config.port)
    _no_delay(protocol)
    return protocol


def _no_delay(protocol: Connection) -> None:
    """Requests are written whole, so Nagle's delay could only add latency (asyncio sets
    TCP_NODELAY itself since 3.x; uvloop too; set here so it does not depend on either)."""
    transport = protocol.transport
    sock: Any = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _headers(raw: list[tuple[bytes, bytes]]) -> Headers:
    """The header block as python-consul2 reads it: case-insensitive, repeats joined by ", "
    (HTTP's rule for a repeated field), as the threads mode's parser does."""
    # One comprehension for the usual block (no name twice): a fifth of the answer's cost on
    # the loop went to decoding headers one at a time in a profile.
    plain = {name.lower().decode("latin-1"): value.decode("latin-1") for name, value in raw}
    if len(plain) < len(raw):
        plain = {}
        for name, value in raw:
            key = name.lower().decode("latin-1")
            text = value.decode("latin-1")
            plain[key] = f"{plain[key]}, {text}" if key in plain else text
    return Headers(plain)


def _close_orphaned(transport: Any) -> None:
    """Close a connection whose event loop is already closed (a handler shut down from
    another loop than the one it ran on, after ``asyncio.run`` ended).

    asyncio closes a socket from a callback it schedules on the transport's loop, which a
    closed loop refuses; left alone, the socket would stay open until garbage collection.
    So the transport's own closing step runs here, directly: that is a private method of
    asyncio's selector transports (the same in 3.11 to 3.13), used only in this corner.
    Other loops (uvloop closes its transports with the loop) fall back to ``abort()``.
    """
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    for candidate in (inner, transport):
        closer = getattr(candidate, "_call_connection_lost", None)
        if closer is not None and getattr(candidate, "_sock", None) is not None:
            with contextlib.suppress(Exception):
                closer(None)
            return
    with contextlib.suppress(RuntimeError):
        transport.abort()
