"""Adversarial review of the asyncio I/O mode (``io="asyncio"``): its transport, its bulkhead
and the handler over them, attacked with misbehaving servers and a real agent.

Every test states an attack and the promise it checks (docs/patterns/io_modes.md,
error_handling.md); protocol attacks run on the default loop and on uvloop. A test that
failed when written is named in its docstring as a defect that was fixed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import uvloop
from harness import ConsulAgent, ForwardThenDrop
from harness.misbehaving import _Conn, _Server
from httptools import HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SENTINEL_TEXT, uniq, wait_until
from support.aioloops import (
    DEADLINE,
    MARGIN,
    Run,
    client_for,
    closing,
    timed,
)
from support.rawserver import ScriptedAnswers, answer
from support.secrets import assert_error_clean, assert_introspection_clean, assert_logs_clean

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraConnectionError,
    InfraError,
    InfraUnavailableError,
)
from handler_consul._bulkhead import AsyncBulkhead
from handler_consul._pool import PoolClosed
from handler_consul._runtime import build_client
from handler_consul._transport import (
    HTTPStatusError,
    ResponseTooLarge,
    TransportConnectionError,
    TransportTimeout,
)
from handler_consul._transport.aio import (
    AsyncConsulTransport,
    reset_request_deadline,
    set_request_deadline,
)

pytestmark = [
    pytest.mark.io_independent("the asyncio mode only: every handler here sets io='asyncio'"),
    pytest.mark.usefixtures("clean_consul_env"),
]


class Serving(_Server):
    """A loopback server whose connections are served by ``serve(server, conn)``."""

    kind = "attack-aio"

    def __init__(
        self, serve: Callable[[Serving, _Conn], None], *, max_duration: float = 30.0
    ) -> None:
        super().__init__(max_duration=max_duration)
        self.serve = serve
        self.gate = threading.Event()
        self.held = 0  # requests a serve function holds unanswered (see _held_404s)
        self.peak = 0

    def _serve(self, conn: _Conn) -> None:
        self.serve(self, conn)

    def read(self, conn: _Conn) -> Any:
        return self._read_request(conn)

    def pause(self, seconds: float) -> None:
        self._sleep(seconds)


# -- requests cut short are never followed on their connection --------------------------------


def test_an_answer_before_the_whole_request_was_written_never_frees_its_connection(
    run: Run,
) -> None:
    """Attack: the server answers (413, keep-alive) after the request's head, without reading
    its 4 MB body, then reads on. DEFECT (fixed): the connection went back to the pool with
    the rest of the body still queued in the transport, so the next request was written
    after it, into the middle of the old body (a desync, and a body crafted as a request
    would be read as one). Now a connection whose request is still being written is
    dropped; the next request goes on a fresh connection."""

    def serve(server: Serving, conn: _Conn) -> None:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        head = conn.read_head()
        if head is None:
            return
        if head.startswith(b"PUT"):
            conn.send(answer("413 Request Entity Too Large", b"too large"))
        else:
            conn.send(answer("200 OK", b'"fresh"'))
        conn.wait_closed()  # whatever follows on this connection is never answered

    body = b"x" * 16_000_000 + b"GET /v1/agent/self HTTP/1.1\r\nHost: smuggled\r\n\r\n"
    with Serving(serve) as server:
        client = client_for(server, timeout_seconds=3)

        async def scenario() -> tuple[Any, int, Any]:
            error, _, _ = await timed(client.http.request("PUT", "/v1/kv/big", None, body))
            idle = client.http.idle_connections
            return error, idle, await timed(client.status.leader())

        error, idle, (late, _, leader) = run(closing(client, scenario()))
    assert isinstance(error, HTTPStatusError)
    assert error.status == 413
    assert idle == 0
    assert late is None
    assert leader == "fresh"
    assert server.connections == 2


def test_a_request_past_its_deadline_is_not_written_even_on_a_kept_alive_connection(
    run: Run,
) -> None:
    """Attack: a request whose envelope deadline has already passed, with an idle connection
    in the pool. DEFECT (fixed): a fresh connection was refused (not sent), but a reused one
    carried the request anyway, after its deadline, so a write could be applied (or end
    "outcome unknown") when it should not have left at all. Now it is refused before any
    byte is written, as in threads mode (TransportTimeout, request_sent=False)."""
    with ScriptedAnswers([answer("200 OK", b"true")]) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> BaseException | None:
            assert await client.kv.put("k", "v") is True
            token = set_request_deadline(time.monotonic() - 0.01)
            try:
                error, _, _ = await timed(client.kv.put("k", "v", cas=0))
            finally:
                reset_request_deadline(token)
            return error

        error = run(closing(client, scenario()))
        assert isinstance(error, TransportTimeout)
        assert error.request_sent is False
        assert server.requests == 1


def test_a_late_second_answer_on_an_idle_connection_never_reaches_the_next_request(
    run: Run,
) -> None:
    """Attack: the server answers, then, while the connection is idle in the pool, sends a
    second, unsolicited answer. It must never be taken as the next request's answer: the
    connection is dropped and the next request is answered on a new one."""
    answers = iter([b'"first"', b'"second"'])

    def serve(server: Serving, conn: _Conn) -> None:
        while server.read(conn) is not None:
            conn.send(answer("200 OK", next(answers, b'"more"')))
            if server.connections == 1:
                conn.send(answer("200 OK", b'"stray"'))
                server.gate.set()

    with Serving(serve) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            first = await client.status.leader()
            assert await wait_until(server.gate.is_set, timeout=5)
            await asyncio.sleep(0.05)  # the stray answer arrives while the connection idles
            return [first, await client.status.leader()]

        assert run(closing(client, scenario())) == ["first", "second"]
        assert server.connections == 2


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_an_idle_connection_the_server_closed_is_replaced_with_no_error_and_no_resend(
    run: Run, close: str
) -> None:
    """Attack: the server closes the kept-alive connection while it is idle (its keep-alive
    timeout, with FIN or RST). The next request, a CAS write, must neither fail nor be sent
    twice: the liveness check sees the close and the request goes once, on a new
    connection."""
    with ScriptedAnswers([answer("200 OK", b"true")], close=close, close_delay=0.02) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            first = await client.kv.put("k", "v", cas=0)
            await asyncio.sleep(0.2)  # the close arrives while the connection idles
            return [first, await client.kv.put("k", "v", cas=0)]

        assert run(closing(client, scenario())) == [True, True]
        assert server.requests == 2
        assert server.connections == 2


# -- framing: HTTP/1.0, 204/304, ambiguous lengths ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "connections"),
    [
        (b'HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n"ab"', 2),
        (b'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\n"ab"', 1),
        (b'HTTP/1.0 200 OK\r\n\r\n"ab"', 2),
    ],
    ids=["http10", "http10-keep-alive", "http10-to-the-end"],
)
def test_http10_answers_are_read_and_their_connection_reused_only_if_kept_alive(
    run: Run, raw: bytes, connections: int
) -> None:
    """Attack: HTTP/1.0 answers. One without ``Connection: keep-alive`` closes its
    connection (it is not reused); one framed by the end of the stream is read whole."""
    close = "fin" if raw.endswith(b'\r\n\r\n"ab"') and b"Length" not in raw else None
    with ScriptedAnswers([raw], close=close) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            return [await client.status.leader() for _ in range(2)]

        assert run(closing(client, scenario())) == ["ab", "ab"]
        assert server.connections == connections


@pytest.mark.parametrize(
    ("raw", "connections"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", 1),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 1),
        (b'HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n"ab"', 2),
    ],
    ids=["204", "304-with-length", "204-with-a-body"],
)
def test_bodyless_answers_end_at_their_head_and_a_body_after_one_drops_the_connection(
    run: Run, raw: bytes, connections: int
) -> None:
    """Attack: 204 and 304 answers, which have no body whatever their headers say. The
    next request on the connection gets its own answer; bytes sent as a 204's "body" are
    bytes after the answer, so that connection is dropped rather than read from."""
    with ScriptedAnswers([raw, answer("200 OK", b'"next"')]) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            first = await client.http.request("GET", "/v1/status/leader", None, None)
            await asyncio.sleep(0.05)
            return [first.code, first.body, await client.status.leader()]

        status = int(raw.split()[1])
        assert run(closing(client, scenario())) == [status, "", "next"]
        assert server.connections == connections


def test_a_body_shorter_than_announced_then_a_close_fails_as_sent(run: Run) -> None:
    """Attack: ``Content-Length: 100``, 10 bytes, then FIN. Not an answer: the request
    fails at once as sent (never a truncated body delivered as whole)."""
    raw = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"truncate'
    with ScriptedAnswers([raw], close="fin") as server:
        client = client_for(server, timeout_seconds=5)
        error, elapsed, _ = run(closing(client, timed(client.status.leader())))
    assert isinstance(error, TransportConnectionError)
    assert "closed the connection before answering" in str(error)
    assert error.request_sent is True
    assert elapsed < 2


# -- one absolute deadline, whatever the server does ----------------------------------------------


def _half_close(server: Serving, conn: _Conn) -> None:
    if server.read(conn) is not None:
        conn.sock.shutdown(socket.SHUT_WR)
        conn.wait_closed()


def _never_read(server: Serving, conn: _Conn) -> None:
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    while not server.closed:
        server.pause(0.05)


def _interim_then_silence(server: Serving, conn: _Conn) -> None:
    if server.read(conn) is not None:
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.wait_closed()


def _endless_chunks(delay: float) -> Callable[[Serving, _Conn], None]:
    def serve(server: Serving, conn: _Conn) -> None:
        if server.read(conn) is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not server.closed:
            conn.send(b"400\r\n" + b"a" * 1024 + b"\r\n")
            if delay:
                server.pause(delay)

    return serve


def _endless_header_line(server: Serving, conn: _Conn) -> None:
    if server.read(conn) is None:
        return
    conn.send(b"HTTP/1.1 200 OK\r\nX-Long: ")
    while not server.closed:
        conn.send(b"a" * 65536)


def test_a_server_that_half_closes_without_answering_fails_the_request_at_once(
    run: Run,
) -> None:
    """Attack: the server reads the request and shuts down its sending side (FIN), leaving
    its receiving side open. The request ends at once, as sent (it may have been applied),
    and not at the deadline."""
    with Serving(_half_close) as server:
        client = client_for(server, timeout_seconds=5)
        error, elapsed, _ = run(closing(client, timed(client.kv.put("k", "v"))))
    assert isinstance(error, TransportConnectionError)
    assert error.request_sent is True
    assert elapsed < 2


@pytest.mark.parametrize(
    ("serve", "body"),
    [
        (_never_read, b"v" * 2_000_000),
        (_interim_then_silence, b"v"),
        (_endless_chunks(0.05), b"v"),
    ],
    ids=["never-reads-the-request", "one-interim-then-silence", "chunks-that-never-end"],
)
def test_a_stalling_server_cannot_hold_a_request_past_its_deadline(
    run: Run, serve: Callable[[Serving, _Conn], None], body: bytes
) -> None:
    """Attack: a server that never reads the request (its buffers fill, so the write never
    completes), one that sends a 100 Continue and then nothing, and one whose chunked body
    never ends (below the size cap). Each request ends by its deadline, as sent."""
    with Serving(serve) as server:
        client = client_for(server, timeout_seconds=DEADLINE, max_response_bytes=200_000_000)
        error, elapsed, _ = run(
            closing(client, timed(client.http.request("PUT", "/v1/kv/k", None, body)))
        )
        idle = client.http.idle_connections
    assert isinstance(error, TransportTimeout)
    assert error.request_sent is True
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + MARGIN
    assert idle == 0


@pytest.mark.parametrize(
    ("serve", "error_type", "why"),
    [
        (_endless_chunks(0.0), ResponseTooLarge, "exceeds the"),
        (_endless_header_line, TransportConnectionError, "header block is too large"),
    ],
    ids=["endless-chunked-body", "endless-header-line"],
)
def test_a_flooding_server_is_cut_by_the_caps_before_the_deadline(
    run: Run, serve: Callable[[Serving, _Conn], None], error_type: type[Exception], why: str
) -> None:
    """Attack: a chunked body that never ends, sent as fast as the client reads, and one
    header line that never ends. The body cap and the header-block cap end them, well
    before a long deadline."""
    with Serving(serve) as server:
        client = client_for(server, timeout_seconds=30, max_response_bytes=1024 * 1024)
        error, elapsed, _ = run(closing(client, timed(client.status.leader())))
    assert isinstance(error, error_type)
    assert why in str(error)
    assert elapsed < 10


# -- no input steers a request elsewhere ----------------------------------------------------------

_TRANSPORT: AsyncConsulTransport = build_client(
    ConsulSettings(host="127.0.0.1", port=8500), token=SENTINEL_TEXT, io="asyncio"
).http


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.messages = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages += 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "POST"]),
    path=st.text(min_size=1, max_size=40).map(lambda s: "/v1/kv/" + s),
    params=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=3),
    body=st.binary(max_size=64),
)
def test_no_path_query_or_body_makes_the_request_bytes_mean_another_request(
    method: str, path: str, params: list[tuple[str, str]], body: bytes
) -> None:
    """Attack: any text as a path (a key, a service ID: CR, LF, '?', '#', '..', '%',
    unicode), any query pairs (a datacenter name with CR/LF), any body. Parsed by llhttp,
    the bytes the asyncio transport writes are exactly one request, for exactly that path
    (no query or fragment taken from it), with exactly the transport's headers and the
    body; the token only as its header."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    raw = _TRANSPORT._encode(method, path, params, body)
    request = _Request()
    parser = HttpRequestParser(request)
    parser.feed_data(raw)
    assert request.messages == 1
    assert parser.get_method().decode() == method
    split = urlsplit(request.url.decode("ascii"))
    assert unquote(split.path, errors="surrogatepass") == path
    assert split.fragment == ""
    assert parse_qsl(split.query, keep_blank_values=True) == [(k, v) for k, v in params]
    names = [name.lower() for name, _ in request.headers]
    expected = [b"host", b"accept", b"x-consul-token"]
    if body or method != "GET":
        expected += [b"content-length"]
    if body:
        expected += [b"content-type"]
    assert names == expected
    assert request.body == body
    assert raw.count(SENTINEL_TEXT.encode()) == 1
    assert (b"x-consul-token", SENTINEL_TEXT.encode()) in [
        (n.lower(), v) for n, v in request.headers
    ]


