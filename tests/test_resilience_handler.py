"""Handler-level proof of spec items 12, 14, 15, 17, 18, 20-26 (../shared/RESILIENCE.md).

Everything about Consul runs against a real agent from the harness; faults come from
toxiproxy (latency, black hole, refused) and requests are counted at the harness's counting
proxy. Pure breaker and retry logic is proved with a fake clock in tests/unit/.

Handlers here use a high breaker threshold unless the test is about the breaker, so a test
about retries is never cut short by it; a breaker threshold of 1 is used where "never
counted" must show: a single counted failure would open the breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import http.client
import signal
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from faults_support import LagTicker, ThreadSampler, in_thread, wait_until
from harness import AclConsulAgent, ConsulAgent, CountingProxy, Toxiproxy

from handler_consul import (
    HandlerConsul,
    InfraAuthenticationError,
    InfraConnectionError,
    InfraConsulError,
    InfraTimeoutError,
    InfraUnavailableError,
)
from handler_consul._operations import OPERATIONS

pytestmark = pytest.mark.consul

Target = ConsulAgent | Toxiproxy | CountingProxy
ProxyFor = Callable[[Any], Toxiproxy]
CountFor = Callable[[Any], CountingProxy]

EPSILON = 0.15  # seconds an execute() may overrun its deadline (scheduling, thread hand-off)


# -- helpers ----------------------------------------------------------------------------------


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config(target: Target, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": target.port,
        "timeout_seconds": 2.0,
        "max_concurrent_operations": 4,
        "shutdown_grace_seconds": 0.2,
        "retry": {"max_attempts": 3, "initial_delay_seconds": 0.01, "max_delay_seconds": 0.05},
        "breaker": {"failure_threshold": 100, "reset_timeout_seconds": 30.0},
    }
    return _merge(base, over)


def key(prefix: str = "resilience") -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


def put(k: str, value: str = "v", **extra: Any) -> dict[str, Any]:
    return {"operation": "consul.kv_put", "payload": {"key": k, "value": value, **extra}}


def get(k: str, **extra: Any) -> dict[str, Any]:
    return {"operation": "consul.kv_get", "payload": {"key": k, **extra}}


def with_deadline(envelope: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {**envelope, "timeout_seconds": seconds}


def breaker(handler: HandlerConsul) -> dict[str, Any]:
    """The default datacenter's breaker as describe() shows it (created on first use)."""
    handler.circuit_breaker(None)
    snapshot: dict[str, Any] = handler.describe()["circuit_breakers"]["consul.default"]
    return snapshot


def pool(handler: HandlerConsul) -> dict[str, Any]:
    snapshot: dict[str, Any] = handler.describe()["pool"]
    return snapshot


