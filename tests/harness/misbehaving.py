"""Misbehaving HTTP/1.1 servers on 127.0.0.1, to prove a client never hangs or desyncs.

Each server is thread-based, listens on a free loopback port (``harness.ports``), counts the
connections and requests it saw, and exposes ``host``, ``port`` and ``http_addr`` like
``CountingProxy``. They are context managers. Nothing here can keep a test alive: every
socket call and every sleep polls a stop event at least every ``_POLL`` seconds, so
``close()`` ends every thread promptly; and every loop also has a deadline
(``max_duration`` seconds after ``start()``, 120 by default) after which the server stops by
itself, so a client that never hangs up cannot keep a thread running either.

- ``TrickleHeaders``: reads a request, then sends a status line and endless header lines,
  one byte every ``interval`` seconds; the header block never ends.
- ``TrickleBody``: a complete header block with ``Content-Length: 100000000``, then one body
  byte every ``interval`` seconds.
- ``ForwardThenDrop``: a proxy to a real agent. The agent applies every request; for the
  requests chosen to drop, the proxy reads the agent's whole answer and then hangs up on the
  client without it (RST by default, or FIN). Other answers pass through, with keep-alive.
- ``EarlyHints``: every final answer is preceded by a 1xx (103 Early Hints or 100 Continue),
  or, in the ``-only`` modes, a 1xx is all the client ever gets. Final bodies carry a
  sequence number, so a client that reads the previous request's answer is caught.
- ``OversizedBody``: a large body (64 MiB by default) generated on the fly, framed by
  Content-Length or chunked.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Self

from .listening import LoopbackListener
from .ports import HOST, allocate_ports, release_ports

_POLL = 0.1  # longest a socket call or a sleep goes without looking at the stop event
_MAX_HEAD = 64 * 1024
_RECV = 256 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"


class _Closing(Exception):
    """Unwinds a connection thread: the server was closed or its deadline passed."""


class _BadHttp(Exception):
    """The peer sent something this harness does not parse; its connection is dropped."""


def _parse_headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    headers = []
    for line in lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _BadHttp(f"not a header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return tuple(headers)


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """All values of ``name`` joined by ", " (HTTP's rule for repeated fields), or None."""
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


def _content_length(headers: tuple[tuple[str, str], ...]) -> int:
    value = _header(headers, "content-length")
    if value is None:
        return 0
    try:
        length = int(value)
    except ValueError:
        raise _BadHttp(f"bad Content-Length {value!r}") from None
    if length < 0:
        raise _BadHttp(f"bad Content-Length {value!r}")
    return length


def _is_chunked(headers: tuple[tuple[str, str], ...]) -> bool:
    return "chunked" in (_header(headers, "transfer-encoding") or "").lower()


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as a misbehaving server read it."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes  # de-chunked
    raw_head: bytes  # request line and header lines exactly as received, without the blank line
    raw_body: bytes  # the body exactly as received (chunk framing included)
    continued: bool  # the server already answered "Expect: 100-continue" with a 100

    @property
    def line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    def header(self, name: str) -> str | None:
        return _header(self.headers, name.lower())

    @property
    def wants_close(self) -> bool:
        """The client asked to close after this exchange (HTTP/1.0 closes unless asked not to)."""
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in connection
        return "close" in connection

    def for_upstream(self) -> bytes:
        """The bytes to forward. A server that answered 100 itself drops ``Expect`` so the
        upstream does not wait to be asked for a body it is about to get anyway."""
        head = self.raw_head
        if self.continued:
            lines = head.split(b"\r\n")
            head = b"\r\n".join(
                [lines[0]] + [h for h in lines[1:] if not h.lower().startswith(b"expect:")]
            )
        return head + b"\r\n\r\n" + self.raw_body


class _Conn:
    """A socket with a receive buffer whose every blocking call honours the server's stop
    event and deadline, so no call here outlives either by more than ``_POLL``."""

    def __init__(self, server: _Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.buf = bytearray()
        self.closed = False
        sock.settimeout(_POLL)

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False on end of stream."""
        while True:
            self.server._check()
            try:
                data = self.sock.recv(_RECV)
            except TimeoutError:
                continue
            if not data:
                return False
            self.buf += data
            return True

    def read_head(self) -> bytes | None:
        """One header block without its blank line; None if the peer closed between messages."""
        while self.buf.startswith(b"\r\n"):  # stray CRLFs between messages are allowed
            del self.buf[:2]
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > _MAX_HEAD:
                raise _BadHttp("header block too large")
            if not self._fill():
                if self.buf.strip(b"\r\n"):
                    raise _BadHttp("connection closed inside a header block")
                return None

    def read_line(self) -> bytes:
        """One line including its CRLF (chunk sizes, trailers)."""
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > _MAX_HEAD:
                raise _BadHttp("line too long")
            if not self._fill():
                raise _BadHttp("connection closed inside a line")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _BadHttp("connection closed inside a body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def read_body(self, headers: tuple[tuple[str, str], ...]) -> tuple[bytes, bytes]:
        """A body framed by chunked encoding or Content-Length: (decoded, raw)."""
        if not _is_chunked(headers):
            data = self.read_exact(_content_length(headers))
            return data, data
        raw = bytearray()
        body = bytearray()
        while True:
            line = self.read_line()
            raw += line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadHttp(f"bad chunk size line {line[:80]!r}") from None
            if size == 0:
                while True:  # trailer fields, up to the blank line
                    trailer = self.read_line()
                    raw += trailer
                    if trailer == b"\r\n":
                        return bytes(body), bytes(raw)
            chunk = self.read_exact(size + 2)
            raw += chunk
            body += chunk[:-2]

    def send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            self.server._check()
            try:
                sent = self.sock.send(view)
            except TimeoutError:  # the peer is not reading; look at the stop event again
                continue
            view = view[sent:]

    def wait_closed(self) -> None:
        """Read and discard until the peer hangs up (or the server stops)."""
        while self._fill():
            self.buf.clear()

    def close(self, *, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if abort:  # SO_LINGER 0: close() sends RST and discards anything unsent
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class _Server(LoopbackListener):
    """Listener, accept thread, per-connection threads, counters; subclasses give ``_serve``."""

    kind = "misbehaving"

    def __init__(self, *, max_duration: float = 120.0) -> None:
        self.host = HOST
        self.port = 0
        self.max_duration = max_duration
        self._ports: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._request_lines: list[str] = []

    # -- addresses -----------------------------------------------------------------------
    @property
    def listen_port(self) -> int:
        return self.port

    # (listen_addr, http_addr, url, connections, requests, request_lines: LoopbackListener)

    @property
    def alive_threads(self) -> list[threading.Thread]:
        """This server's threads still running (accept loop and connections); [] once closed."""
        with self._lock:
            return [t for t in self._threads if t.is_alive()]

    @property
    def active_connections(self) -> int:
        """Connections whose thread is still serving them."""
        return sum(1 for t in self.alive_threads if t is not self._accept_thread)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.requests < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.requests

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.connections < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.connections

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        if self._accept_thread is not None or self._stop.is_set():
            raise RuntimeError(f"{self!r} was already started")
        ports = allocate_ports(1)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, ports[0]))
            listener.listen(64)
            listener.settimeout(_POLL)
        except BaseException:
            listener.close()
            release_ports(ports)
            raise
        self._ports = ports
        self.port = ports[0]
        self._listener = listener
        self._deadline = time.monotonic() + self.max_duration
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{self.kind}-{self.port}", daemon=True
        )
        self._track(self._accept_thread)
        self._accept_thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every connection, join every thread. Idempotent."""
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        # The accept loop closes the listener on its way out; only if it never ran is it ours.
        if self._listener is not None and (
            self._accept_thread is None or not self._accept_thread.is_alive()
        ):
            self._listener.close()
            self._listener = None
        # No new connection thread can appear once the accept loop has ended.
        for t in self.alive_threads:
            t.join(timeout)
        if self._ports:
            release_ports(self._ports)
            self._ports = []

    def __enter__(self) -> Self:
        if self._accept_thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self._deadline

    def _check(self) -> None:
        if self._should_stop():
            raise _Closing

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake (and unwind the connection) as soon as the server stops."""
        remaining = max(0.0, self._deadline - time.monotonic())
        if self._stop.wait(min(seconds, remaining)):
            raise _Closing
        self._check()

    def _track(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        try:
            while not self._should_stop():
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with self._lock:
                    self._connections += 1
                    n = self._connections
                t = threading.Thread(
                    target=self._run_connection,
                    args=(sock,),
                    name=f"{self.kind}-{self.port}-conn{n}",
                    daemon=True,
                )
                self._track(t)
                try:
                    t.start()
                except BaseException:
                    sock.close()
                    raise
        finally:
            with self._lock:
                self._listener = None
            listener.close()

    def _run_connection(self, sock: socket.socket) -> None:
        conn = _Conn(self, sock)
        try:
            self._serve(conn)
        except (_Closing, _BadHttp, OSError):
            pass  # the server is closing, the peer went away, or it was not HTTP we parse
        finally:
            conn.close()

    def _read_request(self, conn: _Conn, *, answer_expect: bool = True) -> ReceivedRequest | None:
        """The next request on ``conn``, or None if the client closed between requests."""
        head = conn.read_head()
        if head is None:
            return None
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadHttp(f"not a request line: {lines[0][:80]!r}")
        method, target, version = parts
        headers = _parse_headers(lines[1:])
        with self._lock:  # recorded before any answer, so a client that has one sees it
            self._request_lines.append(f"{method} {target} {version}")
        # A client that sent "Expect: 100-continue" may wait for the 100 before its body;
        # reading the body first would stall it until its own expect timeout.
        continued = False
        expect = (_header(headers, "expect") or "").lower()
        if answer_expect and expect == "100-continue" and version == "HTTP/1.1":
            conn.send(_CONTINUE)
            continued = True
        body, raw_body = conn.read_body(headers)
        return ReceivedRequest(
            method, target, version, headers, body, head, raw_body, continued=continued
        )

    def _serve(self, conn: _Conn) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.listen_addr}: "
            f"{self.connections} connections, {self.requests} requests>"
        )