# -- the bulkhead ---------------------------------------------------------------------------------


async def test_a_slot_wait_that_expires_as_its_caller_is_cancelled_frees_no_slot() -> None:
    """Attack: a caller waiting for a slot is cancelled in the same loop iteration as its
    wait expires (the loop was busy: both became due together). DEFECT (fixed): the waiter,
    failed with PoolSaturated, was taken for one woken with a slot, so the cancelled caller
    "released" a slot it never held: a call was let in beside the one holding the only slot
    (two in flight under max_workers=1), and the count of busy slots went to -1."""
    bulkhead = AsyncBulkhead(1, max_wait_seconds=0.05, max_queued=10)
    release = asyncio.Event()
    inflight = peak = 0

    async def call() -> None:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await release.wait()
        inflight -= 1

    loop = asyncio.get_running_loop()
    holder = asyncio.ensure_future(bulkhead.run(call, timeout=10))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(bulkhead.run(call, timeout=10))
    await asyncio.sleep(0)
    assert (bulkhead.busy, bulkhead.waiting) == (1, 1)
    loop.call_at(loop.time() + 0.06, waiter.cancel)  # just after the wait's 0.05 s
    time.sleep(0.1)  # noqa: ASYNC251 - a busy loop: expiry and cancel fall due together
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (bulkhead.busy, bulkhead.waiting) == (1, 0)
    third = asyncio.ensure_future(bulkhead.run(call, timeout=10))
    await asyncio.sleep(0.01)
    assert (peak, bulkhead.busy, bulkhead.waiting) == (1, 1, 1)  # the third one waits
    release.set()
    await asyncio.gather(holder, third)
    assert (peak, bulkhead.busy, bulkhead.waiting) == (1, 0, 0)


