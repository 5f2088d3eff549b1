"""Cancelling a caller, Ctrl-C, and interrupts raised inside a call.

A cancelled caller gets its CancelledError back at once, from a call in flight or from a backoff
sleep; nothing is retried on its behalf and the breaker counts nothing. KeyboardInterrupt and
SystemExit reach the caller untouched, never wrapped in an InfraError and never counted. A
worker thread whose caller went away keeps its slot until its call returns (the request
timeout guarantees it does).

Real agents behind toxiproxy (black hole, refused) and the counting proxy. The handlers use
``support.tuned`` settings; a breaker threshold of 1 is how a test shows that something is
never counted: a single counted failure would open it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
from typing import Any

import pytest
from harness import ConsulAgent
from support import (
    CountFor,
    MakeHandler,
    ProxyFor,
    assert_nothing_counted,
    breaker_snapshot,
    counting_through_toxiproxy,
    in_thread,
    kv_get,
    kv_put,
    pool_snapshot,
    requests_to,
    tuned,
    unique_key,
    wait_until,
    with_deadline,
)

from handler_consul import HandlerConsul
from handler_consul._operations import OPERATIONS

pytestmark = pytest.mark.usefixtures("clean_consul_env")


# -- cancellation and interrupts propagate untouched, never counted ---------------------------


async def test_cancelled_execute_propagates_counts_nothing_and_frees_its_slot_later(
    toxiproxy_for: ProxyFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
    io_mode: str,
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, timeout_seconds=1.0, breaker={"failure_threshold": 1})
    await in_thread(proxy.timeout, 0)  # black hole: the request hangs until its timeout
    task = asyncio.create_task(handler.execute(kv_get(unique_key())))
    assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 1, timeout=5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert_nothing_counted(handler, successes=0)
    if io_mode == "asyncio":
        # On the loop the cancellation reached the call itself: it has unwound (its
        # connection dropped, never to be reused) and the slot is free at once.
        assert pool_snapshot(handler)["busy"] == 0
        assert handler._lifecycle.runtime.transport.idle_connections == 0
    else:
        # The worker is still inside its request: the slot stays taken until it returns...
        assert pool_snapshot(handler)["busy"] == 1
        # ...which the HTTP timeout (1 s) guarantees; its late timeout is not counted either.
        assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 0, timeout=3)
    assert_nothing_counted(handler)


def test_ctrl_c_during_execute_surfaces_as_keyboard_interrupt_and_counts_nothing(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent
) -> None:
    """A real SIGINT under asyncio.run: the runner cancels the main task, the handler lets
    the CancelledError through, and the runner raises KeyboardInterrupt."""
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    proxy = toxiproxy_for(consul_agent)
    handler = HandlerConsul()
    reached: list[str] = []

    async def main() -> None:
        await handler.initialize(
            tuned(proxy, timeout_seconds=1.0, breaker={"failure_threshold": 1})
        )
        await in_thread(proxy.timeout, 0)
        task = asyncio.ensure_future(handler.execute(kv_get(unique_key())))
        assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 1, timeout=5)
        reached.append("in flight")
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers
        await task
        reached.append("not interrupted")

    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(main())
        assert reached == ["in flight"]
        assert_nothing_counted(handler, successes=0)
        assert handler.describe()["in_flight"] == 0
    finally:
        asyncio.run(handler.shutdown())


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupt_raised_inside_the_call_propagates_untouched_and_is_not_counted(
    interrupt: type[BaseException],
    consul_agent: ConsulAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's call raises the interrupt (after a real request): the same object
    reaches the caller, no InfraError wraps it, and the breaker (threshold 1) stays closed."""
    raised = interrupt("stop")
    real_put = OPERATIONS["consul.kv_put"]

    async def interrupted(*args: Any) -> Any:
        await real_put.run(*args)
        raise raised

    handler = HandlerConsul()

    async def main() -> None:
        await handler.initialize(tuned(consul_agent, breaker={"failure_threshold": 1}))
        monkeypatch.setitem(
            OPERATIONS,  # type: ignore[arg-type]
            "consul.kv_put",
            dataclasses.replace(real_put, run=interrupted),
        )
        await handler.execute(kv_put(unique_key(), "x"))

    try:
        with pytest.raises(interrupt) as info:
            asyncio.run(main())
        assert info.value is raised
        assert_nothing_counted(handler, successes=0)
        assert pool_snapshot(handler)["busy"] == 0
    finally:
        monkeypatch.undo()
        asyncio.run(handler.shutdown())


# -- cancelling the caller returns promptly; never retried, never swallowed -------------------


async def test_cancelling_a_caller_blocked_on_consul_returns_promptly_and_is_not_retried(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_tuned_handler(counter, timeout_seconds=0.5)
    await in_thread(toxic.timeout, 0)
    counter.reset()
    k = unique_key()
    task = asyncio.create_task(handler.execute(kv_put(k, "x")))
    assert await wait_until(lambda: counter.requests == 1, timeout=5)
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - cancelled_at < 0.05
    assert task.cancelled()
    # Past the request timeout the worker returns; nothing was retried on the caller's behalf.
    assert await wait_until(lambda: pool_snapshot(handler)["busy"] == 0, timeout=3)
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [f"PUT /v1/kv/{k} HTTP/1.1"]
    assert_nothing_counted(handler)


async def test_cancelling_a_caller_during_backoff_returns_promptly(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(
        proxy,
        rng=lambda: 0.999,
        retry={"max_attempts": 3, "initial_delay_seconds": 5.0, "max_delay_seconds": 5.0},
    )
    await in_thread(proxy.down)
    task = asyncio.create_task(handler.execute(with_deadline(kv_get(unique_key()), 30.0)))
    assert await wait_until(lambda: breaker_snapshot(handler)["total_failures"] == 1, timeout=5)
    await asyncio.sleep(0.05)  # now inside the ~5 s backoff
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - cancelled_at < 0.05
    assert task.cancelled()
    assert handler.describe()["in_flight"] == 0
    assert breaker_snapshot(handler)["total_failures"] == 1  # no attempt after the cancel


async def test_caller_timeout_cancels_the_envelope_at_the_callers_deadline(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, timeout_seconds=5.0)
    await in_thread(proxy.timeout, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await handler.execute(kv_get(unique_key()))
    assert 0.2 <= loop.time() - started < 0.2 + 0.05
    assert_nothing_counted(handler)
