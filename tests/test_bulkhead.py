"""The asyncio mode's bound on calls in flight (AsyncBulkhead): the thread pool's promises,
kept on the event loop.

The thread pool's own tests (tests/test_worker_threads.py, the pool tests of
tests/test_backpressure.py) hold worker threads on gates; these hold coroutines on
``asyncio.Event`` gates, so nothing sleeps to "give a call time": the test decides when each
call returns. The last tests run a real handler in asyncio mode against a black hole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ConsulAgent
from support import (
    EVENT_BOUND,
    MakeHandler,
    ProxyFor,
    counting_through_toxiproxy,
    in_thread,
    kv_get,
    pool_snapshot,
    unique_key,
    wait_until,
    with_deadline,
)

from handler_consul import InfraTimeoutError, InfraUnavailableError
from handler_consul._bulkhead import AsyncBulkhead
from handler_consul._pool import PoolClosed, PoolSaturated

pytestmark = pytest.mark.io_independent("the bulkhead is the asyncio mode's own bound")


class Held:
    """Coroutine calls that return once the test opens their gate, counted while inside."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []
        self.now = 0
        self.peak = 0
        self.unwound = 0

    def gate(self) -> asyncio.Event:
        event = asyncio.Event()
        self.gates.append(event)
        return event

    async def call(self, gate: asyncio.Event, value: Any) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.wait_for(gate.wait(), EVENT_BOUND)
            return value
        finally:
            self.now -= 1
            self.unwound += 1

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


@pytest.fixture
def held() -> Iterator[Held]:
    made = Held()
    yield made
    made.release_all()


async def _value(value: Any) -> Any:
    return value


async def test_waiting_for_a_slot_is_bounded_by_max_wait(held: Held) -> None:
    bulkhead = AsyncBulkhead(1, max_wait_seconds=0.05, max_queued=10)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "first", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PoolSaturated) as info:
        await bulkhead.run(_value, "second", timeout=EVENT_BOUND)
    waited = loop.time() - started
    assert 0.05 <= info.value.waited_seconds <= waited
    assert waited < 0.05 + 0.5
    assert bulkhead.waiting == 0
    gate.set()
    assert await running == "first"
    assert bulkhead.busy == 0


async def test_the_wait_is_also_bounded_by_the_call_timeout(held: Held) -> None:
    bulkhead = AsyncBulkhead(1, max_wait_seconds=60.0, max_queued=10)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "first", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    with pytest.raises(PoolSaturated) as info:
        await asyncio.wait_for(bulkhead.run(_value, "second", timeout=0.05), 5)
    assert 0.05 <= info.value.waited_seconds < 1.0
    gate.set()
    assert await running == "first"


async def test_the_queue_is_capped_and_extra_callers_are_refused_at_once(held: Held) -> None:
    bulkhead = AsyncBulkhead(1, max_wait_seconds=EVENT_BOUND, max_queued=5)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    queued = [asyncio.create_task(bulkhead.run(_value, i, timeout=EVENT_BOUND)) for i in range(5)]
    assert await wait_until(lambda: bulkhead.waiting == 5, timeout=5)
    for _ in range(10_000):
        with pytest.raises(PoolSaturated) as info:
            await bulkhead.run(_value, "never", timeout=EVENT_BOUND)
        assert info.value.waited_seconds == 0.0
    assert bulkhead.waiting == 5  # the queue never grew past its cap
    assert len(bulkhead._waiters) == 5
    gate.set()
    assert await running == "running"
    assert await asyncio.gather(*queued) == [0, 1, 2, 3, 4]  # served in arrival order
    assert (bulkhead.busy, bulkhead.waiting) == (0, 0)