async def test_a_waiter_failed_by_close_and_cancelled_together_leaves_the_count_true() -> None:
    """Attack: ``close()`` fails a waiter and the waiter's caller is cancelled before it
    resumes. The slot count must not go below the calls really running (it did: -1 once the
    running call ended, the same defect as above)."""
    bulkhead = AsyncBulkhead(1, max_wait_seconds=5, max_queued=10)
    release = asyncio.Event()
    holder = asyncio.ensure_future(bulkhead.run(release.wait, timeout=10))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(bulkhead.run(release.wait, timeout=10))
    await asyncio.sleep(0)
    bulkhead.close()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.busy == 1
    release.set()
    await holder
    assert (bulkhead.busy, bulkhead.waiting) == (0, 0)
    with pytest.raises(PoolClosed):
        await bulkhead.run(release.wait, timeout=1)


# -- the handler in asyncio mode ------------------------------------------------------------------


def _held_404s(server: Serving, conn: _Conn) -> None:
    """Answers the leader probe at once, and every other request with a 404 (a missing key)
    once the gate opens, counting the requests it holds (``held``, ``peak``)."""
    while (request := server.read(conn)) is not None:
        if request.target.startswith("/v1/status/leader"):
            conn.send(answer("200 OK", b'"127.0.0.1:8300"'))
            continue
        with server._lock:
            server.held += 1
            server.peak = max(server.peak, server.held)
        try:
            while not server.gate.is_set():
                server.pause(0.01)
        finally:
            with server._lock:
                server.held -= 1
        conn.send(answer("404 Not Found", b""))