def _endless_head() -> Iterator[int]:
    yield from b"HTTP/1.1 200 OK\r\n"
    n = 0
    while True:
        yield from f"X-Trickle-{n}: {'.' * 32}\r\n".encode()
        n += 1


class TrickleHeaders(_Server):
    """Reads a request, then sends ``HTTP/1.1 200 OK`` and header lines one byte every
    ``interval`` seconds, without ever ending the header block. One request per connection."""

    kind = "trickle-headers"

    def __init__(self, *, interval: float = 0.4, max_duration: float = 120.0) -> None:
        super().__init__(max_duration=max_duration)
        self.interval = interval  # read per byte, so a test may change it on a live server
        self._bytes_sent = 0

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return self._bytes_sent

    def _serve(self, conn: _Conn) -> None:
        if self._read_request(conn) is None:
            return
        for byte in _endless_head():
            conn.send(bytes((byte,)))
            with self._lock:
                self._bytes_sent += 1
            self._sleep(self.interval)


class TrickleBody(_Server):
    """Answers every request with a complete header block advertising ``content_length``
    (100 000 000) bytes, then sends the body one byte (``.``) every ``interval`` seconds."""

    kind = "trickle-body"

    def __init__(
        self,
        *,
        interval: float = 0.4,
        content_length: int = 100_000_000,
        max_duration: float = 120.0,
    ) -> None:
        super().__init__(max_duration=max_duration)
        self.interval = interval
        self.content_length = content_length
        self._body_bytes_sent = 0

    @property
    def body_bytes_sent(self) -> int:
        with self._lock:
            return self._body_bytes_sent

    def _serve(self, conn: _Conn) -> None:
        while (req := self._read_request(conn)) is not None:
            length = self.content_length
            conn.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {length}\r\n\r\n".encode()
            )
            for _ in range(length):
                conn.send(b".")
                with self._lock:
                    self._body_bytes_sent += 1
                self._sleep(self.interval)
            if req.wants_close:
                return


