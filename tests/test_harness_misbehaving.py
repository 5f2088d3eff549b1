"""The misbehaving servers do what they say, checked with plain sockets and http.client.

Every client here has an explicit timeout and every test closes its server and checks that
no thread of it is left running, so a harness bug shows up as a failure, not a hang.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from harness import (
    ConsulAgent,
    EarlyHints,
    ForwardThenDrop,
    OversizedBody,
    TrickleBody,
    TrickleHeaders,
    request,
)

GET = b"GET /v1/status/leader HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class _Reader:
    """Reads HTTP messages off a raw socket, by hand, so 1xx answers are seen as sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread: {self.buf[:200]!r}")
        self.buf += data

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _recv_for(sock: socket.socket, seconds: float) -> bytes:
    """Everything received within ``seconds`` (less if the peer closes)."""
    deadline = time.monotonic() + seconds
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length in {head!r}")


def _closed_cleanly(server: Any) -> None:
    """Close the server; none of its threads may still run (checked two independent ways)."""
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 1.5, "close() should take about one poll interval"
    assert server.alive_threads == []
    prefix = f"{server.kind}-{server.port}"
    assert [t for t in threading.enumerate() if t.name.startswith(prefix)] == []


def _wait(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def _key() -> str:
    return f"harness-misbehaving/{uuid.uuid4().hex}"


# ---- every server ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        TrickleHeaders,
        TrickleBody,
        EarlyHints,
        OversizedBody,
        lambda: ForwardThenDrop("127.0.0.1:1"),
    ],
    ids=["trickle-headers", "trickle-body", "early-hints", "oversized-body", "forward-then-drop"],
)
def test_every_server_starts_counts_and_stops_cleanly(make: Callable[[], Any]) -> None:
    with make() as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.http_addr == f"127.0.0.1:{server.port}"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert (server.connections, server.requests) == (0, 0)
        # A client that connects and never sends anything holds a connection thread.
        idle = socket.create_connection((server.host, server.port), timeout=2)
        try:
            assert _wait(lambda: server.active_connections == 1)
            assert server.connections == 1
            assert server.requests == 0
        finally:
            idle.close()
        port = server.port
    _closed_cleanly(server)
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_close_ends_connections_whose_client_never_hangs_up() -> None:
    server = TrickleHeaders(interval=0.05).start()
    clients = [socket.create_connection((server.host, server.port), timeout=2) for _ in range(3)]
    try:
        for client in clients:
            client.sendall(GET)
        assert server.wait_for_requests(3) == 3
        assert _wait(lambda: server.bytes_sent >= 3)
        _closed_cleanly(server)
        for client in clients:  # the server's side is gone: the rest of the stream ends
            _recv_for(client, 1.0)
            client.settimeout(1.0)
            assert client.recv(1) == b""
    finally:
        for client in clients:
            client.close()


def test_a_server_stops_by_itself_at_its_deadline() -> None:
    server = TrickleHeaders(interval=0.05, max_duration=0.6).start()
    try:
        with socket.create_connection((server.host, server.port), timeout=2) as client:
            client.sendall(GET)
            started = time.monotonic()
            data = _recv_for(client, 2.5)  # ends early: the server hangs up at its deadline
            assert time.monotonic() - started < 1.5
            assert data.startswith(b"HTTP/1.1 ")  # ~12 bytes at one per 50 ms
        assert _wait(lambda: server.alive_threads == [])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, server.port), timeout=1).close()
    finally:
        _closed_cleanly(server)


# ---- TrickleHeaders ----------------------------------------------------------------------
def test_trickle_headers_sends_one_byte_per_interval(
    trickle_headers_server: TrickleHeaders,
) -> None:
    server = trickle_headers_server
    assert server.interval == 0.4
    with socket.create_connection((server.host, server.port), timeout=2) as client:
        client.sendall(GET)
        data = _recv_for(client, 1.0)
    # One byte at once, then one per 0.4 s: 3 in a second, 4 allowing for scheduling.
    assert 1 <= len(data) <= 4, data
    assert b"HTTP/1.1 200 OK\r\n".startswith(data)
    assert server.request_lines == ["GET /v1/status/leader HTTP/1.1"]
    assert (server.connections, server.requests) == (1, 1)
    _closed_cleanly(server)


