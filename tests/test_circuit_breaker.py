"""The circuit breaker as a caller meets it: what happens when the breaker is open.

Once ``failure_threshold`` attempts in a row have failed, the breaker of that datacenter
(``consul.<dc or default>``) is open: a first attempt fails fast with InfraUnavailableError and
``retry_after_seconds``, sends nothing and never touches the worker pool. The breaker is asked
before every attempt, retries included; a retry that meets an open breaker waits out its
``retry_after`` only when that fits in the envelope's deadline.

The breaker's own state machine (counting, half-open probes, late outcomes, the clock) is
proved on a fake clock in tests/unit/test_breaker_*.py; its transition log records in
tests/test_logging.py; under real outages (agent killed, black hole, leader lost) in
tests/test_faults.py.
"""

from __future__ import annotations

import asyncio

import pytest
from harness import ConsulAgent, Toxiproxy
from support import (
    MakeHandler,
    ProxyFor,
    RecordingSleep,
    assert_json_ready,
    breaker_snapshot,
    envelope,
    expected_context,
    in_thread,
    kv_get,
    kv_put,
    pool_snapshot,
    unique_key,
    with_correlation_id,
    with_deadline,
)

from handler_consul import InfraConnectionError, InfraUnavailableError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


# -- an open breaker fails fast ------------------------------------------------------------------


async def test_open_breaker_refuses_with_retry_after_and_sends_nothing(
    make_handler: MakeHandler, toxiproxy: Toxiproxy
) -> None:
    handler = await make_handler(
        toxiproxy,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 2, "reset_timeout_seconds": 60},
    )
    toxiproxy.down()
    for _ in range(2):
        with pytest.raises(InfraConnectionError):
            await handler.execute(envelope("kv_get", key="any/k"))
    env = with_correlation_id(envelope("kv_get", key="any/k"))
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(env)
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="unavailable",
        retryable=False,
        attempts=0,
        correlation_id=env["correlation_id"],
    )
    assert "consul.default" in str(error)
    assert "open" in str(error)
    assert error.retry_after_seconds is not None
    assert 0 < error.retry_after_seconds <= 60
    data = assert_json_ready(error)
    assert data["retry_after_seconds"] == error.retry_after_seconds
    assert handler.describe()["circuit_breakers"]["consul.default"]["state"] == "open"
    # The agent coming back does not matter while the breaker is open: nothing is sent.
    toxiproxy.up()
    with pytest.raises(InfraUnavailableError):
        await handler.execute(envelope("kv_get", key="any/k"))


async def test_first_attempt_on_an_open_breaker_fails_fast_without_touching_the_pool(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(
        proxy,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 0.5},
    )
    await in_thread(proxy.down)
    with pytest.raises(InfraConnectionError):
        await handler.execute(with_deadline(kv_get(unique_key()), 0.05))
    assert breaker_snapshot(handler)["state"] == "open"
    busy_before = pool_snapshot(handler)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraUnavailableError) as info:
        await handler.execute(with_deadline(kv_get(unique_key()), 5.0))
    assert loop.time() - started < 0.05
    assert info.value.context.attempts == 0
    assert info.value.retry_after_seconds is not None
    assert 0 < info.value.retry_after_seconds <= 0.5
    assert pool_snapshot(handler)["peak_busy"] == busy_before["peak_busy"]
    assert pool_snapshot(handler)["busy"] == 0


async def test_each_datacenter_has_its_own_breaker_named_after_it(
    make_handler: MakeHandler, toxiproxy: Toxiproxy
) -> None:
    handler = await make_handler(
        toxiproxy,
        datacenter="dc1",
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 60},
    )
    toxiproxy.down()
    with pytest.raises(InfraConnectionError) as first:
        await handler.execute(envelope("kv_get", key="any/k"))
    assert (first.value.context.target, first.value.context.datacenter) == ("consul.dc1", "dc1")
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(envelope("kv_get", key="any/k"))
    assert (caught.value.context.target, caught.value.context.datacenter) == ("consul.dc1", "dc1")
    assert handler.describe()["circuit_breakers"]["consul.dc1"]["state"] == "open"


# -- the breaker is asked before every attempt, retries included ---------------------------------


async def test_breaker_is_checked_before_every_attempt(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(
        proxy,
        sleep=RecordingSleep(),
        retry={"max_attempts": 5},
        breaker={"failure_threshold": 2, "reset_timeout_seconds": 30.0},
    )
    await in_thread(proxy.down)
    with pytest.raises(InfraUnavailableError) as info:
        await handler.execute(with_deadline(kv_get(unique_key()), 5.0))
    # Two attempts failed and opened the breaker; the third was refused by it, and its
    # 30 s wait does not fit the 5 s deadline, so the envelope ends there.
    assert info.value.context.attempts == 2
    assert info.value.retry_after_seconds is not None
    assert 29.0 < info.value.retry_after_seconds <= 30.0
    state = breaker_snapshot(handler)
    assert (state["state"], state["total_failures"], state["total_rejections"]) == ("open", 2, 1)


async def test_open_breaker_is_waited_out_when_its_retry_after_fits(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_tuned_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)

    async def consul_comes_back() -> None:
        await in_thread(proxy.up)

    sleep = RecordingSleep(hook=consul_comes_back)
    handler = await make_tuned_handler(
        proxy,
        sleep=sleep,
        retry={"max_attempts": 3},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 0.3},
    )
    await in_thread(proxy.down)
    response = await handler.execute(with_deadline(kv_put(unique_key(), "after-wait"), 5.0))
    assert response.attempts == 2
    # First the backoff, then the breaker's remaining wait (it fit in the 5 s deadline).
    assert len(sleep.seconds) == 2
    assert sleep.seconds[0] < 0.05
    assert 0.2 < sleep.seconds[1] <= 0.3
    state = breaker_snapshot(handler)
    assert (state["state"], state["total_rejections"], state["transitions"]) == ("closed", 1, 3)