async def test_the_bound_on_requests_in_flight_and_on_waiters_holds_at_the_server() -> None:
    """Attack: 12 envelopes at once against max_concurrent_operations=3 and
    max_queued_operations=4, the server holding every answer. At the server, never more than
    3 connections are served at once; 4 envelopes wait, the other 5 are refused at once
    (nothing sent); once the server answers, the 7 admitted ones complete."""
    with Serving(_held_404s) as server:
        handler = HandlerConsul(
            settings=ConsulSettings(
                host=server.host,
                port=server.port,
                io="asyncio",
                max_concurrent_operations=3,
                max_queued_operations=4,
                max_wait_seconds=10,
                timeout_seconds=10,
            )
        )
        await handler.initialize()
        try:
            envelopes = [
                {"operation": "consul.kv_get", "payload": {"key": f"bound/{i}"}} for i in range(12)
            ]
            tasks = [asyncio.ensure_future(handler.execute(env)) for env in envelopes]
            assert await wait_until(lambda: server.held == 3, timeout=5)
            await asyncio.sleep(0.1)
            refused = [t for t in tasks if t.done()]
            pool = handler.describe()["pool"]
            assert (pool["busy"], pool["waiting"], len(refused)) == (3, 4, 5)
            for task in refused:
                error = task.exception()
                assert isinstance(error, InfraUnavailableError)
                assert error.context.request_sent is False
            server.gate.set()
            done = await asyncio.gather(*(t for t in tasks if t not in refused))
            assert [r.status for r in done] == ["success"] * 7
            assert server.peak == 3
            assert len([r for r in server.request_lines if "/v1/kv/" in r]) == 7
        finally:
            await handler.shutdown()