def test_trickle_headers_never_ends_the_header_block() -> None:
    with TrickleHeaders(interval=0.01) as server:
        with socket.create_connection((server.host, server.port), timeout=2) as client:
            client.sendall(GET)
            data = _recv_for(client, 1.0)
        assert len(data) > 40, "a header line should be under way"
        assert data.startswith(b"HTTP/1.1 200 OK\r\nX-Trickle-0: ")
        assert b"\r\n\r\n" not in data
        assert len(data) <= 110  # at most one byte per 10 ms
    _closed_cleanly(server)


def test_trickle_headers_outlasts_a_per_read_timeout(
    trickle_headers_server: TrickleHeaders,
) -> None:
    """A read timeout longer than the interval never fires: only a whole-answer deadline helps."""
    server = trickle_headers_server
    outcome: list[object] = []

    def client() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=0.6)
        try:
            conn.request("GET", "/v1/status/leader")
            outcome.append(conn.getresponse())
        except Exception as exc:
            outcome.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    thread.join(1.5)
    assert thread.is_alive(), f"http.client finished against a trickle: {outcome}"
    _closed_cleanly(server)
    thread.join(2)
    assert not thread.is_alive()


# ---- TrickleBody -------------------------------------------------------------------------
def test_trickle_body_advertises_100mb_and_trickles_it(trickle_body_server: TrickleBody) -> None:
    server = trickle_body_server
    with socket.create_connection((server.host, server.port), timeout=2) as client:
        client.sendall(GET)
        reader = _Reader(client)
        head = reader.head()  # the whole header block arrives at once
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert _content_length(head) == 100_000_000
        body = reader.buf + _recv_for(client, 1.0)
    assert 1 <= len(body) <= 4, body
    assert set(body) == {ord(".")}
    assert server.body_bytes_sent <= 4
    _closed_cleanly(server)


def test_trickle_body_keeps_alive_after_a_short_body() -> None:
    with TrickleBody(interval=0.001, content_length=5) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=2)
        try:
            for _ in range(2):
                conn.request("GET", "/x")
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, b".....")
        finally:
            conn.close()
        assert (server.connections, server.requests) == (1, 2)
    _closed_cleanly(server)


# ---- EarlyHints --------------------------------------------------------------------------
def test_early_hints_precede_each_final_answer_on_a_kept_alive_connection(
    early_hints_server: EarlyHints,
) -> None:
    server = early_hints_server
    assert server.mode == "103"
    with socket.create_connection((server.host, server.port), timeout=2) as client:
        reader = _Reader(client)
        for n in (1, 2):
            client.sendall(GET)
            assert reader.head() == b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
            head = reader.head()
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert f"X-Sequence: {n}\r\n".encode() in head
            body = reader.exact(_content_length(head))
            assert json.loads(body) == {"n": n}
    assert (server.connections, server.requests) == (1, 2)
    assert (server.responses, server.interims_sent) == (2, 2)
    _closed_cleanly(server)


def test_early_hints_100_mode_keeps_the_sequence_in_step(early_hints_server: EarlyHints) -> None:
    server = early_hints_server
    server.mode = "100"  # http.client skips 100 Continue (and only that 1xx) by itself
    conn = http.client.HTTPConnection(server.host, server.port, timeout=2)
    try:
        for n in (1, 2, 3):
            conn.request("PUT", f"/v1/kv/k{n}", body=b"v")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("X-Sequence") == str(n)
            assert json.loads(resp.read()) == {"n": n}
    finally:
        conn.close()
    assert (server.connections, server.requests, server.responses) == (1, 3, 3)
    assert server.request_lines == [f"PUT /v1/kv/k{n} HTTP/1.1" for n in (1, 2, 3)]
    _closed_cleanly(server)


