"""What is retried: transient failures only, and an unknown outcome only when it is idempotent.

Retried up to ``retry.max_attempts``: connection refused, 5xx (Consul may be electing a
leader), 429, timeouts. A write whose outcome is unknown (it timed out after it was sent, or
was answered 5xx) is re-sent only when the operation is idempotent for its payload: a plain
``kv_put`` is, a ``kv_put`` with ``cas``, ``acquire`` or ``release`` is not. A request that
never left (connection refused) has a known outcome and is retried whatever it was.

Consul's own rejections (400, 403, 404, 413, 500 "invalid session") are asked once: see
tests/test_errors.py. The deadline that bounds all attempts is in tests/test_deadline.py,
cancellation in tests/test_cancellation.py, the breaker asked before each attempt in
tests/test_circuit_breaker.py, and backoff and the retry budget on a fake clock in
tests/unit/test_retry_policy.py.
"""

from __future__ import annotations

import asyncio
import http.client
import time
import uuid

import pytest
from harness import ConsulAgent
from support import (
    FAST_RETRY,
    CountFor,
    MakeHandler,
    ProxyFor,
    RecordingSleep,
    assert_json_ready,
    breaker_snapshot,
    counting_through_toxiproxy,
    expected_context,
    in_thread,
    kv_get,
    kv_put,
    requests_to,
    uniq,
    unique_key,
    with_correlation_id,
    with_deadline,
)

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraConnectionError,
    InfraTimeoutError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


# -- transient failures are retried up to max_attempts ----------------------------------------


