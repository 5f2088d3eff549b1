"""The asyncio transport (io="asyncio") on its own, on the default event loop and on uvloop.

What the handler-level tests prove in both I/O modes is proved here again on both loops,
plus the corners only this transport has: httptools' framing (``Connection: close``, an
answer ended by the stream, a 101, bytes after the answer, a flood of 1xx, too many
headers), cancellation in the middle of an answer, a write that fails on a reused
connection, a connection of another (closed) loop, and no proxy from the environment.

Each test is a plain function that runs one scenario with ``asyncio.run`` or ``uvloop.run``
(the ``run`` fixture), so every scenario meets both loops.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    ConsulAgent,
    CountingProxy,
    EarlyHints,
    ForwardThenDrop,
    OversizedBody,
    TrickleBody,
    TrickleHeaders,
)
from support import SENTINEL_TEXT, recording_proxy, scripted_server, uniq, wait_until
from support.aioloops import (
    DEADLINE,
    MARGIN,
    Run,
    client_for,
    closing,
    timed,
)
from support.rawserver import ScriptedAnswers, answer

from handler_consul import ConsulSettings
from handler_consul._runtime import build_client
from handler_consul._transport import (
    HTTPStatusError,
    ResponseTooLarge,
    TransportConnectionError,
    TransportTimeout,
)
from handler_consul._transport.aioconn import Connection

pytestmark = [
    pytest.mark.io_independent("the asyncio transport itself, on both event loops"),
    pytest.mark.usefixtures("clean_consul_env"),
]

# -- keep-alive, the token header, no environment proxy ------------------------------------------


def test_one_connection_serves_every_request_and_carries_the_token_only_as_its_header(
    run: Run, consul_agent: ConsulAgent
) -> None:
    proxy = recording_proxy(consul_agent)
    client = client_for(proxy, token=SENTINEL_TEXT)
    key = uniq("aio")

    async def scenario() -> None:
        for i in range(10):
            assert await client.kv.put(key, f"v{i}") is True
            assert (await client.kv.get(key))[1]["Value"] == f"v{i}".encode()
        assert await client.status.leader()

    try:
        run(closing(client, scenario()))
        raw = proxy.raw
    finally:
        proxy.close()
    assert proxy.requests == 21
    assert proxy.connections == 1
    header = f"\r\nX-Consul-Token: {SENTINEL_TEXT}\r\n".encode()
    assert raw.count(SENTINEL_TEXT.encode()) == raw.count(header) == 21
    assert all(SENTINEL_TEXT not in line for line in proxy.request_lines)


def test_no_proxy_from_the_environment_is_used(
    run: Run, consul_agent: ConsulAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CountingProxy(consul_agent) as decoy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://{decoy.listen_addr}")
        monkeypatch.setenv("NO_PROXY", "")
        client = client_for(consul_agent)
        assert run(closing(client, client.status.leader()))
        assert decoy.requests == 0
        assert decoy.connections == 0


# -- one absolute deadline -------------------------------------------------------------------------


@pytest.mark.parametrize("server_class", [TrickleHeaders, TrickleBody])
def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(
    run: Run, server_class: type[TrickleHeaders] | type[TrickleBody]
) -> None:
    with server_class() as server:
        client = client_for(server, timeout_seconds=DEADLINE, max_response_bytes=200_000_000)
        error, elapsed, _ = run(closing(client, timed(client.kv.get("k"))))
    assert isinstance(error, TransportTimeout)
    assert error.request_sent is True
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + MARGIN


# -- httptools' framing ----------------------------------------------------------------------------


def _kv_answer(n: int, _request: Any) -> bytes:
    return f'"{n}"'.encode()


@pytest.mark.parametrize("mode", ["103", "100"])
def test_interim_answers_are_skipped_without_desync(run: Run, mode: Any) -> None:
    with EarlyHints(mode=mode, interim=3, body_for=_kv_answer) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            return [await client.status.leader() for _ in range(5)]

        assert run(closing(client, scenario())) == ["1", "2", "3", "4", "5"]
        assert server.connections == 1
        assert server.interims_sent == 15


def test_a_flood_of_interim_answers_is_cut_by_the_header_cap_not_the_deadline(run: Run) -> None:
    # ~10 MB of 103s and never a final answer: the cap on a header block (6.4 MB) ends it.
    with EarlyHints(mode="103-only", interim=200_000) as server:
        client = client_for(server, timeout_seconds=30)
        error, elapsed, _ = run(closing(client, timed(client.status.leader())))
    assert isinstance(error, TransportConnectionError)
    assert "header block is too large" in str(error)
    assert error.request_sent is True
    assert elapsed < 25


def test_connection_close_answers_are_delivered_and_their_connection_not_reused(
    run: Run,
) -> None:
    with ScriptedAnswers([answer("200 OK", b'"leader"', "Connection: close")]) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            return [await client.status.leader() for _ in range(3)]

        assert run(closing(client, scenario())) == ["leader"] * 3
        assert server.connections == 3


def test_an_answer_framed_by_the_end_of_the_stream_is_read_whole(run: Run) -> None:
    # No Content-Length, no chunking: HTTP/1.1 says the body ends with the connection.
    with ScriptedAnswers([b'HTTP/1.1 200 OK\r\n\r\n"to the end"'], close="fin") as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            return [await client.status.leader() for _ in range(2)]

        assert run(closing(client, scenario())) == ["to the end"] * 2
        assert server.connections == 2


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (answer("101 Switching Protocols", b"", "Upgrade: websocket"), "101"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\ntrue", "malformed answer"),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(101))
            + b"Content-Length: 4\r\n\r\ntrue",
            "more than 100 headers",
        ),
        (b"SMTP ready\r\n\r\n", "malformed answer"),
        # Framing two parsers could read differently (the raw material of response
        # smuggling): refused as malformed, never read one way.
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"ab"x',
            "malformed answer",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4\r\n"ab"\r\n0\r\n\r\n',
            "malformed answer",
        ),
        (
            b'HTTP/1.1 200 OK\nContent-Length: 4\n\n"ab"',
            "malformed answer",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"ab"',
            "malformed answer",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length : 4\r\n\r\n"ab"',
            "malformed answer",
        ),
        (
            b'HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 4\r\n\r\n"ab"',
            "malformed answer",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'ffffffffffffffffff\r\n"ab"\r\n0\r\n\r\n',
            "malformed answer",
        ),
        (
            b'HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 4\r\n\r\n"ab"',
            "malformed answer",
        ),
    ],
    ids=[
        "101",
        "bad-length",
        "too-many-headers",
        "not-http",
        "two-lengths",
        "length-and-chunked",
        "bare-lf",
        "negative-length",
        "space-before-colon",
        "obs-fold",
        "chunk-size-overflow",
        "nul-in-header",
    ],
)
def test_a_protocol_error_fails_the_request_and_drops_the_connection(
    run: Run, raw: bytes, why: str
) -> None:
    """A 101, a malformed or ambiguously framed answer, too many headers: the request fails
    as sent, the connection is dropped, and the next request gets its answer on a new one."""
    with ScriptedAnswers([raw, answer("200 OK", b'"ok"')]) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> tuple[Any, Any]:
            error, _, _ = await timed(client.status.leader())
            return error, await client.status.leader()

        error, after = run(closing(client, scenario()))
        assert isinstance(error, TransportConnectionError)
        assert why in str(error)
        assert error.request_sent is True
        assert after == "ok"
        assert server.connections == 2


def test_bytes_after_the_answer_make_its_connection_unusable(run: Run) -> None:
    """Two answers to one request: the first is taken, and the connection, whose next bytes
    nobody asked for, is dropped rather than read by the next request."""
    doubled = answer("200 OK", b'"first"') + answer("200 OK", b'"stray"')
    with ScriptedAnswers([doubled, answer("200 OK", b'"second"')]) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            first = await client.status.leader()
            await asyncio.sleep(0.05)
            return [first, await client.status.leader()]

        assert run(closing(client, scenario())) == ["first", "second"]
        assert server.connections == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_over_the_size_cap_is_refused_and_its_connection_dropped(
    run: Run, chunked: bool
) -> None:
    cap = 1024 * 1024
    with OversizedBody(size=64 * 1024 * 1024, chunked=chunked) as server:
        client = client_for(server, timeout_seconds=10, max_response_bytes=cap)

        async def scenario() -> list[Any]:
            return [await timed(client.kv.get("k")) for _ in range(2)]

        (error, elapsed, _), (second, _, _) = run(closing(client, scenario()))
        assert isinstance(error, ResponseTooLarge)
        assert isinstance(second, ResponseTooLarge)
        assert error.limit == cap
        assert ("announces" in str(error)) is not chunked
        assert server.connections == 2
        assert elapsed < 5


# -- cancellation, re-sending, loops ---------------------------------------------------------------


def test_a_request_cancelled_mid_answer_never_leaves_its_connection_in_the_pool(
    run: Run,
) -> None:
    with TrickleBody(interval=0.02) as server:
        client = client_for(server, timeout_seconds=30, max_response_bytes=200_000_000)

        async def scenario() -> int:
            task = asyncio.ensure_future(client.kv.get("k"))
            # Until the headers are read and the body is half-way.
            assert await wait_until(lambda: server.body_bytes_sent >= 5, timeout=5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            idle = client.http.idle_connections
            error, _, _ = await timed(asyncio.wait_for(client.kv.get("k"), 0.3))
            assert isinstance(error, TimeoutError)  # trickled again: a fresh exchange
            return int(idle)

        assert run(closing(client, scenario())) == 0
        assert server.connections == 2  # the half-read connection was never reused
        assert server.requests == 2


def test_a_request_cancelled_as_its_answer_arrives_leaves_no_connection_behind(
    run: Run, consul_agent: ConsulAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer completes and the caller is cancelled in the same loop iteration: the
    request never checks its connection back in, so the transport drops it rather than
    leave it open with no owner."""
    client = client_for(consul_agent)
    seen: list[Connection] = []

    async def scenario() -> tuple[int, bool]:
        task = asyncio.ensure_future(client.status.leader())
        complete = Connection._complete

        def complete_then_cancel(self: Connection, *, keep_alive: bool) -> None:
            complete(self, keep_alive=keep_alive)
            seen.append(self)
            task.cancel()

        monkeypatch.setattr(Connection, "_complete", complete_then_cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        return client.http.idle_connections, seen[0].lost

    assert run(closing(client, scenario())) == (0, True)


def test_a_write_that_fails_on_a_reused_connection_is_sent_once_more_on_a_fresh_one(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server resets the idle connection, and the reset lands between the liveness check
    and the write (forced here: the check is told the connection looks alive). The write
    fails at once, so the request provably never left: it goes out once, on a new
    connection, and is answered."""
    with ScriptedAnswers([answer("200 OK", b"true")], close="rst", close_delay=0.05) as server:
        client = client_for(server, timeout_seconds=5)

        async def scenario() -> list[Any]:
            first = await client.kv.put("k", "v", cas=0)
            # Block the loop while the reset arrives, so only the write can discover it.
            time.sleep(0.2)  # noqa: ASYNC251
            monkeypatch.setattr(Connection, "looks_alive", lambda self: True)
            return [first, await client.kv.put("k", "v", cas=0)]

        assert run(closing(client, scenario())) == [True, True]
        assert server.connections == 2
        assert server.requests == 2  # the failed write reached nobody


def test_a_written_request_whose_answer_is_lost_is_not_sent_again(
    run: Run, consul_agent: ConsulAgent
) -> None:
    with ForwardThenDrop(consul_agent, drop=1) as proxy:
        client = client_for(proxy, timeout_seconds=5)
        key = f"{uniq('aio-drop')}/cas"
        error, _, _ = run(closing(client, timed(client.kv.put(key, "v", cas=0))))
        assert isinstance(error, TransportConnectionError)
        assert error.request_sent is True
        assert proxy.forwarded == 1
    assert consul_agent.request("GET", f"/v1/kv/{key}?raw").body == b"v"


def test_a_connection_of_a_closed_loop_is_never_reused_and_closes_cleanly(
    counting_proxy: CountingProxy,
) -> None:
    """A handler shut down from another loop than the one it ran on (after ``asyncio.run``
    ended, as an interrupt does): the old loop's connection is closed without a warning, and
    the new loop opens its own. The default loop only: uvloop closes a closing loop's
    transports itself, with a ResourceWarning, so there a handler must be shut down on its
    own loop (as ``async with HandlerConsul()`` does)."""
    client = client_for(counting_proxy)
    assert asyncio.run(client.status.leader())  # leaves an idle connection on a closed loop
    assert client.http.idle_connections == 1
    assert asyncio.run(closing(client, client.status.leader()))
    assert counting_proxy.connections == 2
    assert client.http.idle_connections == 0


def test_an_error_answer_echoing_the_token_is_redacted_and_carries_no_frames(run: Run) -> None:
    with scripted_server([403]) as server:
        host, port = server.server_address[:2]
        client = build_client(
            ConsulSettings(host=str(host), port=int(port), token=SENTINEL_TEXT), io="asyncio"
        )
        error, _, _ = run(closing(client, timed(client.kv.get("k"))))
    assert isinstance(error, HTTPStatusError)
    assert error.status == 403
    assert SENTINEL_TEXT not in error.body
    assert "[REDACTED]" in error.body
    assert error.__context__ is None
    assert error.__cause__ is None


# -- TLS and unix sockets -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for localhost, made by ``consul tls``."""
    work = tmp_path_factory.mktemp("aio-tls")
    for argv in (
        [consul_bin, "tls", "ca", "create"],
        [consul_bin, "tls", "cert", "create", "-server", "-dc", "dc1"],
    ):
        subprocess.run(argv, cwd=work, check=True, capture_output=True, timeout=60)
    return {
        "ca": work / "consul-agent-ca.pem",
        "cert": work / "dc1-server-consul-0.pem",
        "key": work / "dc1-server-consul-0-key.pem",
    }


class _Leader(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'"127.0.0.1:8300"'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass

    def address_string(self) -> str:  # a unix socket's peer has no address
        return "local"


def _serving(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def tls_server(certs: dict[str, Path]) -> Iterator[Any]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Leader)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serving(server)


@pytest.mark.parametrize(
    ("settings", "ok"),
    [
        ({"tls_server_name": "localhost"}, True),  # verified for the name on the certificate
        ({}, True),  # the certificate names 127.0.0.1 too
        ({"tls_server_name": "not-the-agent.example"}, False),
        ({"cacert": None}, False),  # the system store does not know Consul's CA
        ({"cacert": None, "verify_tls": False}, True),
    ],
    ids=["server-name", "ip", "wrong-name", "unknown-ca", "unverified"],
)
def test_tls_verifies_the_configured_name_against_the_configured_ca(
    run: Run, tls_server: Any, certs: dict[str, Path], settings: dict[str, Any], ok: bool
) -> None:
    host, port = tls_server.server_address[:2]
    values: dict[str, Any] = {"cacert": str(certs["ca"]), **settings}
    client = build_client(
        ConsulSettings(host=host, port=port, scheme="https", timeout_seconds=5, **values),
        io="asyncio",
    )
    error, _, leader = run(closing(client, timed(client.status.leader())))
    if ok:
        assert (error, leader) == (None, "127.0.0.1:8300")
    else:
        assert isinstance(error, TransportConnectionError)
        assert error.request_sent is False
        assert "SSL" in str(error) or "certificate" in str(error).lower()


@pytest.fixture
def unix_server() -> Iterator[Any]:
    # Short on purpose: a unix socket path has at most 107 bytes, pytest's tmp paths can be long.
    path = Path(f"/tmp/hc-aio-{uniq('u')[-8:]}.sock")
    server = socketserver.ThreadingUnixStreamServer(str(path), _Leader)
    server.daemon_threads = True
    try:
        yield from _serving(server)
    finally:
        path.unlink(missing_ok=True)


def test_a_unix_socket_serves_requests_over_one_kept_alive_connection(
    run: Run, unix_server: Any
) -> None:
    client = build_client(
        ConsulSettings(unix_socket=str(unix_server.server_address), timeout_seconds=5),
        io="asyncio",
    )

    async def scenario() -> list[Any]:
        return [await client.status.leader() for _ in range(3)]

    assert run(closing(client, scenario())) == ["127.0.0.1:8300"] * 3


def test_a_silent_unix_socket_is_bounded_by_the_deadline(run: Run) -> None:
    path = f"/tmp/hc-aio-{uniq('s')[-8:]}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(8)  # never accepts: the request is written, no answer comes
        client = build_client(
            ConsulSettings(unix_socket=path, timeout_seconds=DEADLINE), io="asyncio"
        )
        error, elapsed, _ = run(closing(client, timed(client.status.leader())))
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
    assert isinstance(error, TransportTimeout)
    assert error.request_sent is True
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + MARGIN


# -- the handler itself on both loops --------------------------------------------------------------


def test_the_handler_in_asyncio_mode_serves_envelopes_on_either_loop(
    run: Run, consul_agent: ConsulAgent
) -> None:
    """Bulkhead, transport, breaker and lifecycle together: 200 envelopes, 32 in flight on 8
    slots, a health check, a refused key (nothing sent) and a clean shutdown."""
    from handler_consul import HandlerConsul, InfraValidationError

    key = f"{uniq('aio-loop')}/k"

    async def scenario() -> dict[str, Any]:
        async with HandlerConsul(
            ConsulSettings(
                host=consul_agent.host,
                port=consul_agent.port,
                io="asyncio",
                max_concurrent_operations=8,
            )
        ) as handler:
            put = {"operation": "consul.kv_put", "payload": {"key": key, "value": "v"}}
            get = {"operation": "consul.kv_get", "payload": {"key": key}}
            assert (await handler.execute(put)).result == {"key": key, "applied": True}
            limit = asyncio.Semaphore(32)

            async def one() -> str:
                async with limit:
                    return str((await handler.execute(get)).result["value"])

            values = await asyncio.gather(*(one() for _ in range(200)))
            with pytest.raises(InfraValidationError):
                await handler.execute({"operation": "consul.kv_get", "payload": {"key": "../x"}})
            health = await handler.health_check()
            return {
                "values": set(values),
                "healthy": health["healthy"],
                "pool": handler.describe()["pool"],
            }

    outcome = run(scenario())
    assert outcome["values"] == {"v"}
    assert outcome["healthy"] is True
    assert outcome["pool"]["peak_busy"] == 8
    assert (outcome["pool"]["busy"], outcome["pool"]["waiting"], outcome["pool"]["threads"]) == (
        0,
        0,
        0,
    )