def test_early_hints_several_interims_a_custom_body_and_connection_close() -> None:
    with EarlyHints(interim=3, body_for=lambda n, req: b"true") as server:
        with socket.create_connection((server.host, server.port), timeout=2) as client:
            client.sendall(b"PUT /v1/kv/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            reader = _Reader(client)
            for _ in range(3):
                assert reader.head().startswith(b"HTTP/1.1 103 ")
            head = reader.head()
            assert b"Connection: close\r\n" in head
            assert reader.exact(_content_length(head)) == b"true"
            client.settimeout(1)
            assert client.recv(1) == b""  # closed as asked
        assert server.interims_sent == 3
    _closed_cleanly(server)


def test_early_hints_103_only_sends_the_hint_and_then_nothing(
    early_hints_server: EarlyHints,
) -> None:
    server = early_hints_server
    server.mode = "103-only"
    with socket.create_connection((server.host, server.port), timeout=2) as client:
        client.sendall(GET)
        data = _recv_for(client, 0.6)
        assert data == b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        assert server.active_connections == 1  # held open, silent
    # The client hung up: the server notices and ends the connection's thread.
    assert _wait(lambda: server.active_connections == 0)
    assert server.responses == 0
    _closed_cleanly(server)


def test_early_hints_100_only_leaves_http_client_to_its_timeout(
    early_hints_server: EarlyHints,
) -> None:
    server = early_hints_server
    server.mode = "100-only"
    conn = http.client.HTTPConnection(server.host, server.port, timeout=0.5)
    try:
        conn.request("GET", "/v1/status/leader")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.getresponse()
        assert time.monotonic() - started < 1.5
    finally:
        conn.close()
    assert server.interims_sent == 1
    _closed_cleanly(server)


def test_early_hints_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        EarlyHints(mode="102")  # type: ignore[arg-type]


# ---- OversizedBody -----------------------------------------------------------------------
def test_oversized_body_streams_the_advertised_64_mib(
    oversized_body_server: OversizedBody,
) -> None:
    server = oversized_body_server
    conn = http.client.HTTPConnection(server.host, server.port, timeout=2)
    try:
        conn.request("GET", "/v1/kv/big")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(64 * 1024 * 1024)
        total, first, last = 0, b"", b""
        while piece := resp.read(1024 * 1024):
            first = first or piece[:1]
            last = piece[-1:]
            total += len(piece)
    finally:
        conn.close()
    assert total == 64 * 1024 * 1024
    assert (first, last) == (b'"', b'"')  # one JSON string
    assert _wait(lambda: server.responses == 1)
    assert server.body_bytes_sent == total
    _closed_cleanly(server)


def test_oversized_body_chunked_on_a_kept_alive_connection(
    oversized_body_server: OversizedBody,
) -> None:
    server = oversized_body_server
    server.chunked = True
    server.size = 3 * 1024 * 1024 + 5  # not a multiple of the piece size
    conn = http.client.HTTPConnection(server.host, server.port, timeout=2)
    try:
        for _ in range(2):
            conn.request("GET", "/v1/kv/big")
            resp = conn.getresponse()
            assert resp.getheader("Content-Length") is None
            assert resp.getheader("Transfer-Encoding") == "chunked"
            body = resp.read()
            assert len(body) == server.size
            assert json.loads(body) == "x" * (server.size - 2)
    finally:
        conn.close()
    assert (server.connections, server.requests, server.responses) == (1, 2, 2)
    _closed_cleanly(server)


def test_oversized_body_stops_when_the_client_hangs_up(
    oversized_body_server: OversizedBody,
) -> None:
    server = oversized_body_server
    with socket.create_connection((server.host, server.port), timeout=2) as client:
        client.sendall(GET)
        reader = _Reader(client)
        reader.head()
        reader.exact(1024 * 1024)
    assert _wait(lambda: server.active_connections == 0)
    assert server.responses == 0
    assert server.body_bytes_sent < server.size
    _closed_cleanly(server)


# ---- ForwardThenDrop ---------------------------------------------------------------------
@pytest.mark.consul
def test_forward_then_drop_applies_the_request_but_resets_the_client(
    forward_then_drop_for: Callable[..., ForwardThenDrop], consul_agent: ConsulAgent
) -> None:
    proxy = forward_then_drop_for(consul_agent)
    assert proxy.upstream_addr == consul_agent.http_addr
    key = _key()
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=3)
    try:
        conn.request("PUT", f"/v1/kv/{key}", body=b"applied")
        with pytest.raises(ConnectionResetError):
            conn.getresponse()
    finally:
        conn.close()
    assert (proxy.forwarded, proxy.dropped, proxy.passed) == (1, 1, 0)
    assert proxy.dropped_request_lines == [f"PUT /v1/kv/{key} HTTP/1.1"]
    # The agent applied it all the same.
    direct = request(consul_agent.http_addr, "GET", f"/v1/kv/{key}?raw", timeout=3)
    assert (direct.status, direct.body) == (200, b"applied")
    _closed_cleanly(proxy)