def sockets_to(port: int) -> int:
    """This process's established TCP connections to ``port`` on the loopback."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


async def test_cancelling_execute_at_every_await_point_leaks_no_slot_or_connection(
    consul_agent: ConsulAgent,
) -> None:
    """Attack: an execute() (a write) cancelled after 0, 1, 2, ... loop iterations, until one
    completes: at every await point it can stop at (slot wait, connect, write, answer). After
    each, no slot is held, nobody waits and no task of the handler is left; in the end this
    process holds no more connections to the agent than the pool's idle ones, and none once
    the handler is shut down."""
    handler = HandlerConsul(
        settings=ConsulSettings(
            host=consul_agent.host,
            port=consul_agent.port,
            io="asyncio",
            max_concurrent_operations=2,
        )
    )
    await handler.initialize()
    key = uniq("aio-cancel")
    try:
        before = set(asyncio.all_tasks())
        completed = False
        iterations = 0
        while not completed and iterations < 400:
            env = {"operation": "consul.kv_put", "payload": {"key": key, "value": "v"}}
            task = asyncio.ensure_future(handler.execute(env))
            for _ in range(iterations):
                await asyncio.sleep(0)
            completed = task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            pool = handler.describe()["pool"]
            assert (pool["busy"], pool["waiting"]) == (0, 0), iterations
            assert set(asyncio.all_tasks()) == before, iterations
            iterations += 1
        assert completed
        assert iterations > 3  # it was cancelled at several points before completing
        runtime = handler._lifecycle.runtime
        assert runtime is not None
        idle = runtime.client.http.idle_connections
        assert await wait_until(lambda: sockets_to(consul_agent.port) <= idle, timeout=5)
    finally:
        await handler.shutdown()
    assert await wait_until(lambda: sockets_to(consul_agent.port) == 0, timeout=5)


async def test_writes_applied_then_dropped_on_a_reused_connection_are_unknown_and_sent_once(
    consul_agent: ConsulAgent,
) -> None:
    """Attack: the agent applies a CAS put, and then a deregister, and the proxy in front
    closes the kept-alive (reused) connection instead of answering (FIN). The write was
    written, so the re-send-once-on-reuse rule must not fire: each ends outcome unknown
    after one attempt, and the agent saw each exactly once."""
    key = f"{uniq('aio-drop')}/cas"
    sid = uniq("aio-drop-svc")
    with ForwardThenDrop(consul_agent, drop=0, close_with="fin") as proxy:
        handler = HandlerConsul(
            settings=ConsulSettings(
                host=proxy.host,
                port=proxy.port,
                io="asyncio",
                retry={"initial_delay_seconds": 0.0},
            )
        )
        await handler.initialize()
        try:
            register = {"operation": "consul.register", "payload": {"service_id": sid, "name": sid}}
            assert (await handler.execute(register)).status == "success"
            connections = proxy.connections
            for env in (
                {"operation": "consul.kv_put", "payload": {"key": key, "value": "v", "cas": 0}},
                {"operation": "consul.deregister", "payload": {"service_id": sid}},
            ):
                forwarded = proxy.forwarded
                proxy.drop_next(1)
                with pytest.raises(InfraConnectionError) as caught:
                    await handler.execute(env)
                context = caught.value.context
                assert (context.request_sent, context.outcome_unknown, context.attempts) == (
                    True,
                    True,
                    1,
                )
                assert proxy.forwarded == forwarded + 1
            assert proxy.connections == connections + 1  # the first drop reused a connection
        finally:
            await handler.shutdown()
    stored = consul_agent.request("GET", f"/v1/kv/{key}").json()[0]["Value"]
    assert base64.b64decode(stored) == b"v"  # it was applied
    services = consul_agent.request("GET", "/v1/agent/services").json()
    assert sid not in services  # so was the deregister


def _frame_locals_text(error: BaseException) -> str:
    """repr() of every local of every frame in the tracebacks of ``error`` and its chain, as
    a locals-capturing error tracker would record them."""
    parts: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            parts.extend(f"{name}={value!r}" for name, value in tb.tb_frame.f_locals.items())
            tb = tb.tb_next
        stack += [exc.__cause__, exc.__context__]
    return "\n".join(parts)


def reached(server: Serving, requests: int) -> bool:
    return server.requests >= requests


def _trickle_after_probe(server: Serving, conn: _Conn) -> None:
    """Answers the leader probe; every other answer's header block trickles, never ending."""
    while (request := server.read(conn)) is not None:
        if request.target.startswith("/v1/status/leader"):
            conn.send(answer("200 OK", b'"127.0.0.1:8300"'))
            continue
        conn.send(b"HTTP/1.1 200 OK\r\n")
        while True:
            conn.send(b"X-Slow: 1\r\n")
            server.pause(0.05)


