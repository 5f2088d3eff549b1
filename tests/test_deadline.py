"""The deadline bounds everything, and a result that arrived is never turned into a timeout.

An envelope's ``timeout_seconds`` (default: the settings' ``timeout_seconds``) covers every
attempt, every wait for a worker and every backoff: each attempt's request timeout is what is
left of it, and a backoff that would end past it is not slept. A request that outlives its
timeout ends as InfraTimeoutError whose outcome is unknown. A result the worker finished is
delivered even when the deadline fell due in the same instant, in the pool and in the handler.

Real agents behind toxiproxy; the pool's own tests hold its workers on gates (support.pool).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from harness import ConsulAgent, Toxiproxy
from support import (
    EVENT_BOUND,
    OVERRUN,
    CountFor,
    Gates,
    MakeHandler,
    MakePool,
    ProxyFor,
    RecordingSleep,
    assert_json_ready,
    counting_through_toxiproxy,
    envelope,
    expected_context,
    in_thread,
    kv_get,
    kv_put,
    uniq,
    unique_key,
    wait_until,
    with_correlation_id,
    with_deadline,
)

from handler_consul import InfraConnectionError, InfraTimeoutError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


# -- every attempt, wait and backoff fits in the envelope's deadline --------------------------


async def test_execute_against_a_black_hole_ends_within_its_deadline(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, timeout_seconds=0.4, retry={"max_attempts": 10})
    await in_thread(proxy.timeout, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraTimeoutError) as info:
        await handler.execute(with_deadline(kv_get(unique_key()), 1.0))
    elapsed = loop.time() - started
    assert 0.9 <= elapsed <= 1.0 + OVERRUN
    assert info.value.context.attempts >= 2  # retried inside the deadline, not past it


async def test_no_backoff_sleep_ends_past_the_deadline(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    sleep = RecordingSleep()
    handler = await make_tuned_handler(
        proxy,
        rng=lambda: 0.999,
        sleep=sleep,
        retry={
            "max_attempts": 10,
            "initial_delay_seconds": 0.2,
            "max_delay_seconds": 5.0,
            "exponential_base": 2.0,
        },
    )
    await in_thread(proxy.down)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(with_deadline(kv_get(unique_key()), 1.0))
    elapsed = loop.time() - started
    # Backoffs 0.2 and 0.4 fit; the next (0.8) would end past the 1 s deadline, so it is
    # never slept and the last error is raised at once.
    assert sleep.seconds == pytest.approx([0.1998, 0.3996])
    assert all(at + seconds < started + 1.0 for at, seconds in sleep.calls)
    assert info.value.context.attempts == 3
    assert elapsed < 1.0


async def test_envelope_deadline_shorter_than_the_request_timeout_wins(
    make_handler: MakeHandler, toxiproxy: Toxiproxy
) -> None:
    handler = await make_handler(toxiproxy, timeout_seconds=10)
    toxiproxy.latency(1500)
    env = with_deadline(envelope("kv_get", key=f"{uniq('slow')}/k"), 0.25)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraTimeoutError) as caught:
        await handler.execute(env)
    assert loop.time() - started < 1.2
    assert caught.value.context.category == "timeout"
    assert caught.value.context.operation == "consul.kv_get"


async def test_a_request_that_outlives_its_timeout_is_a_timeout_with_an_unknown_outcome(
    make_handler: MakeHandler, toxiproxy: Toxiproxy
) -> None:
    handler = await make_handler(toxiproxy, timeout_seconds=0.3)
    toxiproxy.latency(1500)
    env = with_correlation_id(envelope("kv_get", key=f"{uniq('slow')}/k"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraTimeoutError) as caught:
        await handler.execute(env)
    elapsed = loop.time() - started
    assert elapsed < 1.2
    error = caught.value
    assert isinstance(error, InfraConnectionError)
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="timeout",
        retryable=True,
        attempts=1,
        correlation_id=env["correlation_id"],
        request_sent=True,
        outcome_unknown=True,
    )
    assert_json_ready(error)


# -- a completed result is delivered, never turned into a timeout -----------------------------


async def test_result_that_arrived_is_delivered_even_after_the_deadline_passed(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_tuned_handler(counter)
    await in_thread(toxic.latency, 100)  # the answer comes back 100 ms after the request
    counter.reset()
    k = unique_key()
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(handler.execute(with_deadline(kv_put(k, "kept"), 0.3)))
    assert await wait_until(lambda: counter.requests == 1, timeout=5, interval=0.001)
    # Block the loop (no await) from before the answer arrives until the 0.3 s deadline is
    # well past: the worker's result and the deadline are both due when the loop resumes.
    while counter.bytes_down == 0 and loop.time() < started + 5:
        pass
    assert counter.bytes_down > 0
    while loop.time() < started + 0.45:
        pass
    response = await task
    assert (response.status, response.result["applied"], response.attempts) == ("success", True, 1)
    assert response.duration_ms >= 300
    stored = await in_thread(consul_agent.request, "GET", f"/v1/kv/{k}?raw")
    assert stored.body == b"kept"


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_delivers_a_result_that_completed_even_when_the_deadline_is_also_due(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1)
    go = gates.new()
    returned = threading.Event()

    def finishes_when_told() -> str:
        go.wait(EVENT_BOUND)
        returned.set()
        return "done"

    loop = asyncio.get_running_loop()
    dispatched_at = loop.time()
    task = asyncio.create_task(pool.run(finishes_when_told, timeout=0.05))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    go.set()
    assert returned.wait(EVENT_BOUND)
    # Hold the loop (no await) until the 50 ms deadline is well past: when it resumes, the
    # worker's result and the deadline timer are due in the same iteration.
    while loop.time() < dispatched_at + 0.15:
        pass
    assert await task == "done"
    assert pool.busy == 0


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_delivers_an_exception_from_the_call_and_frees_the_slot(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1)

    def boom() -> None:
        raise ValueError("from the worker")

    with pytest.raises(ValueError, match="from the worker"):
        await pool.run(boom, timeout=5)
    assert pool.busy == 0
    assert await pool.run(lambda: "after", timeout=5) == "after"
