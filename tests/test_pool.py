"""BoundedThreadPool in isolation (spec items 21, 22, 23).

Workers are held on ``threading.Event`` gates, as anyio's ``test_run_in_custom_limiter``
does, so nothing here sleeps to "give a thread time": the test decides when each call
returns. The only real waits are the pool's own bounded waits (tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from faults_support import wait_until, worker_threads

from handler_consul._pool import BoundedThreadPool, PoolClosed, PoolSaturated, PoolTimeout

EVENT_BOUND = 10.0  # no gate is ever held longer than this, even if a test fails


class Gates:
    """Events the workers wait on; every one is released when the test ends."""

    def __init__(self) -> None:
        self._events: list[threading.Event] = []

    def new(self) -> threading.Event:
        event = threading.Event()
        self._events.append(event)
        return event

    def release_all(self) -> None:
        for event in self._events:
            event.set()


@pytest.fixture
def gates() -> Iterator[Gates]:
    made = Gates()
    yield made
    made.release_all()


@pytest.fixture
def pools() -> Iterator[list[BoundedThreadPool]]:
    made: list[BoundedThreadPool] = []
    yield made
    for pool in made:
        pool.close()


def make_pool(
    pools: list[BoundedThreadPool],
    workers: int,
    *,
    max_wait: float = 5.0,
    max_queued: int = 1000,
    name: str = "handler-consul-pooltest",
) -> BoundedThreadPool:
    pool = BoundedThreadPool(workers, max_wait_seconds=max_wait, max_queued=max_queued, name=name)
    pools.append(pool)
    return pool


class Concurrency:
    """Counts calls inside ``fn`` at once, from the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.entered = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.entered += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def held(gate: threading.Event, value: object, counter: Concurrency | None = None) -> object:
    if counter is not None:
        counter.enter()
    try:
        if not gate.wait(EVENT_BOUND):
            raise AssertionError("gate never released")
        return value
    finally:
        if counter is not None:
            counter.leave()


# -- item 21: slots are OS threads ---------------------------------------------------------


async def test_item_21_peak_threads_never_exceed_max_workers(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    before = worker_threads()
    pool = make_pool(pools, 3)
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


async def test_item_21_threads_start_lazily_and_are_reused(pools: list[BoundedThreadPool]) -> None:
    pool = make_pool(pools, 8)
    assert pool.threads == 0
    for i in range(5):
        assert await pool.run(lambda x: x * 2, i, timeout=5) == i * 2
    assert pool.threads == 1
    assert pool.snapshot()["threads"] == 1


async def test_item_21_timed_out_call_keeps_its_slot_until_its_thread_returns(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1, max_wait=0.05)
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


async def test_item_21_cancelled_caller_keeps_its_slot_until_its_thread_returns(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 2)
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


# -- item 22: bounded wait, bounded queue ----------------------------------------------------


async def test_item_22_waiting_for_a_slot_is_bounded_by_max_wait(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1, max_wait=0.05)
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


async def test_item_22_wait_is_also_bounded_by_the_call_timeout(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1, max_wait=60.0)
    gate = gates.new()
    running = asyncio.create_task(pool.run(held, gate, "first", timeout=EVENT_BOUND))
    assert await wait_until(lambda: pool.busy == 1, timeout=5)
    with pytest.raises(PoolSaturated) as info:
        await asyncio.wait_for(pool.run(lambda: "second", timeout=0.05), 5)
    assert 0.05 <= info.value.waited_seconds < 1.0
    gate.set()
    assert await running == "first"


async def test_item_22_queue_is_capped_and_extra_callers_are_refused_at_once(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1, max_queued=5)
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


async def test_item_22_abandoned_calls_count_against_the_cap_until_a_worker_skips_them(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    """While the only worker hangs, callers that gave up leave entries in the queue: those
    still count, so the queue cannot grow past its cap however long the hang lasts."""
    pool = make_pool(pools, 1, max_wait=0.05, max_queued=3)
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


async def test_item_22_cancelled_waiter_leaves_the_queue_and_the_slot_goes_on(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1)
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


# -- item 23: a completed result is delivered ----------------------------------------------


async def test_item_23_result_that_completed_is_delivered_even_when_the_deadline_is_also_due(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1)
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


async def test_item_23_exception_from_the_call_is_delivered_and_frees_the_slot(
    pools: list[BoundedThreadPool],
) -> None:
    pool = make_pool(pools, 1)

    def boom() -> None:
        raise ValueError("from the worker")

    with pytest.raises(ValueError, match="from the worker"):
        await pool.run(boom, timeout=5)
    assert pool.busy == 0
    assert await pool.run(lambda: "after", timeout=5) == "after"


# -- shutdown --------------------------------------------------------------------------------


async def test_close_fails_waiters_refuses_new_calls_and_lets_workers_exit(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 1)
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


async def test_abandon_fails_callers_but_their_threads_keep_the_slots(
    pools: list[BoundedThreadPool], gates: Gates
) -> None:
    pool = make_pool(pools, 2)
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