async def test_no_failure_of_the_asyncio_mode_shows_the_token(
    consul_agent: ConsulAgent, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: with a sentinel token, make the asyncio mode fail every way it can: a
    deadline (trickled headers), an answer withheld after the agent applied the write, a
    caller cancelled mid-request, and an initialize against a refused port. The token
    appears in no error, its chain, its traceback, any frame's locals, any log record,
    describe() or repr()."""
    caplog.set_level("DEBUG")
    errors: list[BaseException] = []
    env = {"operation": "consul.kv_put", "payload": {"key": uniq("aio-token"), "value": "v"}}

    def settings_for(host: str, port: int) -> ConsulSettings:
        return ConsulSettings(
            host=host,
            port=port,
            io="asyncio",
            token=SENTINEL_TEXT,
            timeout_seconds=0.5,
            retry={"max_attempts": 2, "initial_delay_seconds": 0.0},
        )

    with Serving(_trickle_after_probe) as trickle, ForwardThenDrop(consul_agent, drop=0) as drop:
        for server in (trickle, drop):
            handler = HandlerConsul(settings=settings_for(server.host, server.port))
            await handler.initialize()
            try:
                if server is drop:
                    drop.drop_all()
                with pytest.raises(InfraError) as caught:
                    await handler.execute(env)
                errors.append(caught.value)
                if server is trickle:  # cancelled while its answer trickles in
                    task = asyncio.ensure_future(handler.execute(env))
                    sent = trickle.requests + 1
                    assert await wait_until(partial(reached, trickle, sent), timeout=5)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError) as cancelled:
                        await task
                    errors.append(cancelled.value)
                assert_introspection_clean(handler, (SENTINEL_TEXT,))
                runtime = handler._lifecycle.runtime
                assert SENTINEL_TEXT not in repr(runtime)
                assert SENTINEL_TEXT not in repr(runtime.client.http)  # type: ignore[union-attr]
            finally:
                await handler.shutdown()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    handler = HandlerConsul(settings=settings_for("127.0.0.1", dead.getsockname()[1]))
    dead.close()
    with pytest.raises(InfraError) as caught:
        await handler.initialize()
    errors.append(caught.value)
    assert_introspection_clean(handler, (SENTINEL_TEXT,))
    assert len(errors) == 4
    for error in errors:
        if isinstance(error, InfraError):
            assert_error_clean(error, (SENTINEL_TEXT,))
        assert SENTINEL_TEXT not in _frame_locals_text(error)
    assert_logs_clean(caplog.records, (SENTINEL_TEXT,))


def test_a_handler_serves_successive_event_loops_on_either_loop_kind(
    consul_agent: ConsulAgent,
) -> None:
    """Attack: one handler initialized under one ``asyncio.run``, used under a second one,
    then used and shut down under uvloop (its idle connections and bulkhead were made on
    loops that are gone). Every envelope succeeds, and nothing warns (warnings are errors
    here). (Leaving a uvloop loop with the handler's connections still open is the
    documented exception: uvloop closes them itself with a ResourceWarning.)"""
    handler = HandlerConsul(
        settings=ConsulSettings(host=consul_agent.host, port=consul_agent.port, io="asyncio")
    )
    key = uniq("aio-loops")

    async def put(value: str) -> None:
        env = {"operation": "consul.kv_put", "payload": {"key": key, "value": value}}
        assert (await handler.execute(env)).status == "success"

    async def first() -> None:
        await handler.initialize()
        await put("1")

    async def last() -> Any:
        try:
            await put("3")
            return await handler.execute({"operation": "consul.kv_get", "payload": {"key": key}})
        finally:
            await handler.shutdown()

    asyncio.run(first())
    asyncio.run(put("2"))
    response = uvloop.run(last())
    assert response.as_kv_get()["value"] == "3"


async def test_shutdown_with_requests_in_flight_frees_every_slot_and_connection() -> None:
    """Attack: shutdown while 3 requests are held by the server and 2 wait for a slot, with
    a short grace. Every caller gets a typed error (the waiting ones: not sent), no slot is
    left held, and every connection to the server is closed."""
    with Serving(_held_404s) as server:
        handler = HandlerConsul(
            settings=ConsulSettings(
                host=server.host,
                port=server.port,
                io="asyncio",
                max_concurrent_operations=3,
                timeout_seconds=20,
                shutdown_grace_seconds=0.2,
            )
        )
        await handler.initialize()
        runtime = handler._lifecycle.runtime
        assert runtime is not None
        tasks = [
            asyncio.ensure_future(
                handler.execute({"operation": "consul.kv_get", "payload": {"key": f"s/{i}"}})
            )
            for i in range(5)
        ]
        assert await wait_until(lambda: server.held == 3, timeout=5)
        started = time.monotonic()
        await handler.shutdown()
        assert time.monotonic() - started < 2
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, InfraError) for r in results), results
        unsent = [r for r in results if isinstance(r, InfraError) and not r.context.request_sent]
        assert len(unsent) == 2
        assert (runtime.pool.busy, runtime.pool.waiting) == (0, 0)
        assert await wait_until(lambda: sockets_to(server.port) == 0, timeout=5)


async def test_reinitialize_with_requests_in_flight_finishes_them_and_closes_old_connections() -> (
    None
):
    """Attack: initialize() again while 3 requests are held by the server. The envelopes
    admitted before finish on the old runtime once answered (no error, no re-send); the new
    runtime serves new envelopes; the old runtime's connections are closed, not pooled."""
    with Serving(_held_404s) as server:
        handler = HandlerConsul(
            settings=ConsulSettings(
                host=server.host, port=server.port, io="asyncio", timeout_seconds=10
            )
        )
        await handler.initialize()
        try:
            old = handler._lifecycle.runtime
            tasks = [
                asyncio.ensure_future(
                    handler.execute({"operation": "consul.kv_get", "payload": {"key": f"r/{i}"}})
                )
                for i in range(3)
            ]
            assert await wait_until(lambda: server.held == 3, timeout=5)
            await handler.initialize()
            assert handler._lifecycle.runtime is not old
            server.gate.set()
            done = await asyncio.gather(*tasks)
            assert [r.status for r in done] == ["success"] * 3
            assert old is not None
            assert old.client.http.idle_connections == 0
            after = await handler.execute({"operation": "consul.kv_get", "payload": {"key": "r"}})
            assert after.status == "success"
            assert len([r for r in server.request_lines if "/v1/kv/" in r]) == 4
            new = handler._lifecycle.runtime
            assert new is not None
            idle = new.client.http.idle_connections
            assert await wait_until(lambda: sockets_to(server.port) == idle, timeout=5)
        finally:
            await handler.shutdown()


@pytest.mark.parametrize("io", ["threads", "asyncio"])
def test_a_second_event_loop_is_refused_while_another_has_envelopes_in_flight(io: str) -> None:
    """Attack: one handler driven by two event loops in two threads at once. DEFECT (fixed):
    its pools, bulkhead and connections answer to one loop; in asyncio mode most envelopes
    of both loops timed out or found no slot, in threads mode a caller was left waiting. Now
    an envelope of a second loop, while the first loop has one in flight, is refused at once
    with InfraUnavailableError naming the rule (nothing sent); once the first loop's
    envelopes are done, the other loop is served: loops take turns."""
    with Serving(_held_404s) as server:
        handler = HandlerConsul(
            settings=ConsulSettings(host=server.host, port=server.port, io=io, timeout_seconds=10)
        )
        asyncio.run(handler.initialize())
        held = threading.Event()
        first: list[Any] = []

        def first_loop() -> None:
            async def go() -> Any:
                env = {"operation": "consul.kv_get", "payload": {"key": "loops/a"}}
                task = asyncio.ensure_future(handler.execute(env))
                assert await wait_until(lambda: server.held == 1, timeout=5)
                held.set()
                return await task

            first.append(asyncio.run(go()))

        thread = threading.Thread(target=first_loop, name="first-loop")
        thread.start()
        try:
            assert held.wait(10)
            second = {"operation": "consul.kv_get", "payload": {"key": "loops/b"}}
            with pytest.raises(InfraUnavailableError, match="another event loop") as refused:
                asyncio.run(handler.execute(second))
            assert refused.value.context.request_sent is False
            assert [r for r in server.request_lines if "/v1/kv/" in r] == [
                line for line in server.request_lines if "loops/a" in line
            ]
        finally:
            server.gate.set()
            thread.join(15)
        assert not thread.is_alive()
        assert first[0].status == "success"
        taken_turn = asyncio.run(handler.execute(second))
        assert taken_turn.status == "success"
        assert any("loops/b" in line for line in server.request_lines)
        asyncio.run(handler.shutdown())


def test_the_token_header_line_is_masked_however_it_is_printed(consul_agent: ConsulAgent) -> None:
    """Attack: the transport's prepared token header printed as a locals-capturing tracker
    or a careless log line would (repr, str, %s, format). DEFECT (fixed): only repr() was
    masked; bytes' own str() printed the token."""
    transport = AsyncConsulTransport(
        build_client(
            ConsulSettings(host=consul_agent.host, port=consul_agent.port, io="asyncio")
        ).http.config,
        pool_size=1,
        token=SENTINEL_TEXT,
    )
    line = transport._auth
    for shown in (repr(line), str(line), "%s" % (line,), f"{line}", format(line, "")):  # noqa: UP031
        assert SENTINEL_TEXT not in shown
        assert "**********" in shown
    assert SENTINEL_TEXT.encode("ascii") in bytes(line)  # what is written is the token itself
