"""Backpressure: when every worker is busy, callers wait a bounded time in a bounded queue,
and the event loop keeps ticking whatever the load.

A caller waits for a worker at most ``min(max_wait_seconds, what is left of its deadline)``,
then gets InfraUnavailableError ("all Consul workers busy"): not retried, and not a breaker
failure, since a saturated pool says nothing about Consul. At most ``max_queued_operations``
callers wait; the next is refused at once, so memory stays bounded however many envelopes
arrive. Nothing on the loop blocks: a 5 ms ticker keeps its p99 lag under 50 ms during
initialize, health checks and shutdown against a black hole and with 256 envelopes in flight.
Long polls (Consul blocking queries) would need a bound of their own; none exists yet.

The pool on its own holds its workers on gates the test releases (support.pool); the handler
tests run against real agents behind toxiproxy. How many threads there are is in
tests/test_worker_threads.py.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
from harness import ConsulAgent
from support import (
    EVENT_BOUND,
    OVERRUN,
    CountFor,
    Gates,
    LagTicker,
    MakeHandler,
    MakePool,
    ProxyFor,
    assert_json_ready,
    assert_loop_kept_ticking,
    assert_nothing_counted,
    breaker_snapshot,
    expected_context,
    held,
    in_thread,
    kv_get,
    kv_put,
    pool_snapshot,
    tuned,
    uniq,
    unique_key,
    wait_until,
    with_correlation_id,
)

from handler_consul import InfraTimeoutError, InfraUnavailableError
from handler_consul._pool import PoolSaturated

pytestmark = pytest.mark.usefixtures("clean_consul_env")


# -- the pool on its own: a bounded wait in a bounded queue -------------------------------------


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_waiting_for_a_slot_is_bounded_by_max_wait(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1, max_wait=0.05)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "first", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PoolSaturated) as info:
        await pool.run(lambda: "second", timeout=EVENT_BOUND)
    waited = loop.time() - started
    assert 0.05 <= info.value.waited_seconds <= waited
    assert waited < 0.05 + 0.5
    assert pool.waiting == 0
    gate.set()
    assert await running == "first"


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_wait_is_also_bounded_by_the_call_timeout(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1, max_wait=60.0)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "first", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    with pytest.raises(PoolSaturated) as info:
        await asyncio.wait_for(pool.run(lambda: "second", timeout=0.05), 5)
    assert 0.05 <= info.value.waited_seconds < 1.0
    gate.set()
    assert await running == "first"


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_queue_is_capped_and_extra_callers_are_refused_at_once(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1, max_queued=5)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    queued = [asyncio.create_task(pool.run(lambda i=i: i, timeout=EVENT_BOUND)) for i in range(5)]
    assert await wait_until(lambda: pool.waiting == 5, timeout=5)

    refused = 0
    for _ in range(10_000):
        with pytest.raises(PoolSaturated) as info:
            await pool.run(lambda: "never", timeout=EVENT_BOUND)
        assert info.value.waited_seconds == 0.0
        refused += 1
    assert refused == 10_000
    assert pool.waiting == 5  # the queue never grew past its cap

    gate.set()
    assert await running == "running"
    assert await asyncio.gather(*queued) == [0, 1, 2, 3, 4]  # served in arrival order


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_abandoned_calls_count_against_the_cap_until_a_worker_skips_them(
    make_pool: MakePool, gates: Gates
) -> None:
    """While the only worker hangs, callers that gave up leave entries in the queue: those
    still count, so the queue cannot grow past its cap however long the hang lasts."""
    pool = make_pool(1, max_wait=0.05, max_queued=3)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    payload = bytearray(1024)
    for _ in range(3):  # each waits its 50 ms for a slot, then gives up
        with pytest.raises(PoolSaturated) as info:
            await pool.run(len, payload, timeout=EVENT_BOUND)
        assert info.value.waited_seconds > 0
    assert pool.waiting == 0
    with pytest.raises(PoolSaturated) as info:  # three stale entries fill the cap
        await pool.run(len, payload, timeout=EVENT_BOUND)
    assert info.value.waited_seconds == 0.0
    gate.set()
    assert await running == "running"
    # The worker skips the stale entries (their calls never run) and the queue is usable again.
    assert await pool.run(len, payload, timeout=EVENT_BOUND) == 1024
    assert pool.peak_busy == 1


@pytest.mark.io_independent("BoundedThreadPool on its own; AsyncBulkhead: tests/test_bulkhead.py")
async def test_pool_cancelled_waiter_leaves_the_queue_and_the_slot_goes_on(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    first = asyncio.create_task(pool.run(lambda: "first", timeout=EVENT_BOUND))
    second = asyncio.create_task(pool.run(lambda: "second", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.waiting == 2, timeout=5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert pool.waiting == 1
    gate.set()
    assert await running == "running"
    assert await asyncio.wait_for(second, EVENT_BOUND) == "second"
    assert pool.busy == 0


# -- the handler: bounded wait, bounded memory ---------------------------------------------


async def test_handler_waits_for_a_worker_at_most_max_wait_then_is_unavailable_not_counted(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(
        proxy,
        timeout_seconds=5.0,
        max_concurrent_operations=1,
        max_wait_seconds=0.2,
        breaker={"failure_threshold": 1},
    )
    await in_thread(proxy.latency, 800)
    slow = asyncio.create_task(handler.execute(kv_get(unique_key())))
    assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 1, timeout=5)
    env = with_correlation_id(kv_get(unique_key()))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraUnavailableError) as info:
        await handler.execute(env)
    waited = loop.time() - started
    assert 0.2 <= waited < 0.2 + OVERRUN
    error = info.value
    assert "busy" in str(error)
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="unavailable",
        retryable=False,
        attempts=1,
        correlation_id=env["correlation_id"],
    )
    assert_json_ready(error)
    # Saturation is not an outage: the breaker (threshold 1) has counted nothing...
    assert_nothing_counted(handler)
    # ...and the call holding the worker still finishes normally.
    assert (await slow).result["found"] is False


@pytest.mark.slow
async def test_memory_stays_bounded_when_100k_envelopes_arrive(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    """Two calls hang, a hundred wait, and 99,898 more are refused at once: the queue never
    grows past ``max_queued_operations`` and the refused envelopes leave nothing behind."""
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(
        proxy,
        timeout_seconds=300.0,
        max_concurrent_operations=2,
        max_wait_seconds=300.0,
        max_queued_operations=100,
    )
    await in_thread(proxy.timeout, 0)
    env = kv_get(unique_key())
    waves, per_wave = 10, 10_000
    stuck: list[asyncio.Task[Any]] = []
    refused = 0
    objects: list[int] = []
    retained = -1

    async def wave() -> None:
        nonlocal refused
        tasks = [asyncio.create_task(handler.execute(env)) for _ in range(per_wave)]
        hanging = 0 if stuck else 102  # the first wave fills the two workers and the queue
        assert await wait_until(
            lambda: sum(1 for t in tasks if not t.done()) == hanging, timeout=60, interval=0.05
        )
        for task in tasks:
            if not task.done():
                stuck.append(task)
                continue
            assert isinstance(task.exception(), InfraUnavailableError)
            assert "busy" in str(task.exception())
            refused += 1
        assert pool_snapshot(handler)["waiting"] == 100

    for number in range(waves - 1):
        await wave()
        if number == 0:
            assert len(stuck) == 102  # two running, a hundred queued
        gc.collect()
        objects.append(len(gc.get_objects()))
    # The last wave under tracemalloc: what it allocated and still holds afterwards.
    tracemalloc.start()
    try:
        await wave()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert refused == waves * per_wave - 102
    assert len(stuck) == 102
    assert handler.describe()["in_flight"] == 102
    # Waves 2-9 (80,000 refused envelopes) left no objects behind; wave 10 kept < 16 KiB.
    assert objects[-1] - objects[0] < 200, objects
    assert retained < 16 * 1024, retained
    assert breaker_snapshot(handler)["total_failures"] == 0
    for task in stuck:
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)


# -- the event loop keeps ticking -----------------------------------------------------------


async def test_loop_ticks_during_initialize_against_a_black_hole(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    await in_thread(proxy.timeout, 0)
    handler = await make_tuned_handler(proxy, init=False)
    async with LagTicker() as ticker:
        with pytest.raises(InfraTimeoutError):
            await handler.initialize(tuned(proxy, timeout_seconds=1.0))
    assert_loop_kept_ticking(ticker, min_ticks=100)


async def test_loop_ticks_with_256_envelopes_in_flight(
    consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    handler = await make_tuned_handler(consul_agent, max_concurrent_operations=10)
    keys = [unique_key() for _ in range(256)]
    async with LagTicker() as ticker:
        for _ in range(3):
            writes = await asyncio.gather(*(handler.execute(kv_put(k, k)) for k in keys))
            reads = await asyncio.gather(*(handler.execute(kv_get(k)) for k in keys))
            assert all(w.result["applied"] for w in writes)
            assert [r.result["value"] for r in reads] == list(keys)
    assert_loop_kept_ticking(ticker, min_ticks=20)


async def test_loop_ticks_during_health_check_against_a_black_hole(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, timeout_seconds=1.0)
    await in_thread(proxy.timeout, 0)
    async with LagTicker() as ticker:
        health = await handler.health_check()
    assert health["healthy"] is False
    assert health["error_type"] == "InfraTimeoutError"
    assert_loop_kept_ticking(ticker, min_ticks=100)


async def test_loop_ticks_during_shutdown_with_hung_calls(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, timeout_seconds=2.0, shutdown_grace_seconds=0.5)
    await in_thread(proxy.timeout, 0)
    hung = [asyncio.create_task(handler.execute(kv_get(unique_key()))) for _ in range(4)]
    assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 4, timeout=5)
    loop = asyncio.get_running_loop()
    async with LagTicker() as ticker:
        started = loop.time()
        await handler.shutdown()
        took = loop.time() - started
    assert 0.5 <= took < 0.5 + OVERRUN
    results = await asyncio.gather(*hung, return_exceptions=True)
    assert all(isinstance(r, InfraUnavailableError) for r in results), results
    assert_loop_kept_ticking(ticker, min_ticks=50)


# -- long polls stay out of the short pool ----------------------------------------------------


async def test_short_operations_never_send_a_blocking_query(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_tuned_handler: MakeHandler
) -> None:
    """Blocking queries (``?index=N&wait=D``) run only in the long-poll pool
    (tests/test_long_polls.py); the short operations' requests never carry one, so a slot
    of the short pool is never held for a wait."""
    counter = counting_proxy_for(consul_agent)
    handler = await make_tuned_handler(counter)
    name = uniq("lp")
    k = unique_key()
    created = await handler.execute({"operation": "consul.session_create", "payload": {}})
    session = {"session_id": created.result["session_id"]}
    envelopes = [
        kv_put(k, "v"),
        kv_get(k),
        kv_get(k.rsplit("/", 1)[0] + "/", recurse=True),
        kv_get(k.rsplit("/", 1)[0] + "/", keys_only=True),
        {"operation": "consul.register", "payload": {"name": name, "check": {"ttl": "1m"}}},
        {
            "operation": "consul.check_update",
            "payload": {"check_id": f"service:{name}", "status": "passing"},
        },
        {"operation": "consul.discover", "payload": {"service": name, "cache": False}},
        {"operation": "consul.endpoint", "payload": {"service": name, "cache": False}},
        {"operation": "consul.services", "payload": {}},
        {"operation": "consul.deregister", "payload": {"service_id": name}},
        {"operation": "consul.txn", "payload": {"operations": [{"verb": "get", "key": k}]}},
        {"operation": "consul.kv_delete", "payload": {"key": k}},
        {"operation": "consul.session_create", "payload": {"ttl": "10s"}},
        {"operation": "consul.session_renew", "payload": session},
        {"operation": "consul.session_destroy", "payload": session},
    ]
    counter.reset()
    for env in envelopes:
        assert (await handler.execute(env)).status == "success"
    assert counter.requests == len(envelopes)
    for target in counter.paths:
        assert "index=" not in target, target
        assert "wait=" not in target, target
    await handler.execute({"operation": "consul.deregister", "payload": {"service_id": name}})