@pytest.mark.consul
def test_forward_then_drop_can_close_with_fin(
    forward_then_drop_for: Callable[..., ForwardThenDrop], consul_agent: ConsulAgent
) -> None:
    proxy = forward_then_drop_for(consul_agent, close_with="fin")
    key = _key()
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=3)
    try:
        conn.request("PUT", f"/v1/kv/{key}", body=b"fin")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
    finally:
        conn.close()
    assert request(consul_agent.http_addr, "GET", f"/v1/kv/{key}?raw", timeout=3).body == b"fin"
    _closed_cleanly(proxy)


@pytest.mark.consul
def test_forward_then_drop_drops_only_the_next_request_on_a_reused_connection(
    forward_then_drop_for: Callable[..., ForwardThenDrop], consul_agent: ConsulAgent
) -> None:
    proxy = forward_then_drop_for(consul_agent, drop=0)
    good, dropped = _key(), _key()
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=3)
    try:
        conn.request("PUT", f"/v1/kv/{good}", body=b"a")
        resp = conn.getresponse()
        assert (resp.status, resp.read().strip()) == (200, b"true")
        # A chunked request body is framed and forwarded too.
        conn.request("PUT", f"/v1/kv/{good}", body=iter([b"ch", b"unked"]))
        assert conn.getresponse().read().strip() == b"true"
        conn.request("GET", f"/v1/kv/{good}?raw")
        assert conn.getresponse().read() == b"chunked"

        proxy.drop_next(1)
        conn.request("PUT", f"/v1/kv/{dropped}", body=b"b")
        with pytest.raises(ConnectionResetError):
            conn.getresponse()
    finally:
        conn.close()
    assert proxy.connections == 1  # the dropped request went over the reused connection
    assert (proxy.forwarded, proxy.dropped, proxy.passed) == (4, 1, 3)
    direct = request(consul_agent.http_addr, "GET", f"/v1/kv/{dropped}?raw", timeout=3)
    assert (direct.status, direct.body) == (200, b"b")

    # Only the next one: later requests pass through again.
    passed = request(proxy.http_addr, "GET", f"/v1/kv/{dropped}?raw", timeout=3)
    assert (passed.status, passed.body) == (200, b"b")
    assert (proxy.connections, proxy.passed) == (2, 4)

    proxy.drop_all()
    with pytest.raises(ConnectionResetError):
        request(proxy.http_addr, "GET", "/v1/status/leader", timeout=3)
    _closed_cleanly(proxy)


def test_forward_then_drop_closes_the_client_when_the_upstream_is_down(dead_port: int) -> None:
    with ForwardThenDrop(f"127.0.0.1:{dead_port}", drop=0) as proxy:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            request(proxy.http_addr, "GET", "/v1/status/leader", timeout=2)
        assert (proxy.requests, proxy.forwarded) == (1, 0)
    _closed_cleanly(proxy)


def test_forward_then_drop_rejects_an_unknown_close_mode() -> None:
    with pytest.raises(ValueError, match="close_with"):
        ForwardThenDrop("127.0.0.1:1", close_with="linger")  # type: ignore[arg-type]