class ForwardThenDrop(_Server):
    """A proxy in front of a real agent (``upstream``: an agent or "host:port").

    Every request is forwarded, so the agent applies it, and the agent's whole answer is
    read. Then, if the request is chosen to drop, the client connection is closed without
    that answer: with RST (``close_with="rst"``, SO_LINGER 0) or FIN (``"fin"``). Otherwise
    the answer passes through and the connection stays open (keep-alive, one upstream
    connection per client connection).

    Which requests drop: ``drop=None`` (the default) drops every answer; ``drop=n`` drops the
    next n and passes the rest. ``drop_next(n)``, ``drop_all()`` and ``pass_through()``
    change this on a live proxy; the choice is made when a request is forwarded.
    """

    kind = "forward-then-drop"

    def __init__(
        self,
        upstream: Any,
        *,
        drop: int | None = None,
        close_with: Literal["rst", "fin"] = "rst",
        connect_timeout: float = 5.0,
        max_duration: float = 120.0,
    ) -> None:
        super().__init__(max_duration=max_duration)
        if close_with not in ("rst", "fin"):
            raise ValueError(f"close_with must be 'rst' or 'fin', not {close_with!r}")
        self.upstream = upstream
        self.upstream_addr: str = getattr(upstream, "http_addr", None) or str(upstream)
        up_host, _, up_port = self.upstream_addr.rpartition(":")
        self._upstream = (up_host, int(up_port))
        self.close_with = close_with
        self.connect_timeout = connect_timeout
        self._drops_left = drop
        self._drop_prefix: str | None = None  # drop only requests whose line starts so
        self._forwarded = 0
        self._dropped = 0
        self._passed = 0
        self._dropped_lines: list[str] = []

    def drop_next(self, n: int = 1) -> None:
        """Drop the answers of the next ``n`` forwarded requests, then pass answers through."""
        with self._lock:
            self._drops_left = n
            self._drop_prefix = None

    def drop_matching(self, line_prefix: str, n: int = 1) -> None:
        """Drop the answers of the next ``n`` requests whose request line starts with
        ``line_prefix`` (``"PUT /v1/txn"``); every other answer passes. No race with the
        client: the choice is made as each request arrives."""
        with self._lock:
            self._drops_left = n
            self._drop_prefix = line_prefix

    def drop_all(self) -> None:
        with self._lock:
            self._drops_left = None

    def pass_through(self) -> None:
        self.drop_next(0)

    @property
    def forwarded(self) -> int:
        """Requests sent to the agent in full."""
        with self._lock:
            return self._forwarded

    @property
    def dropped(self) -> int:
        """Answers read from the agent and withheld (counted before the client is hung up on)."""
        with self._lock:
            return self._dropped

    @property
    def passed(self) -> int:
        """Answers passed to the client (counted before they are sent)."""
        with self._lock:
            return self._passed

    @property
    def dropped_request_lines(self) -> list[str]:
        with self._lock:
            return list(self._dropped_lines)

    def _take_drop(self, line: str) -> bool:
        with self._lock:
            if self._drop_prefix is not None and not line.startswith(self._drop_prefix):
                return False
            if self._drops_left is None:
                return True
            if self._drops_left > 0:
                self._drops_left -= 1
                return True
            return False

    def _read_response(self, upstream: _Conn, method: str) -> tuple[bytes, bool]:
        """The agent's whole answer, interim 1xx included: (raw bytes, close afterwards)."""
        raw = bytearray()
        while True:
            head = upstream.read_head()
            if head is None:
                raise _BadHttp("the agent closed without answering")
            raw += head + b"\r\n\r\n"
            lines = head.split(b"\r\n")
            try:
                status = int(lines[0].split(b" ")[1])
            except (IndexError, ValueError):
                raise _BadHttp(f"not a status line: {lines[0][:80]!r}") from None
            headers = _parse_headers(lines[1:])
            if not (100 <= status < 200) or status == 101:
                break
        close = "close" in (_header(headers, "connection") or "").lower()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return bytes(raw), close
        if _is_chunked(headers) or _header(headers, "content-length") is not None:
            raw += upstream.read_body(headers)[1]
            return bytes(raw), close
        raw += upstream.read_to_eof()  # framed by the end of the connection
        return bytes(raw), True

    def _serve(self, conn: _Conn) -> None:
        upstream: _Conn | None = None
        try:
            while (req := self._read_request(conn)) is not None:
                if upstream is None:
                    try:
                        sock = socket.create_connection(
                            self._upstream, timeout=self.connect_timeout
                        )
                    except OSError:
                        return
                    upstream = _Conn(self, sock)
                drop = self._take_drop(req.line)
                upstream.send(req.for_upstream())
                with self._lock:
                    self._forwarded += 1
                answer, close = self._read_response(upstream, req.method)
                if drop:
                    with self._lock:
                        self._dropped += 1
                        self._dropped_lines.append(req.line)
                    conn.close(abort=self.close_with == "rst")
                    return
                with self._lock:
                    self._passed += 1
                conn.send(answer)
                if close or req.wants_close:
                    return
        finally:
            if upstream is not None:
                upstream.close()

    def __repr__(self) -> str:
        return (
            f"<ForwardThenDrop {self.listen_addr} -> {self.upstream_addr}: "
            f"{self.forwarded} forwarded, {self.dropped} dropped, {self.passed} passed>"
        )


