"""A worker slot is an OS thread: at most ``max_concurrent_operations`` of them, ever.

Threads start lazily (one only when no started thread is idle) and are reused. A call whose
caller timed out, was cancelled or was failed by shutdown keeps its slot, and its thread, until
that thread returns; the request timeout guarantees it does. Closing the pool never joins a
thread. Proved on the pool alone, its workers held on gates the test releases, and on a handler
whose calls hang in a black hole (a sampler thread counts live ``handler-consul-*`` threads).
"""

from __future__ import annotations

import asyncio

import pytest
from harness import ConsulAgent
from support import (
    EVENT_BOUND,
    Concurrency,
    Gates,
    MakeHandler,
    MakePool,
    ProxyFor,
    ThreadSampler,
    held,
    in_thread,
    kv_get,
    pool_snapshot,
    unique_key,
    wait_until,
    with_deadline,
    worker_threads,
)

from handler_consul import InfraUnavailableError
from handler_consul._pool import PoolClosed, PoolSaturated, PoolTimeout

pytestmark = [
    pytest.mark.usefixtures("clean_consul_env"),
    pytest.mark.threads_only(
        "worker threads exist only in the threads mode; the asyncio mode's bound has the same "
        "tests in tests/test_bulkhead.py"
    ),
]


# -- the pool on its own ------------------------------------------------------------------------


async def test_pool_never_runs_more_threads_than_max_workers(
    make_pool: MakePool, gates: Gates
) -> None:
    before = worker_threads()
    pool = make_pool(3)
    gate = gates.new()
    counter = Concurrency()
    tasks = [
        asyncio.create_task(pool.run(held, gate, i, counter, timeout=EVENT_BOUND))
        for i in range(10)
    ]

    assert await wait_until(lambda: pool.busy == 3 and pool.waiting == 7, timeout=5)
    assert await wait_until(lambda: counter.entered == 3, timeout=5)
    mine = [t for t in worker_threads(before) if t.name.startswith("handler-consul-pooltest")]
    assert len(mine) == 3
    assert pool.threads == 3
    assert pool.live_threads() == 3

    gate.set()
    assert await asyncio.gather(*tasks) == list(range(10))
    assert counter.peak == 3
    assert counter.entered == 10
    assert pool.threads == 3
    assert pool.peak_busy == 3
    assert pool.busy == 0
    assert pool.waiting == 0


async def test_pool_threads_start_lazily_and_are_reused(make_pool: MakePool) -> None:
    pool = make_pool(8)
    assert pool.threads == 0
    for i in range(5):
        assert await pool.run(lambda x: x * 2, i, timeout=5) == i * 2
    assert pool.threads == 1
    assert pool.snapshot()["threads"] == 1


async def test_timed_out_call_keeps_its_slot_until_its_thread_returns(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1, max_wait=0.05)
    gate = gates.new()
    with pytest.raises(PoolTimeout):
        await pool.run(held, gate, "late", timeout=0.05)
    # Abandoned, but its thread is still inside the call: the slot stays taken.
    assert pool.busy == 1
    assert pool.live_threads() == 1
    with pytest.raises(PoolSaturated):
        await pool.run(lambda: "next", timeout=0.05)
    assert pool.threads == 1  # no second thread was started for the newcomer

    gate.set()
    assert await wait_until(lambda: pool.busy == 0, timeout=5)
    assert await pool.run(lambda: "next", timeout=5) == "next"
    assert pool.threads == 1


async def test_cancelled_caller_keeps_its_slot_until_its_thread_returns(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(2)
    gate = gates.new()
    counter = Concurrency()
    tasks = [
        asyncio.create_task(pool.run(held, gate, i, counter, timeout=EVENT_BOUND)) for i in range(2)
    ]
    assert await wait_until(lambda: counter.entered == 2, timeout=5)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pool.busy == 2
    assert pool.live_threads() == 2
    # A newcomer waits for a slot rather than getting a third thread.
    waiter = asyncio.create_task(pool.run(lambda: "third", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.waiting == 1, timeout=5)
    assert pool.threads == 2
    gate.set()
    assert await asyncio.wait_for(waiter, EVENT_BOUND) == "third"
    assert await wait_until(lambda: pool.busy == 0, timeout=5)
    assert pool.threads == 2


async def test_abandon_fails_callers_but_their_threads_keep_the_slots(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(2)
    gate = gates.new()
    counter = Concurrency()
    tasks = [
        asyncio.create_task(pool.run(held, gate, i, counter, timeout=EVENT_BOUND)) for i in range(2)
    ]
    assert await wait_until(lambda: counter.entered == 2, timeout=5)
    failed = pool.abandon(lambda _started: RuntimeError("shutting down"))
    assert failed == 2
    for task in tasks:
        with pytest.raises(RuntimeError, match="shutting down"):
            await task
    assert pool.busy == 2
    gate.set()
    assert await wait_until(lambda: pool.busy == 0, timeout=5)


async def test_close_fails_waiters_refuses_new_calls_and_lets_workers_exit(
    make_pool: MakePool, gates: Gates
) -> None:
    pool = make_pool(1)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    waiter = asyncio.create_task(pool.run(lambda: "never", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.waiting == 1, timeout=5)

    pool.close()  # returns at once: never joins a thread
    with pytest.raises(PoolClosed):
        await waiter
    with pytest.raises(PoolClosed):
        await pool.run(lambda: "new", timeout=5)
    assert pool.live_threads() == 1  # still inside its call
    gate.set()
    assert await running == "running"  # in-flight work still delivers
    assert await wait_until(lambda: pool.live_threads() == 0, timeout=5)


# -- a handler whose calls hang --------------------------------------------------------------


async def test_handler_threads_never_exceed_the_bound_even_with_abandoned_calls(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    with ThreadSampler() as sampler:
        handler = await make_tuned_handler(
            proxy, timeout_seconds=1.0, max_concurrent_operations=4, max_wait_seconds=0.1
        )
        await in_thread(proxy.timeout, 0)
        hung = [asyncio.create_task(handler.execute(kv_get(unique_key()))) for _ in range(4)]
        assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 4, timeout=5)
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        assert all(task.cancelled() for task in hung)
        # Abandoned by their callers, the four calls still hold their slots and threads.
        assert pool_snapshot(handler)["busy"] == 4
        assert sampler.now() == 4

        late = await asyncio.gather(
            *(handler.execute(with_deadline(kv_get(unique_key()), 0.5)) for _ in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, InfraUnavailableError) for r in late), late
        assert pool_snapshot(handler)["threads"] == 4

        # The HTTP timeout brings every abandoned thread back, then work flows again.
        assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 0, timeout=3)
        await in_thread(proxy.clear)
        done = await asyncio.gather(*(handler.execute(kv_get(unique_key())) for _ in range(40)))
        assert all(r.status == "success" for r in done)
    assert sampler.peak == 4
    assert sampler.samples > 10
    assert pool_snapshot(handler)["threads"] == 4
    assert pool_snapshot(handler)["peak_busy"] == 4