@pytest.mark.parametrize(
    ("operation", "max_attempts"),
    [("kv_put", 1), ("kv_get", 3), ("kv_get", 4)],
    ids=["put-once", "get-3", "get-4"],
)
async def test_connection_refused_is_retried_up_to_max_attempts(
    operation: str,
    max_attempts: int,
    toxiproxy_for: ProxyFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    proxy = toxiproxy_for(consul_agent)
    sleep = RecordingSleep()
    handler = await make_tuned_handler(proxy, sleep=sleep, retry={"max_attempts": max_attempts})
    await in_thread(proxy.down)  # nothing listens: connection refused
    k = unique_key("refused")
    env = with_correlation_id(kv_get(k) if operation == "kv_get" else kv_put(k))
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(env)
    error = info.value
    assert type(error) is InfraConnectionError
    assert "refused" in str(error).lower()
    assert error.context.model_dump(mode="json") == expected_context(
        operation=f"consul.{operation}",
        category="connection",
        retryable=True,
        attempts=max_attempts,
        correlation_id=env["correlation_id"],
    )
    assert_json_ready(error)
    assert len(sleep.calls) == max_attempts - 1
    state = breaker_snapshot(handler)
    assert (state["total_failures"], state["consecutive_failures"]) == (max_attempts,) * 2
    # Back up: the same handler works again.
    await in_thread(proxy.up)
    response = await handler.execute(kv_get(unique_key("refused")))
    assert response.result["found"] is False


async def test_server_error_5xx_is_retried_up_to_max_attempts(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_tuned_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    # A datacenter Consul does not know: every KV call answers 500 "No path to datacenter".
    handler = await make_tuned_handler(counter, datacenter="nowhere")
    counter.reset()
    k = unique_key()
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(kv_get(k))
    assert info.value.context.status_code == 500
    assert "No path to datacenter" in str(info.value)
    assert info.value.context.attempts == 3
    assert len(requests_to(counter, "GET", f"/v1/kv/{k}")) == 3
    # A plain put is idempotent, so a 5xx is retried for it too.
    counter.reset()
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(kv_put(k))
    assert info.value.context.attempts == 3
    assert len(requests_to(counter, "PUT", f"/v1/kv/{k}")) == 3


async def test_too_many_requests_429_is_retried_up_to_max_attempts(
    two_connection_agent: ConsulAgent, toxiproxy_for: ProxyFor, make_tuned_handler: MakeHandler
) -> None:
    agent = two_connection_agent
    held: list[http.client.HTTPConnection] = []
    try:
        proxy = toxiproxy_for(agent)
        handler = await make_tuned_handler(proxy, max_concurrent_operations=1)
        # Drop the handler's pooled connection, then use up 127.0.0.1's two connections.
        await in_thread(proxy.down)
        await in_thread(proxy.up)

        def hold_two() -> list[int]:
            statuses = []
            for _ in range(2):
                for _try in range(50):
                    conn = http.client.HTTPConnection(agent.host, agent.http_port, timeout=5)
                    conn.request("GET", "/v1/status/leader")
                    response = conn.getresponse()
                    response.read()
                    if response.status == 200:
                        held.append(conn)
                        break
                    conn.close()  # the agent had not yet noticed a dropped connection
                    time.sleep(0.02)
                statuses.append(response.status)
            return statuses

        assert await in_thread(hold_two) == [200, 200]
        with pytest.raises(InfraConnectionError) as info:
            await handler.execute(kv_get(unique_key()))
        assert info.value.context.status_code == 429
        assert info.value.context.attempts == 3
    finally:
        for conn in held:
            conn.close()


async def test_429_on_initialize_is_a_retryable_connection_error(
    make_handler: MakeHandler, two_connection_agent: ConsulAgent
) -> None:
    handler = await make_handler(
        two_connection_agent, retry={**FAST_RETRY, "max_attempts": 3}, breaker={"enabled": False}
    )
    await handler.shutdown()  # its keep-alive connection would count against the limit
    held = [
        http.client.HTTPConnection(two_connection_agent.host, two_connection_agent.port, timeout=5)
        for _ in range(2)
    ]
    try:
        for conn in held:  # two open connections: the handler's next one is over the limit
            conn.request("GET", "/v1/status/leader")
            assert conn.getresponse().read()
        handler = HandlerConsul(
            ConsulSettings(
                host=two_connection_agent.host,
                port=two_connection_agent.port,
                retry={**FAST_RETRY, "max_attempts": 3},
            )
        )
        with pytest.raises(InfraConnectionError) as caught:
            await handler.initialize()
        error = caught.value
        assert type(error) is InfraConnectionError
        assert error.context.status_code == 429
        assert error.context.retryable is True
        assert "too many concurrent connections" in error.message
        assert_json_ready(error)
    finally:
        for conn in held:
            conn.close()
    # Once the connections are gone the same settings work. The agent counts a connection
    # until it has read its close, a moment after ours: until then it still answers 429
    # (seen once on a loaded machine), so the handler is given a few seconds to come up.
    recovered: HandlerConsul | None = None
    give_up = time.monotonic() + 10
    while recovered is None:
        try:
            recovered = await make_handler(
                two_connection_agent, retry={**FAST_RETRY, "max_attempts": 3}
            )
        except InfraConnectionError as still_limited:
            refused = still_limited.context.status_code
        else:
            break
        assert refused == 429
        assert time.monotonic() < give_up, "the agent kept refusing after 10 s"
        await asyncio.sleep(0.05)
    response = await recovered.execute(with_correlation_id(kv_put(f"{uniq('429')}/k")))
    assert response.result["applied"] is True


# -- an unknown outcome is re-sent only when idempotent ---------------------------------------


async def test_timed_out_cas_write_is_never_resent(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_tuned_handler(counter, timeout_seconds=0.5)
    await in_thread(toxic.latency, 1500)  # Consul's answer arrives after the timeout
    counter.reset()
    k = unique_key()
    with pytest.raises(InfraTimeoutError) as info:
        await handler.execute(with_deadline(kv_put(k, "once", cas=0), 5.0))
    assert info.value.context.attempts == 1
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [f"PUT /v1/kv/{k}?cas=0 HTTP/1.1"]
    # The request did reach Consul: its outcome was unknown, not "failed".
    stored = await in_thread(consul_agent.request, "GET", f"/v1/kv/{k}?raw")
    assert (stored.status, stored.body) == (200, b"once")
    assert len(requests_to(counter, "PUT", f"/v1/kv/{k}")) == 1


async def test_timed_out_plain_write_is_retried(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_tuned_handler(counter, timeout_seconds=0.3)
    await in_thread(toxic.latency, 1500)
    counter.reset()
    k = unique_key()
    with pytest.raises(InfraTimeoutError) as info:
        await handler.execute(with_deadline(kv_put(k, "again"), 5.0))
    assert info.value.context.attempts == 3
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [f"PUT /v1/kv/{k} HTTP/1.1"] * 3


async def test_lock_write_answered_5xx_is_never_resent(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_tuned_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    # A datacenter Consul does not know: 500 "No path to datacenter", a genuine 5xx whose
    # outcome the handler cannot know, so a lock write is not re-sent (a plain put is, above).
    handler = await make_tuned_handler(counter, datacenter="nowhere")
    counter.reset()
    k = unique_key()
    session = str(uuid.uuid4())
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(with_correlation_id(kv_put(k, "lock", acquire=session)))
    error = info.value
    assert type(error) is InfraConnectionError
    assert error.context.status_code == 500
    assert "No path to datacenter" in str(error)
    assert "500" in str(error)
    assert error.context.attempts == 1  # outcome unknown and not idempotent: never re-sent
    assert error.context.datacenter == "nowhere"
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [
        f"PUT /v1/kv/{k}?acquire={session}&dc=nowhere HTTP/1.1"
    ]
    assert [p.split("?")[0] for p in counter.paths] == [f"/v1/kv/{k}"]
    assert_json_ready(error)


async def test_cas_write_that_never_left_is_retried(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    """Refused before anything was sent: the outcome is known (not applied), so retry is safe."""
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy)
    await in_thread(proxy.down)
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(kv_put(unique_key(), "x", cas=0))
    assert info.value.context.attempts == 3
