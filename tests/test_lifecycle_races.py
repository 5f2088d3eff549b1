"""Lifecycle calls that overlap: every interleaving ends in one clear state, with nothing leaked.

initialize() and shutdown() take effect in the order they were called. A shutdown() during an
initialize() aborts it; an initialize() during a shutdown's drain waits for it; a shutdown()
whose caller is cancelled still completes; a later shutdown() is a no-op.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from harness import ConsulAgent, Toxiproxy, TrickleHeaders
from support import envelope, uniq, wait_until

from handler_consul import ConsulSettings, HandlerConsul, InfraUnavailableError

pytestmark = pytest.mark.consul


def _settings(target: Any, **more: Any) -> ConsulSettings:
    return ConsulSettings(host=target.host, port=target.port, **more)


def _pool(handler: HandlerConsul) -> Any:
    runtime = handler._lifecycle.runtime  # private: the only way to hold on to the old pool
    assert runtime is not None
    return runtime.pool


async def _join_workers(started_before: set[threading.Thread], timeout: float) -> list[str]:
    """Wait for the worker threads started since ``started_before``; return those still alive."""
    workers = [
        t
        for t in threading.enumerate()
        if t.name.startswith("handler-consul-") and t not in started_before
    ]
    for worker in workers:
        await asyncio.to_thread(worker.join, timeout)
    return [t.name for t in workers if t.is_alive()]


async def test_shutdown_during_initialize_aborts_it_and_the_handler_stays_down(
    trickle_headers_server: TrickleHeaders, clean_consul_env: None, io_mode: str
) -> None:
    before = set(threading.enumerate())
    handler = HandlerConsul(_settings(trickle_headers_server, timeout_seconds=2.0))
    initializing = asyncio.create_task(handler.initialize())
    await asyncio.to_thread(trickle_headers_server.wait_for_requests, 1)
    started = time.monotonic()
    await handler.shutdown()
    assert time.monotonic() - started < 1.0  # it did not wait for the probe's 2 s deadline
    with pytest.raises(InfraUnavailableError, match="aborted: shutdown"):
        await initializing
    assert handler.describe()["initialized"] is False
    assert handler.describe()["state"] == "shut_down"
    with pytest.raises(InfraUnavailableError, match="shut down"):
        await handler.execute(envelope("kv_get", key="k"))
    if io_mode == "asyncio":
        # The probe was cancelled on the loop: its connection is dropped at once (the server
        # sees the hang-up at its next byte), not held until the request's 2 s deadline.
        assert await wait_until(lambda: trickle_headers_server.active_connections == 0, timeout=1)
    else:
        # The probe's worker was abandoned, not leaked: it returns at its request deadline.
        assert await _join_workers(before, 3.0) == []


async def test_initialize_during_a_shutdown_drain_waits_then_comes_up(
    toxiproxy: Toxiproxy, clean_consul_env: None
) -> None:
    handler = HandlerConsul(_settings(toxiproxy, shutdown_grace_seconds=5.0))
    await handler.initialize()
    old_pool = _pool(handler)
    toxiproxy.latency(600)
    slow = asyncio.create_task(handler.execute(envelope("kv_get", key=f"{uniq('drain')}/k")))
    await asyncio.sleep(0.2)
    shutting_down = asyncio.create_task(handler.shutdown())
    await asyncio.sleep(0.05)
    assert handler.describe()["state"] == "shutting_down"
    await handler.initialize()  # queued behind the shutdown, then a fresh runtime
    assert shutting_down.done()
    assert (await slow).result["found"] is False  # drained, not failed
    assert old_pool.snapshot()["closed"] is True
    assert _pool(handler) is not old_pool
    assert handler.describe()["state"] == "running"
    toxiproxy.clear()
    response = await handler.execute(envelope("kv_get", key=f"{uniq('drain')}/k"))
    assert response.result["found"] is False
    await handler.shutdown()


async def test_a_cancelled_shutdown_still_completes_and_says_what_it_failed(
    toxiproxy: Toxiproxy, clean_consul_env: None
) -> None:
    handler = HandlerConsul(_settings(toxiproxy, shutdown_grace_seconds=30.0))
    await handler.initialize()
    pool = _pool(handler)
    toxiproxy.latency(1500)
    slow = asyncio.create_task(handler.execute(envelope("kv_get", key=f"{uniq('cancel')}/k")))
    await asyncio.sleep(0.2)
    shutting_down = asyncio.create_task(handler.shutdown())
    await asyncio.sleep(0.1)
    shutting_down.cancel()
    with pytest.raises(asyncio.CancelledError):
        await shutting_down
    assert handler.describe()["state"] == "shut_down"
    assert pool.snapshot()["closed"] is True
    with pytest.raises(InfraUnavailableError) as caught:
        await slow
    # It was running: its request may have reached Consul, and the error says so.
    assert caught.value.context.request_sent is True
    assert caught.value.context.operation == "consul.kv_get"
    started = time.monotonic()
    await handler.shutdown()  # a later shutdown has nothing left to do
    assert time.monotonic() - started < 0.1


async def test_concurrent_shutdowns_all_return_once_the_handler_is_down(
    consul_agent: ConsulAgent, clean_consul_env: None
) -> None:
    handler = HandlerConsul(_settings(consul_agent))
    await handler.initialize()
    await asyncio.gather(*(handler.shutdown() for _ in range(5)))
    assert handler.describe()["state"] == "shut_down"
    assert handler.describe()["pool"] is None


async def test_concurrent_initializes_leave_one_runtime_and_close_the_other(
    consul_agent: ConsulAgent, clean_consul_env: None
) -> None:
    handler = HandlerConsul(_settings(consul_agent))
    await handler.initialize()
    first = _pool(handler)
    await asyncio.gather(
        handler.initialize({"max_concurrent_operations": 2}),
        handler.initialize({"max_concurrent_operations": 3}),
    )
    assert first.snapshot()["closed"] is True
    assert handler.describe()["pool"]["max_workers"] == 3  # the later call wins
    await handler.shutdown()


async def test_a_cancelled_initialize_leaves_the_previous_runtime_serving(
    consul_agent: ConsulAgent, trickle_headers_server: TrickleHeaders, clean_consul_env: None
) -> None:
    handler = HandlerConsul(_settings(consul_agent))
    await handler.initialize()
    pool = _pool(handler)
    task = asyncio.create_task(
        handler.initialize({"port": trickle_headers_server.port, "timeout_seconds": 2.0})
    )
    await asyncio.to_thread(trickle_headers_server.wait_for_requests, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _pool(handler) is pool
    assert handler.describe()["state"] == "running"
    response = await handler.execute(envelope("kv_get", key=f"{uniq('cancel-init')}/k"))
    assert response.result["found"] is False
    await handler.shutdown()


async def test_reinitialize_keeps_an_open_breaker_for_the_same_consul(
    consul_agent: ConsulAgent, dead_port: int, clean_consul_env: None
) -> None:
    """Re-reading the configuration does not end an outage; pointing elsewhere does."""
    handler = HandlerConsul(_settings(consul_agent))
    await handler.initialize()
    handler.force_open_circuit()
    await handler.initialize({"max_concurrent_operations": 4})
    assert handler.describe()["circuit_breakers"]["consul.default"]["state"] == "open"
    await handler.initialize({"breaker": {"failure_threshold": 7}})
    assert handler.describe()["circuit_breakers"]["consul.default"]["state"] == "closed"
    await handler.shutdown()