class RecordingSleep:
    """An injected sleep: records (loop time at start, seconds), then really waits.

    ``hook`` (optional) is awaited before the first wait, e.g. to end a fault.
    """

    def __init__(
        self, *, scale: float = 1.0, hook: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.calls: list[tuple[float, float]] = []
        self.scale = scale
        self.hook = hook

    async def __call__(self, seconds: float) -> None:
        self.calls.append((asyncio.get_running_loop().time(), seconds))
        if self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        await asyncio.sleep(seconds * self.scale)

    @property
    def seconds(self) -> list[float]:
        return [s for _, s in self.calls]


MakeHandler = Callable[..., Awaitable[HandlerConsul]]


@pytest.fixture
async def make_handler() -> AsyncIterator[MakeHandler]:
    made: list[HandlerConsul] = []

    async def make(target: Target, *, init: bool = True, **kwargs: Any) -> HandlerConsul:
        ctor = {k: kwargs.pop(k) for k in ("clock", "rng", "sleep") if k in kwargs}
        handler = HandlerConsul(**ctor)
        made.append(handler)
        if init:
            await handler.initialize(config(target, **kwargs))
        return handler

    yield make
    for handler in made:
        await asyncio.wait_for(handler.shutdown(), 10)


def counting_through_toxiproxy(
    toxiproxy_for: ProxyFor, counting_proxy_for: CountFor, agent: ConsulAgent
) -> tuple[Toxiproxy, CountingProxy]:
    """handler -> counting proxy -> toxiproxy -> agent: faults below, counting above."""
    toxic = toxiproxy_for(agent)
    counter = counting_proxy_for(toxic)
    return toxic, counter


def requests_to(counter: CountingProxy, method: str, path_prefix: str) -> list[str]:
    return [line for line in counter.request_lines if line.startswith(f"{method} {path_prefix}")]


# -- item 12: interrupts and cancellation propagate untouched, never counted ------------------


async def test_item_12_cancelled_execute_propagates_counts_nothing_and_frees_its_slot_later(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(proxy, timeout_seconds=1.0, breaker={"failure_threshold": 1})
    await in_thread(proxy.timeout, 0)  # black hole: the request hangs until its timeout
    task = asyncio.create_task(handler.execute(get(key())))
    assert await wait_until(lambda: pool(handler)["busy"] == 1, timeout=5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    state = breaker(handler)
    assert (state["state"], state["total_failures"], state["total_successes"]) == ("closed", 0, 0)
    # The worker is still inside its request: the slot stays taken until it returns...
    assert pool(handler)["busy"] == 1
    # ...which the HTTP timeout (1 s) guarantees; its late timeout is not counted either.
    assert await wait_until(lambda: pool(handler)["busy"] == 0, timeout=3)
    state = breaker(handler)
    assert (state["state"], state["total_failures"]) == ("closed", 0)


def test_item_12_ctrl_c_during_execute_surfaces_as_keyboard_interrupt_and_counts_nothing(
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
            config(proxy, timeout_seconds=1.0, breaker={"failure_threshold": 1})
        )
        await in_thread(proxy.timeout, 0)
        task = asyncio.ensure_future(handler.execute(get(key())))
        assert await wait_until(lambda: pool(handler)["busy"] == 1, timeout=5)
        reached.append("in flight")
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers
        await task
        reached.append("not interrupted")

    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(main())
        assert reached == ["in flight"]
        state = breaker(handler)
        assert (state["state"], state["total_failures"], state["total_successes"]) == (
            "closed",
            0,
            0,
        )
        assert handler.describe()["in_flight"] == 0
    finally:
        asyncio.run(handler.shutdown())


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_item_12_interrupt_raised_inside_the_call_propagates_untouched_and_is_not_counted(
    interrupt: type[BaseException],
    consul_agent: ConsulAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's call raises the interrupt (after a real request): the same object
    reaches the caller, no InfraError wraps it, and the breaker (threshold 1) stays closed."""
    raised = interrupt("stop")
    real_put = OPERATIONS["consul.kv_put"]

    def interrupted(*args: Any) -> Any:
        real_put.run(*args)
        raise raised

    handler = HandlerConsul()

    async def main() -> None:
        await handler.initialize(config(consul_agent, breaker={"failure_threshold": 1}))
        monkeypatch.setitem(
            OPERATIONS,  # type: ignore[arg-type]
            "consul.kv_put",
            dataclasses.replace(real_put, run=interrupted),
        )
        await handler.execute(put(key(), "x"))

    try:
        with pytest.raises(interrupt) as info:
            asyncio.run(main())
        assert info.value is raised
        state = breaker(handler)
        assert (state["state"], state["total_failures"], state["total_successes"]) == (
            "closed",
            0,
            0,
        )
        assert pool(handler)["busy"] == 0
    finally:
        monkeypatch.undo()
        asyncio.run(handler.shutdown())


# -- item 14: only transient failures retry -----------------------------------------------------


async def test_item_14_acl_denied_403_is_asked_once_and_not_counted(
    acl_agent: AclConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    token = acl_agent.mint_token('key_prefix "allowed/" { policy = "write" }')
    counter = counting_proxy_for(acl_agent)
    handler = await make_handler(counter, token=token, breaker={"failure_threshold": 1})
    counter.reset()
    with pytest.raises(InfraAuthenticationError) as info:
        await handler.execute(put(key("denied"), "x"))
    assert info.value.context.attempts == 1
    assert info.value.context.status_code == 403
    assert len(requests_to(counter, "PUT", "/v1/kv/denied/")) == 1
    assert counter.requests == 1
    state = breaker(handler)
    assert (state["state"], state["total_failures"]) == ("closed", 0)


async def test_item_14_bad_request_400_is_asked_once_and_not_counted(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    handler = await make_handler(counter, breaker={"failure_threshold": 1})
    counter.reset()
    name = f"bad-{uuid.uuid4().hex[:8]}"
    # Consul refuses a TCP check with a zero interval: "Interval must be > 0" (400).
    envelope = {
        "operation": "consul.register",
        "payload": {"name": name, "check": {"tcp": "127.0.0.1:1", "interval": "0s"}},
    }
    with pytest.raises(InfraConsulError) as info:
        await handler.execute(envelope)
    assert info.value.context.status_code == 400
    assert info.value.context.attempts == 1
    assert "Interval must be > 0" in str(info.value)
    assert counter.request_lines == ["PUT /v1/agent/service/register HTTP/1.1"]
    state = breaker(handler)
    assert (state["state"], state["total_failures"]) == ("closed", 0)


async def test_item_14_payload_too_large_413_is_asked_once_and_not_counted(
    consul_bin: str, tmp_path: Path, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    agent = ConsulAgent(
        consul_bin,
        name="kv-limit",
        base_dir=tmp_path,
        extra_config={"limits": {"kv_max_value_size": 1024}},
    )
    try:
        await in_thread(agent.start)
        counter = counting_proxy_for(agent)
        handler = await make_handler(counter, breaker={"failure_threshold": 1})
        counter.reset()
        with pytest.raises(InfraConsulError) as info:
            await handler.execute(put(key(), "x" * 2000))
        assert info.value.context.status_code == 413
        assert info.value.context.attempts == 1
        assert counter.requests == 1
        state = breaker(handler)
        assert (state["state"], state["total_failures"]) == ("closed", 0)
    finally:
        await in_thread(agent.close)


async def test_item_14_not_found_404_is_an_answer_asked_once(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    handler = await make_handler(counter, breaker={"failure_threshold": 1})
    counter.reset()
    missing = await handler.execute(get(key()))
    assert (missing.result["found"], missing.attempts) == (False, 1)
    gone = await handler.execute(
        {"operation": "consul.deregister", "payload": {"service_id": f"nx-{uuid.uuid4().hex}"}}
    )
    assert (gone.result["deregistered"], gone.attempts) == (False, 1)
    assert counter.requests == 2
    assert breaker(handler)["total_failures"] == 0


async def test_item_14_connection_refused_is_retried_up_to_max_attempts(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    sleep = RecordingSleep()
    handler = await make_handler(proxy, sleep=sleep, retry={"max_attempts": 4})
    await in_thread(proxy.down)  # nothing listens: connection refused
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(get(key()))
    assert type(info.value) is InfraConnectionError
    assert "refused" in str(info.value).lower()
    assert info.value.context.attempts == 4
    assert len(sleep.calls) == 3
    assert breaker(handler)["total_failures"] == 4


async def test_item_14_server_error_5xx_is_retried_up_to_max_attempts(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    # A datacenter Consul does not know: every KV call answers 500 "No path to datacenter".
    handler = await make_handler(counter, datacenter="nowhere")
    counter.reset()
    k = key()
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(get(k))
    assert info.value.context.status_code == 500
    assert "No path to datacenter" in str(info.value)
    assert info.value.context.attempts == 3
    assert len(requests_to(counter, "GET", f"/v1/kv/{k}")) == 3
    # A plain put is idempotent, so a 5xx is retried for it too.
    counter.reset()
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(put(k))
    assert info.value.context.attempts == 3
    assert len(requests_to(counter, "PUT", f"/v1/kv/{k}")) == 3


async def test_item_14_too_many_requests_429_is_retried_up_to_max_attempts(
    consul_bin: str, tmp_path: Path, toxiproxy_for: ProxyFor, make_handler: MakeHandler
) -> None:
    agent = ConsulAgent(
        consul_bin,
        name="conn-limit",
        base_dir=tmp_path,
        extra_config={"limits": {"http_max_conns_per_client": 2}},
    )
    held: list[http.client.HTTPConnection] = []
    try:
        await in_thread(agent.start)
        proxy = toxiproxy_for(agent)
        handler = await make_handler(proxy, max_concurrent_operations=1)
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
            await handler.execute(get(key()))
        assert info.value.context.status_code == 429
        assert info.value.context.attempts == 3
    finally:
        for conn in held:
            conn.close()
        await in_thread(agent.close)


# -- item 15: an unknown outcome is re-sent only when idempotent --------------------------------


async def test_item_15_timed_out_cas_write_is_never_resent(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_handler(counter, timeout_seconds=0.5)
    await in_thread(toxic.latency, 1500)  # Consul's answer arrives after the timeout
    counter.reset()
    k = key()
    with pytest.raises(InfraTimeoutError) as info:
        await handler.execute(with_deadline(put(k, "once", cas=0), 5.0))
    assert info.value.context.attempts == 1
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [f"PUT /v1/kv/{k}?cas=0 HTTP/1.1"]
    # The request did reach Consul: its outcome was unknown, not "failed".
    stored = await in_thread(consul_agent.request, "GET", f"/v1/kv/{k}?raw")
    assert (stored.status, stored.body) == (200, b"once")
    assert len(requests_to(counter, "PUT", f"/v1/kv/{k}")) == 1


async def test_item_15_timed_out_plain_write_is_retried(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_handler(counter, timeout_seconds=0.3)
    await in_thread(toxic.latency, 1500)
    counter.reset()
    k = key()
    with pytest.raises(InfraTimeoutError) as info:
        await handler.execute(with_deadline(put(k, "again"), 5.0))
    assert info.value.context.attempts == 3
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [f"PUT /v1/kv/{k} HTTP/1.1"] * 3


async def test_item_15_lock_write_answered_5xx_is_never_resent(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    # A datacenter Consul does not know: 500 "No path to datacenter", a genuine 5xx whose
    # outcome the handler cannot know, so a lock write is not re-sent (a plain put is: item 14).
    handler = await make_handler(counter, datacenter="nowhere")
    counter.reset()
    k = key()
    session = str(uuid.uuid4())
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(put(k, "lock", acquire=session))
    assert info.value.context.status_code == 500
    assert "No path to datacenter" in str(info.value)
    assert info.value.context.attempts == 1
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [
        f"PUT /v1/kv/{k}?acquire={session}&dc=nowhere HTTP/1.1"
    ]


async def test_item_14_invalid_session_500_is_the_callers_mistake_asked_once_not_counted(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    """Consul answers 500 "invalid session" for a lock on a session that does not exist:
    not an outage, so neither retried nor counted (one bad caller must not open the breaker)."""
    counter = counting_proxy_for(consul_agent)
    handler = await make_handler(counter, breaker={"failure_threshold": 1})
    counter.reset()
    k = key()
    with pytest.raises(InfraConsulError) as info:
        await handler.execute(put(k, "lock", acquire=str(uuid.uuid4())))
    assert info.value.context.status_code == 500
    assert "invalid session" in str(info.value)
    assert info.value.context.attempts == 1
    assert len(requests_to(counter, "PUT", f"/v1/kv/{k}")) == 1
    state = breaker(handler)
    assert (state["state"], state["total_failures"]) == ("closed", 0)


async def test_item_15_cas_write_that_never_left_is_retried(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    """Refused before anything was sent: the outcome is known (not applied), so retry is safe."""
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(proxy)
    await in_thread(proxy.down)
    with pytest.raises(InfraConnectionError) as info:
        await handler.execute(put(key(), "x", cas=0))
    assert info.value.context.attempts == 3


# -- item 17: the envelope deadline bounds everything -----------------------------------------


async def test_item_17_execute_against_a_black_hole_ends_within_its_deadline(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(proxy, timeout_seconds=0.4, retry={"max_attempts": 10})
    await in_thread(proxy.timeout, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraTimeoutError) as info:
        await handler.execute(with_deadline(get(key()), 1.0))
    elapsed = loop.time() - started
    assert 0.9 <= elapsed <= 1.0 + EPSILON
    assert info.value.context.attempts >= 2  # retried inside the deadline, not past it


async def test_item_17_no_backoff_sleep_ends_past_the_deadline(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    sleep = RecordingSleep()
    handler = await make_handler(
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
        await handler.execute(with_deadline(get(key()), 1.0))
    elapsed = loop.time() - started
    # Backoffs 0.2 and 0.4 fit; the next (0.8) would end past the 1 s deadline, so it is
    # never slept and the last error is raised at once.
    assert sleep.seconds == pytest.approx([0.1998, 0.3996])
    assert all(at + seconds < started + 1.0 for at, seconds in sleep.calls)
    assert info.value.context.attempts == 3
    assert elapsed < 1.0


# -- item 18: the breaker before every attempt ------------------------------------------------


async def test_item_18_breaker_is_checked_before_every_attempt(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(
        proxy,
        sleep=RecordingSleep(),
        retry={"max_attempts": 5},
        breaker={"failure_threshold": 2, "reset_timeout_seconds": 30.0},
    )
    await in_thread(proxy.down)
    with pytest.raises(InfraUnavailableError) as info:
        await handler.execute(with_deadline(get(key()), 5.0))
    # Two attempts failed and opened the breaker; the third was refused by it, and its
    # 30 s wait does not fit the 5 s deadline, so the envelope ends there.
    assert info.value.context.attempts == 2
    assert info.value.retry_after_seconds is not None
    assert 29.0 < info.value.retry_after_seconds <= 30.0
    state = breaker(handler)
    assert (state["state"], state["total_failures"], state["total_rejections"]) == ("open", 2, 1)


async def test_item_18_open_breaker_is_waited_out_when_its_retry_after_fits(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)

    async def consul_comes_back() -> None:
        await in_thread(proxy.up)

    sleep = RecordingSleep(hook=consul_comes_back)
    handler = await make_handler(
        proxy,
        sleep=sleep,
        retry={"max_attempts": 3},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 0.3},
    )
    await in_thread(proxy.down)
    k = key()
    response = await handler.execute(with_deadline(put(k, "after-wait"), 5.0))
    assert response.attempts == 2
    # First the backoff, then the breaker's remaining wait (it fit in the 5 s deadline).
    assert len(sleep.seconds) == 2
    assert sleep.seconds[0] < 0.05
    assert 0.2 < sleep.seconds[1] <= 0.3
    state = breaker(handler)
    assert (state["state"], state["total_rejections"], state["transitions"]) == ("closed", 1, 3)


async def test_item_18_first_attempt_on_an_open_breaker_fails_fast(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(
        proxy,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 0.5},
    )
    await in_thread(proxy.down)
    with pytest.raises(InfraConnectionError):
        await handler.execute(with_deadline(get(key()), 0.05))
    assert breaker(handler)["state"] == "open"
    busy_before = pool(handler)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraUnavailableError) as info:
        await handler.execute(with_deadline(get(key()), 5.0))
    assert loop.time() - started < 0.05
    assert info.value.context.attempts == 0
    assert info.value.retry_after_seconds is not None
    assert 0 < info.value.retry_after_seconds <= 0.5
    assert pool(handler)["peak_busy"] == busy_before["peak_busy"]
    assert pool(handler)["busy"] == 0


# -- item 20: cancelling the caller --------------------------------------------------------------


async def test_item_20_cancelling_a_caller_blocked_on_consul_returns_promptly_and_is_not_retried(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_handler(counter, timeout_seconds=0.5)
    await in_thread(toxic.timeout, 0)
    counter.reset()
    k = key()
    task = asyncio.create_task(handler.execute(put(k, "x")))
    assert await wait_until(lambda: counter.requests == 1, timeout=5)
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - cancelled_at < 0.05
    assert task.cancelled()
    # Past the request timeout the worker returns; nothing was retried on the caller's behalf.
    assert await wait_until(lambda: pool(handler)["busy"] == 0, timeout=3)
    assert requests_to(counter, "PUT", f"/v1/kv/{k}") == [f"PUT /v1/kv/{k} HTTP/1.1"]
    assert breaker(handler)["total_failures"] == 0


async def test_item_20_cancelling_a_caller_during_backoff_returns_promptly(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(
        proxy,
        rng=lambda: 0.999,
        retry={"max_attempts": 3, "initial_delay_seconds": 5.0, "max_delay_seconds": 5.0},
    )
    await in_thread(proxy.down)
    task = asyncio.create_task(handler.execute(with_deadline(get(key()), 30.0)))
    assert await wait_until(lambda: breaker(handler)["total_failures"] == 1, timeout=5)
    await asyncio.sleep(0.05)  # now inside the ~5 s backoff
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - cancelled_at < 0.05
    assert task.cancelled()
    assert handler.describe()["in_flight"] == 0
    assert breaker(handler)["total_failures"] == 1  # no attempt after the cancel


async def test_item_20_caller_timeout_cancels_the_envelope_at_the_callers_deadline(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(proxy, timeout_seconds=5.0)
    await in_thread(proxy.timeout, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await handler.execute(get(key()))
    assert 0.2 <= loop.time() - started < 0.2 + 0.05
    assert breaker(handler)["total_failures"] == 0


# -- item 21: worker threads never exceed the bound -------------------------------------------


async def test_item_21_worker_threads_never_exceed_the_bound_even_with_abandoned_calls(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    with ThreadSampler() as sampler:
        handler = await make_handler(
            proxy, timeout_seconds=1.0, max_concurrent_operations=4, max_wait_seconds=0.1
        )
        await in_thread(proxy.timeout, 0)
        hung = [asyncio.create_task(handler.execute(get(key()))) for _ in range(4)]
        assert await wait_until(lambda: pool(handler)["busy"] == 4, timeout=5)
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        assert all(task.cancelled() for task in hung)
        # Abandoned by their callers, the four calls still hold their slots and threads.
        assert pool(handler)["busy"] == 4
        assert sampler.now() == 4

        late = await asyncio.gather(
            *(handler.execute(with_deadline(get(key()), 0.5)) for _ in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, InfraUnavailableError) for r in late), late
        assert pool(handler)["threads"] == 4

        # The HTTP timeout brings every abandoned thread back, then work flows again.
        assert await wait_until(lambda: pool(handler)["busy"] == 0, timeout=3)
        await in_thread(proxy.clear)
        done = await asyncio.gather(*(handler.execute(get(key())) for _ in range(40)))
        assert all(r.status == "success" for r in done)
    assert sampler.peak == 4
    assert sampler.samples > 10
    assert pool(handler)["threads"] == 4
    assert pool(handler)["peak_busy"] == 4


# -- item 22: bounded wait, bounded memory ----------------------------------------------------


async def test_item_22_bounded_wait_raises_unavailable_and_is_not_a_breaker_failure(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(
        proxy,
        timeout_seconds=2.0,
        max_concurrent_operations=1,
        max_wait_seconds=0.2,
        breaker={"failure_threshold": 1},
    )
    await in_thread(proxy.timeout, 0)
    first = asyncio.create_task(handler.execute(get(key())))
    assert await wait_until(lambda: pool(handler)["busy"] == 1, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraUnavailableError) as info:
        await handler.execute(get(key()))
    waited = loop.time() - started
    assert 0.2 <= waited < 0.2 + EPSILON
    assert "busy" in str(info.value)
    assert info.value.context.attempts == 1
    state = breaker(handler)
    assert (state["state"], state["total_failures"]) == ("closed", 0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


@pytest.mark.slow
async def test_item_22_memory_stays_bounded_when_100k_envelopes_arrive(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    """Two calls hang, a hundred wait, and 99,898 more are refused at once: the queue never
    grows past ``max_queued_operations`` and the refused envelopes leave nothing behind."""
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(
        proxy,
        timeout_seconds=300.0,
        max_concurrent_operations=2,
        max_wait_seconds=300.0,
        max_queued_operations=100,
    )
    await in_thread(proxy.timeout, 0)
    envelope = get(key())
    waves, per_wave = 10, 10_000
    stuck: list[asyncio.Task[Any]] = []
    refused = 0
    objects: list[int] = []
    retained = -1

    async def wave() -> None:
        nonlocal refused
        tasks = [asyncio.create_task(handler.execute(envelope)) for _ in range(per_wave)]
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
        assert pool(handler)["waiting"] == 100

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
    assert breaker(handler)["total_failures"] == 0
    for task in stuck:
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)


# -- item 23: a completed result is delivered ----------------------------------------------------


async def test_item_23_result_that_arrived_is_delivered_even_after_the_deadline_passed(
    toxiproxy_for: ProxyFor,
    counting_proxy_for: CountFor,
    consul_agent: ConsulAgent,
    make_handler: MakeHandler,
) -> None:
    toxic, counter = counting_through_toxiproxy(toxiproxy_for, counting_proxy_for, consul_agent)
    handler = await make_handler(counter)
    await in_thread(toxic.latency, 100)  # the answer comes back 100 ms after the request
    counter.reset()
    k = key()
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(handler.execute(with_deadline(put(k, "kept"), 0.3)))
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


# -- item 24: connections sized to the pool ----------------------------------------------------


async def test_item_24_no_connection_is_discarded_under_full_concurrency(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    workers = 8
    handler = await make_handler(counter, max_concurrent_operations=workers)
    keys = [key() for _ in range(64)]

    async def round_() -> None:
        results = await asyncio.gather(*(handler.execute(get(k)) for k in keys))
        assert all(r.status == "success" for r in results)

    for _ in range(3):
        await round_()
    warmed = counter.connections
    assert 1 <= warmed <= workers
    assert pool(handler)["peak_busy"] == workers
    for _ in range(20):
        await round_()
    assert counter.connections == warmed
    assert counter.requests == 1 + 23 * len(keys)


# -- item 25: the event loop keeps ticking ---------------------------------------------------------

# A blocking call would show as one wake-up late by the whole timeout (1 s and more here);
# the bounds leave room for a loaded two-CPU CI machine and still catch that.
LAG_P99_MS = 50.0
LAG_MAX_MS = 250.0


async def test_item_25_loop_ticks_during_initialize_against_a_black_hole(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    await in_thread(proxy.timeout, 0)
    handler = await make_handler(proxy, init=False)
    async with LagTicker() as ticker:
        with pytest.raises(InfraTimeoutError):
            await handler.initialize(config(proxy, timeout_seconds=1.0))
    assert ticker.ticks >= 100, ticker.describe()
    assert ticker.p99_ms < LAG_P99_MS, ticker.describe()
    assert ticker.max_ms < LAG_MAX_MS, ticker.describe()


async def test_item_25_loop_ticks_with_256_envelopes_in_flight(
    consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    handler = await make_handler(consul_agent, max_concurrent_operations=10)
    keys = [key() for _ in range(256)]
    async with LagTicker() as ticker:
        for _ in range(3):
            writes = await asyncio.gather(*(handler.execute(put(k, k)) for k in keys))
            reads = await asyncio.gather(*(handler.execute(get(k)) for k in keys))
            assert all(w.result["applied"] for w in writes)
            assert [r.result["value"] for r in reads] == list(keys)
    assert ticker.ticks >= 20, ticker.describe()
    assert ticker.p99_ms < LAG_P99_MS, ticker.describe()
    assert ticker.max_ms < LAG_MAX_MS, ticker.describe()


async def test_item_25_loop_ticks_during_health_check_against_a_black_hole(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(proxy, timeout_seconds=1.0)
    await in_thread(proxy.timeout, 0)
    async with LagTicker() as ticker:
        health = await handler.health_check()
    assert health["healthy"] is False
    assert health["error_type"] == "InfraTimeoutError"
    assert ticker.ticks >= 100, ticker.describe()
    assert ticker.p99_ms < LAG_P99_MS, ticker.describe()
    assert ticker.max_ms < LAG_MAX_MS, ticker.describe()


async def test_item_25_loop_ticks_during_shutdown_with_hung_calls(
    toxiproxy_for: ProxyFor, consul_agent: ConsulAgent, make_handler: MakeHandler
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_handler(proxy, timeout_seconds=2.0, shutdown_grace_seconds=0.5)
    await in_thread(proxy.timeout, 0)
    hung = [asyncio.create_task(handler.execute(get(key()))) for _ in range(4)]
    assert await wait_until(lambda: pool(handler)["busy"] == 4, timeout=5)
    loop = asyncio.get_running_loop()
    async with LagTicker() as ticker:
        started = loop.time()
        await handler.shutdown()
        took = loop.time() - started
    assert 0.5 <= took < 0.5 + EPSILON
    results = await asyncio.gather(*hung, return_exceptions=True)
    assert all(isinstance(r, InfraUnavailableError) for r in results), results
    assert ticker.ticks >= 50, ticker.describe()
    assert ticker.p99_ms < LAG_P99_MS, ticker.describe()
    assert ticker.max_ms < LAG_MAX_MS, ticker.describe()


# -- item 26: no long-poll operations yet ----------------------------------------------------


async def test_item_26_no_operation_is_a_blocking_query(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_handler: MakeHandler
) -> None:
    """Blocking queries (``?index=N&wait=D``) would need their own bound (item 26); none
    exists yet: no payload can ask for one and no request carries one."""
    for operation in OPERATIONS.values():
        fields = set(operation.payload_model.model_fields)
        assert not fields & {"index", "wait", "wait_index", "blocking"}, operation.name
    counter = counting_proxy_for(consul_agent)
    handler = await make_handler(counter)
    name = f"lp-{uuid.uuid4().hex[:8]}"
    k = key()
    envelopes = [
        put(k, "v"),
        get(k),
        get(k.rsplit("/", 1)[0] + "/", recurse=True),
        get(k.rsplit("/", 1)[0] + "/", keys_only=True),
        {"operation": "consul.register", "payload": {"name": name}},
        {"operation": "consul.deregister", "payload": {"service_id": name}},
    ]
    assert {e["operation"] for e in envelopes} == set(OPERATIONS)
    counter.reset()
    for envelope in envelopes:
        assert (await handler.execute(envelope)).status == "success"
    assert counter.requests == len(envelopes)
    for target in counter.paths:
        assert "index=" not in target, target
        assert "wait=" not in target, target
    await handler.execute({"operation": "consul.deregister", "payload": {"service_id": name}})