EarlyHintsMode = Literal["103", "100", "103-only", "100-only"]
_MODES = ("103", "100", "103-only", "100-only")


class EarlyHints(_Server):
    """Answers every request with ``interim`` 1xx responses before the final one (keep-alive).

    ``mode``: ``"103"`` sends ``103 Early Hints`` (with a Link header) then the final answer;
    ``"100"`` sends an unsolicited ``100 Continue`` then the final answer; ``"103-only"`` and
    ``"100-only"`` send the 1xx and then nothing, holding the connection open until the
    client hangs up (or the server stops). ``mode`` and ``interim`` may be changed live.

    The final answer is ``200`` with ``Content-Type: application/json``, a correct
    Content-Length, an ``X-Sequence: n`` header and the body ``{"n": n}``, where n counts
    final answers across the server from 1. ``body_for(n, request) -> bytes`` replaces the
    body (e.g. Consul's ``true`` for a KV PUT); the sequence header stays.
    """

    kind = "early-hints"

    def __init__(
        self,
        *,
        mode: EarlyHintsMode = "103",
        interim: int = 1,
        body_for: Callable[[int, ReceivedRequest], bytes] | None = None,
        max_duration: float = 120.0,
    ) -> None:
        super().__init__(max_duration=max_duration)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self.mode: EarlyHintsMode = mode
        self.interim = interim
        self.body_for = body_for
        self._sequence = 0
        self._interims_sent = 0

    @property
    def responses(self) -> int:
        """Final answers sent; also the last sequence number used."""
        with self._lock:
            return self._sequence

    @property
    def interims_sent(self) -> int:
        with self._lock:
            return self._interims_sent

    def _serve(self, conn: _Conn) -> None:
        # Expect is not answered by the reader: the 1xx this server sends is the point.
        while (req := self._read_request(conn, answer_expect=False)) is not None:
            mode = self.mode
            interim = _CONTINUE if mode.startswith("100") else _EARLY_HINTS
            for _ in range(self.interim):
                conn.send(interim)
                with self._lock:
                    self._interims_sent += 1
            if mode.endswith("-only"):
                conn.wait_closed()
                return
            with self._lock:
                self._sequence += 1
                n = self._sequence
            body = self.body_for(n, req) if self.body_for else json.dumps({"n": n}).encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nX-Sequence: {n}\r\n"
            )
            if req.wants_close:
                head += "Connection: close\r\n"
            conn.send(head.encode() + b"\r\n" + body)
            if req.wants_close:
                return


