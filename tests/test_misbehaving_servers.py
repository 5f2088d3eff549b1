"""The transport against servers that misbehave on purpose (tests/harness/misbehaving.py).

- Never hangs: one absolute deadline per request, whatever the server trickles.
- Never desyncs: a 1xx before the answer is skipped; a connection whose state is unknown is
  never reused.
- Never reads without bound: a body over the cap is refused and its connection closed.
- Never re-sends on its own: a request that was written and then lost its answer comes back as
  an error that says Consul may have applied it; only the operation's rule may re-send it.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
import time
import urllib.request
from typing import Any

import pytest
from harness import ConsulAgent, EarlyHints, OversizedBody, TrickleBody, TrickleHeaders
from support import DirectFor, envelope, scripted_server, uniq, wait_until

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraAuthenticationError,
    InfraConnectionError,
    InfraConsulError,
    InfraTimeoutError,
    InfraUnavailableError,
)
from handler_consul._transport import ResponseTooLarge, TransportTimeout

# A deadline of 1 s against a server that sends a byte every 0.4 s: without an absolute
# deadline the request would last as long as the server likes (hours for TrickleBody).
DEADLINE = 1.0
MARGIN = 0.5


@pytest.mark.parametrize("server_fixture", ["trickle_headers_server", "trickle_body_server"])
async def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(
    server_fixture: str, request: pytest.FixtureRequest, direct: DirectFor
) -> None:
    server: TrickleHeaders | TrickleBody = request.getfixturevalue(server_fixture)
    # The cap is above TrickleBody's announced 100 MB, so only the deadline can end it.
    client = direct(server, timeout_seconds=DEADLINE, max_response_bytes=200_000_000)
    error, elapsed, _ = await client.timed(lambda c: c.kv.get("k"))
    assert isinstance(error, TransportTimeout)
    assert error.request_sent is True
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + MARGIN
    assert server.requests == 1


async def test_a_trickling_server_frees_its_slot_within_the_timeout(
    trickle_body_server: TrickleBody, clean_consul_env: None, io_mode: str
) -> None:
    """The handler's own slot (a worker thread, or the call on the loop and its connection),
    not just its caller, is free again by timeout + margin."""
    handler = HandlerConsul(
        ConsulSettings(
            host=trickle_body_server.host,
            port=trickle_body_server.port,
            timeout_seconds=DEADLINE,
            max_concurrent_operations=1,
            max_response_bytes=200_000_000,
        )
    )
    started = time.monotonic()
    with pytest.raises(InfraTimeoutError):
        await handler.initialize()
    if io_mode == "asyncio":
        # No thread: the call is the coroutine that just raised, so it ended with its
        # deadline; it dropped its connection too, which the server notices at its next
        # byte (one interval later).
        assert time.monotonic() - started < DEADLINE + MARGIN + 0.1
        assert await wait_until(lambda: trickle_body_server.active_connections == 0, timeout=2)
    else:
        workers = [t for t in threading.enumerate() if t.name.startswith("handler-consul-")]
        for worker in workers:
            await asyncio.to_thread(worker.join, DEADLINE + 2)
        assert [t.name for t in workers if t.is_alive()] == []
        assert time.monotonic() - started < DEADLINE + MARGIN + 0.1


async def test_a_1xx_alone_ends_at_the_deadline(direct: DirectFor) -> None:
    with EarlyHints(mode="103-only") as server:
        client = direct(server, timeout_seconds=DEADLINE)
        error, elapsed, _ = await client.timed(lambda c: c.kv.get("k"))
    assert isinstance(error, TransportTimeout)
    assert elapsed < DEADLINE + MARGIN


def _kv_answer(n: int, _request: Any) -> bytes:
    value = base64.b64encode(str(n).encode()).decode()
    entry = {"Key": "k", "Value": value, "Flags": 0, "CreateIndex": n, "ModifyIndex": n,
             "LockIndex": 0, "Session": None}  # fmt: skip
    return json.dumps([entry]).encode()


@pytest.mark.parametrize("mode", ["103", "100"])
async def test_informational_answers_are_skipped_and_never_desync_a_kept_alive_connection(
    mode: str, direct: DirectFor
) -> None:
    """Each request reads its own answer (the server numbers them), over one connection."""
    with EarlyHints(mode=mode, body_for=_kv_answer) as server:
        client = direct(server, timeout_seconds=5)
        values = [(await client(lambda c: c.kv.get("k")))[1]["Value"] for _ in range(5)]
        assert values == [b"1", b"2", b"3", b"4", b"5"]
        assert server.connections == 1
        assert server.interims_sent == 5


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_over_the_size_cap_is_refused_and_its_connection_closed(
    chunked: bool, direct: DirectFor
) -> None:
    cap = 1024 * 1024
    with OversizedBody(size=64 * 1024 * 1024, chunked=chunked) as server:
        client = direct(server, timeout_seconds=10, max_response_bytes=cap)
        error, elapsed, _ = await client.timed(lambda c: c.kv.get("k"))
        # The connection was not put back: the next request opens a new one.
        second, _, _ = await client.timed(lambda c: c.kv.get("k"))
        assert isinstance(error, ResponseTooLarge)
        assert isinstance(second, ResponseTooLarge)
        assert error.limit == cap
        assert server.connections == 2
        # Refused at the announced length, or after reading just past the cap.
        assert elapsed < 5


async def test_an_oversized_answer_is_a_consul_error_not_an_outage(
    oversized_body_server: OversizedBody, clean_consul_env: None
) -> None:
    handler = HandlerConsul(
        ConsulSettings(
            host=oversized_body_server.host,
            port=oversized_body_server.port,
            max_response_bytes=64 * 1024,
        )
    )
    with pytest.raises(InfraConsulError) as caught:
        await handler.initialize()
    error = caught.value
    assert "65536-byte cap" in error.message
    assert error.retryable is False
    assert error.counts_as_failure is False
    assert (error.context.request_sent, error.context.outcome_unknown) == (True, True)


# -- never re-send an unknown outcome ------------------------------------------------------------


def _agent_kv(agent: ConsulAgent, key: str) -> Any:
    url = f"http://{agent.http_addr}/v1/kv/{key}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())[0]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _agent_services(agent: ConsulAgent) -> dict[str, Any]:
    url = f"http://{agent.http_addr}/v1/agent/services"
    with urllib.request.urlopen(url, timeout=5) as resp:
        services: dict[str, Any] = json.loads(resp.read())
    return services


async def test_a_cas_write_applied_then_unanswered_is_reported_unknown_and_not_resent(
    make_handler: Any, consul_agent: ConsulAgent, forward_then_drop_for: Any
) -> None:
    proxy = forward_then_drop_for(consul_agent, drop=0)
    handler = await make_handler(proxy)  # the probe passes through: a kept-alive connection
    key = f"{uniq('drop')}/cas"
    proxy.drop_next(1)
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(envelope("kv_put", key=key, value="v", cas=0))
    context = caught.value.context
    assert (context.request_sent, context.outcome_unknown, context.attempts) == (True, True, 1)
    assert [line.split()[0] for line in proxy.dropped_request_lines] == ["PUT"]
    assert proxy.forwarded == 2  # the probe and the one PUT: nothing was re-sent
    assert _agent_kv(consul_agent, key)["Value"] == base64.b64encode(b"v").decode()


async def test_a_deregister_applied_then_unanswered_is_not_resent_to_answer_false(
    make_handler: Any, consul_agent: ConsulAgent, forward_then_drop_for: Any
) -> None:
    proxy = forward_then_drop_for(consul_agent, drop=0)
    handler = await make_handler(proxy)
    service_id = uniq("drop-svc")
    await handler.execute(envelope("register", name="drop-svc", service_id=service_id))
    assert service_id in _agent_services(consul_agent)
    forwarded = proxy.forwarded
    proxy.drop_next(1)
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(envelope("deregister", service_id=service_id))
    assert caught.value.context.outcome_unknown is True
    assert proxy.forwarded == forwarded + 1
    assert service_id not in _agent_services(consul_agent)


async def test_a_plain_put_applied_then_unanswered_is_resent_because_it_is_idempotent(
    make_handler: Any, consul_agent: ConsulAgent, forward_then_drop_for: Any
) -> None:
    proxy = forward_then_drop_for(consul_agent, drop=0)
    handler = await make_handler(proxy, retry={"initial_delay_seconds": 0.0})
    key = f"{uniq('drop')}/plain"
    forwarded = proxy.forwarded
    proxy.drop_next(1)
    response = await handler.execute(envelope("kv_put", key=key, value="v"))
    assert response.result == {"key": key, "applied": True}
    assert response.attempts == 2
    assert proxy.forwarded == forwarded + 2


class _ClosesIdleConnections(http.server.BaseHTTPRequestHandler):
    """Answers as if it kept the connection alive, then closes it, as a server whose idle
    timeout fires between two requests does."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"true")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