async def test_waiters_that_gave_up_do_not_pile_up_while_every_slot_is_held(held: Held) -> None:
    """Each caller waits its 1 ms and leaves: the queue's memory follows the live waiters,
    however long the slot is held."""
    bulkhead = AsyncBulkhead(1, max_wait_seconds=0.001, max_queued=3)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    for _ in range(500):
        with pytest.raises(PoolSaturated):
            await bulkhead.run(_value, None, timeout=EVENT_BOUND)
    assert bulkhead.waiting == 0
    assert len(bulkhead._waiters) <= 65
    gate.set()
    assert await running == "running"
    assert await bulkhead.run(_value, "after", timeout=EVENT_BOUND) == "after"


async def test_a_cancelled_waiter_leaves_the_queue_and_the_slot_goes_on(held: Held) -> None:
    bulkhead = AsyncBulkhead(1, max_wait_seconds=EVENT_BOUND, max_queued=10)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    first = asyncio.create_task(bulkhead.run(_value, "first", timeout=EVENT_BOUND))
    second = asyncio.create_task(bulkhead.run(_value, "second", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.waiting == 2, timeout=5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert bulkhead.waiting == 1
    gate.set()
    assert await running == "running"
    assert await asyncio.wait_for(second, EVENT_BOUND) == "second"
    assert bulkhead.busy == 0


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on(held: Held) -> None:
    """The slot is handed over and the waiter is cancelled before it resumes: the slot must
    go to the next waiter, not vanish."""
    bulkhead = AsyncBulkhead(1, max_wait_seconds=EVENT_BOUND, max_queued=10)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "running", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    first = asyncio.create_task(bulkhead.run(_value, "first", timeout=EVENT_BOUND))
    second = asyncio.create_task(bulkhead.run(_value, "second", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.waiting == 2, timeout=5)
    release = bulkhead._release

    def release_then_cancel_first() -> None:
        release()  # hands the slot to ``first``...
        first.cancel()  # ...which is cancelled in the same step, before it can resume

    bulkhead._release = release_then_cancel_first  # type: ignore[method-assign]
    gate.set()
    assert await running == "running"
    bulkhead._release = release  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, EVENT_BOUND) == "second"
    assert (bulkhead.busy, bulkhead.waiting) == (0, 0)


async def test_a_slot_is_held_until_the_call_has_unwound_not_until_its_caller_left() -> None:
    """A call whose cleanup takes time (a connection being dropped) keeps its slot until it
    has really ended; only then may the next call start."""
    bulkhead = AsyncBulkhead(1, max_wait_seconds=EVENT_BOUND, max_queued=10)
    cleanup = asyncio.Event()
    inside = asyncio.Event()

    async def slow_to_unwind() -> None:
        try:
            inside.set()
            await asyncio.sleep(EVENT_BOUND)
        finally:
            await asyncio.wait_for(cleanup.wait(), EVENT_BOUND)

    call = asyncio.create_task(bulkhead.run(slow_to_unwind, timeout=EVENT_BOUND))
    await inside.wait()
    call.cancel()
    nxt = asyncio.create_task(bulkhead.run(_value, "next", timeout=EVENT_BOUND))
    await asyncio.sleep(0.05)
    assert (bulkhead.busy, bulkhead.waiting) == (1, 1)  # still unwinding: the slot is taken
    assert not nxt.done()
    cleanup.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await asyncio.wait_for(nxt, EVENT_BOUND) == "next"
    assert bulkhead.peak_busy == 1


async def test_never_more_calls_at_once_than_slots(held: Held) -> None:
    bulkhead = AsyncBulkhead(4, max_wait_seconds=EVENT_BOUND, max_queued=1000)
    gate = held.gate()
    calls = [
        asyncio.create_task(bulkhead.run(held.call, gate, i, timeout=EVENT_BOUND))
        for i in range(200)
    ]
    assert await wait_until(lambda: bulkhead.waiting == 196, timeout=5)
    assert held.now == 4
    assert bulkhead.snapshot() == {
        "max_workers": 4,
        "busy": 4,
        "waiting": 196,
        "threads": 0,
        "peak_busy": 4,
        "max_wait_seconds": EVENT_BOUND,
        "max_queued": 1000,
        "closed": False,
    }
    gate.set()
    assert await asyncio.gather(*calls) == list(range(200))
    assert (held.peak, bulkhead.peak_busy, bulkhead.busy) == (4, 4, 0)


async def test_abandon_fails_waiters_and_cancels_running_calls(held: Held) -> None:
    bulkhead = AsyncBulkhead(2, max_wait_seconds=EVENT_BOUND, max_queued=10)
    gate = held.gate()
    running = [
        asyncio.create_task(bulkhead.run(held.call, gate, i, timeout=EVENT_BOUND)) for i in range(2)
    ]
    waiting = asyncio.create_task(bulkhead.run(_value, "never", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.waiting == 1, timeout=5)

    def make_error(started: bool) -> BaseException:
        return PoolClosed("shut down", request_sent=started)

    assert bulkhead.abandon(make_error) == 3
    for task in running:
        with pytest.raises(PoolClosed) as info:
            await task
        assert info.value.request_sent is True  # it had started: it may have reached Consul
        assert not task.cancelled()
    with pytest.raises(PoolClosed) as info:
        await waiting
    assert info.value.request_sent is False
    assert held.unwound == 2  # the running calls really ended (their finally ran)
    assert (bulkhead.busy, bulkhead.waiting) == (0, 0)


async def test_abandon_does_not_swallow_the_callers_own_cancellation(held: Held) -> None:
    bulkhead = AsyncBulkhead(1, max_wait_seconds=EVENT_BOUND, max_queued=10)
    gate = held.gate()
    task = asyncio.create_task(bulkhead.run(held.call, gate, "x", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.busy == 1, timeout=5)
    bulkhead.abandon(lambda started: PoolClosed("shut down", request_sent=started))
    task.cancel()  # the caller's own cancellation, on top of the bulkhead's
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.busy == 0


async def test_close_refuses_new_calls_fails_waiters_and_lets_running_calls_finish(
    held: Held,
) -> None:
    bulkhead = AsyncBulkhead(1, max_wait_seconds=EVENT_BOUND, max_queued=10)
    gate = held.gate()
    running = asyncio.create_task(bulkhead.run(held.call, gate, "running", timeout=EVENT_BOUND))
    waiting = asyncio.create_task(bulkhead.run(_value, "never", timeout=EVENT_BOUND))
    assert await wait_until(lambda: bulkhead.waiting == 1, timeout=5)
    bulkhead.close()
    with pytest.raises(PoolClosed):
        await waiting
    with pytest.raises(PoolClosed, match="is shut down"):
        await bulkhead.run(_value, "new", timeout=EVENT_BOUND)
    gate.set()
    assert await running == "running"
    assert bulkhead.snapshot()["closed"] is True


# -- a handler in asyncio mode --------------------------------------------------------------------


async def test_handler_calls_in_flight_never_exceed_the_bound_and_end_with_their_deadline(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: Any,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    """Against a black hole, 40 envelopes on 4 slots: at most 4 requests are ever in flight
    (4 connections), the rest wait their bounded turn, and every call (not just its caller)
    has ended by its deadline, so the slots are free again at once."""
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_tuned_handler(
        counter, io="asyncio", max_concurrent_operations=4, max_wait_seconds=0.3
    )
    await in_thread(toxic.timeout, 0)
    peaks: list[int] = []

    async def sample() -> None:
        while True:
            peaks.append(pool_snapshot(handler)["busy"])
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(
        *(handler.execute(with_deadline(kv_get(unique_key()), 0.6)) for _ in range(40)),
        return_exceptions=True,
    )
    sampler.cancel()
    timeouts = [r for r in results if isinstance(r, InfraTimeoutError)]
    refused = [r for r in results if isinstance(r, InfraUnavailableError)]
    assert len(timeouts) + len(refused) == 40, results
    assert timeouts
    assert refused
    assert max(peaks) == 4
    assert pool_snapshot(handler)["busy"] == 0  # nothing left running past the deadlines
    assert pool_snapshot(handler)["threads"] == 0
    assert counter.connections <= 4 + 1  # the probe's connection, then one per slot at most