def _json_string_pieces(size: int, piece: int) -> Iterator[bytes]:
    """``size`` bytes forming one JSON string ("xxx...x"), in pieces of at most ``piece``
    bytes, so a client without a size limit would even parse it."""
    block = b"x" * piece
    sent = 0
    while sent < size:
        n = min(piece, size - sent)
        data = block if n == piece else block[:n]
        if sent == 0:
            data = b'"' + data[1:]
        if sent + n == size:
            data = data[:-1] + b'"'
        yield data
        sent += n


class OversizedBody(_Server):
    """Answers every request with ``200`` and a ``size``-byte body (64 MiB by default)
    generated piece by piece (never held in memory), framed by Content-Length, or with
    ``chunked=True`` by chunked encoding without Content-Length. Keep-alive.

    The body is one JSON string of exactly ``size`` bytes. ``size`` and ``chunked`` may be
    changed live.
    """

    kind = "oversized-body"

    def __init__(
        self,
        *,
        size: int = 64 * 1024 * 1024,
        chunked: bool = False,
        piece_size: int = 256 * 1024,
        max_duration: float = 120.0,
    ) -> None:
        super().__init__(max_duration=max_duration)
        if size < 2:
            raise ValueError("size must be at least 2 (the body is a JSON string)")
        self.size = size
        self.chunked = chunked
        self.piece_size = piece_size
        self._body_bytes_sent = 0
        self._responses = 0

    @property
    def body_bytes_sent(self) -> int:
        with self._lock:
            return self._body_bytes_sent

    @property
    def responses(self) -> int:
        """Answers sent in full."""
        with self._lock:
            return self._responses

    def _serve(self, conn: _Conn) -> None:
        while (req := self._read_request(conn)) is not None:
            size, chunked = self.size, self.chunked
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
            conn.send(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()
            )
            for data in _json_string_pieces(size, self.piece_size):
                conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                with self._lock:
                    self._body_bytes_sent += len(data)
            if chunked:
                conn.send(b"0\r\n\r\n")
            with self._lock:
                self._responses += 1
            if req.wants_close:
                return