async def test_an_idle_connection_the_server_closed_is_not_used_for_a_write(
    direct: DirectFor,
) -> None:
    """Noticed before the write, so the write goes on a fresh connection and is answered:
    a CAS write never becomes an unknown outcome because of an idle close."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosesIdleConnections)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        client = direct(_Address(str(host), int(port)), timeout_seconds=5)
        assert await client(lambda c: c.kv.put("idle/a", "1")) is True
        # The server's FIN arrives while the connection sits idle. A blocking sleep on
        # purpose: the event loop does not see the FIN before the next request is made, so
        # only the socket check before reuse can notice it (as it must in a worker thread).
        time.sleep(0.1)  # noqa: ASYNC251
        # A body-less write goes out in one send, so only the liveness check can save it (a
        # write with a body fails on its second send and is re-sent as never having left).
        assert await client(lambda c: c.agent.service.deregister("idle-b")) is True
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Address:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


# -- the final error remembers what earlier attempts did -----------------------------------------


@pytest.mark.parametrize(
    ("script", "error_class", "breaker"),
    [
        ([503, 400], InfraConsulError, {}),
        ([503, 403], InfraAuthenticationError, {}),
        ([503], InfraUnavailableError, {"failure_threshold": 1}),  # the breaker opens
    ],
)
async def test_an_error_after_an_unanswered_attempt_still_says_it_may_have_applied(
    script: list[int],
    error_class: type[Exception],
    breaker: dict[str, Any],
    clean_consul_env: None,
) -> None:
    """The first attempt got a 503 (sent, maybe applied); the retry ends otherwise. The final
    error must not tell the caller that nothing was sent."""
    with scripted_server(script) as server:
        host, port = server.server_address[:2]
        handler = HandlerConsul(
            ConsulSettings(
                host=str(host),
                port=int(port),
                retry={"initial_delay_seconds": 0.0},
                breaker=breaker,
            )
        )
        await handler.initialize()
        with pytest.raises(error_class) as caught:
            await handler.execute(envelope("kv_put", key="k", value="v"))
        await handler.shutdown()
    context = caught.value.context  # type: ignore[attr-defined]
    assert (context.request_sent, context.outcome_unknown) == (True, True)
