"""Handlers under test: tuned settings, what describe() shows of the breaker and the pool, an
injected sleep that records, and proxies that count or record what reaches Consul."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from harness import ConsulAgent, CountingProxy, Toxiproxy

from handler_consul import ConsulSettings, HandlerConsul

# The factories the fixtures hand out (tests/conftest.py).
MakeHandler = Callable[..., Awaitable[HandlerConsul]]
ProxyFor = Callable[[Any], Toxiproxy]
CountFor = Callable[[Any], CountingProxy]

# Seconds an execute() may overrun its deadline (scheduling, the thread hand-off).
OVERRUN = 0.15

# Backoff in milliseconds, for tests that retry with otherwise product-default settings.
FAST_RETRY: dict[str, float] = {"initial_delay_seconds": 0.01, "max_delay_seconds": 0.02}

# Settings for tests about retries, deadlines, cancellation and backpressure: quick timeouts,
# four workers, backoff in milliseconds, and a breaker threshold so high that a test about
# retries is never cut short by the breaker. Tests about the breaker set their own threshold;
# a threshold of 1 is how a test shows that something is never counted.
TUNED: dict[str, Any] = {
    "host": "127.0.0.1",
    "timeout_seconds": 2.0,
    "max_concurrent_operations": 4,
    "shutdown_grace_seconds": 0.2,
    "retry": {"max_attempts": 3, "initial_delay_seconds": 0.01, "max_delay_seconds": 0.05},
    "breaker": {"failure_threshold": 100, "reset_timeout_seconds": 30.0},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tuned(target: Any, **over: Any) -> dict[str, Any]:
    """The ``initialize()`` mapping for ``target``: ``TUNED`` with ``over`` merged in (nested
    mappings merge key by key, so ``breaker={"failure_threshold": 1}`` keeps the reset timeout)."""
    return _merge({**TUNED, "port": target.port}, over)


def settings_for(target: Any, **settings: Any) -> ConsulSettings:
    """Product-default settings aimed at ``target`` (an agent or a proxy)."""
    return ConsulSettings(host=target.host, port=target.port, **settings)


async def execute_ok(handler: HandlerConsul, operation: str, **payload: Any) -> dict[str, Any]:
    """Execute ``consul.<operation>`` with ``payload``; it must succeed. Returns the result."""
    response = await handler.execute({"operation": f"consul.{operation}", "payload": payload})
    assert response.status == "success"
    assert response.operation == f"consul.{operation}"
    return dict(response.result)


# -- what describe() shows ------------------------------------------------------------------------


def breaker_snapshot(handler: HandlerConsul, datacenter: str | None = None) -> dict[str, Any]:
    """The datacenter's breaker as ``describe()`` shows it (created on first use)."""
    handler.circuit_breaker(datacenter)
    name = f"consul.{datacenter or 'default'}"
    snapshot: dict[str, Any] = handler.describe()["circuit_breakers"][name]
    return snapshot


def pool_snapshot(handler: HandlerConsul) -> dict[str, Any]:
    snapshot: dict[str, Any] = handler.describe()["pool"]
    return snapshot


def assert_nothing_counted(
    handler: HandlerConsul, *, successes: int | None = None, datacenter: str | None = None
) -> None:
    """The breaker is closed and has counted no failure (and, if given, exactly ``successes``)."""
    state = breaker_snapshot(handler, datacenter)
    assert (state["state"], state["total_failures"], state["consecutive_failures"]) == (
        "closed",
        0,
        0,
    ), state
    if successes is not None:
        assert state["total_successes"] == successes, state


# -- an injected sleep ----------------------------------------------------------------------------


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


# -- proxies ------------------------------------------------------------------------------------


def counting_through_toxiproxy(
    toxiproxy_for: Callable[[Any], Toxiproxy],
    counting_proxy_for: Callable[[Any], CountingProxy],
    agent: ConsulAgent,
) -> tuple[Toxiproxy, CountingProxy]:
    """handler -> counting proxy -> toxiproxy -> agent: faults below, counting above."""
    toxic = toxiproxy_for(agent)
    counter = counting_proxy_for(toxic)
    return toxic, counter


def requests_to(counter: CountingProxy, method: str, path_prefix: str) -> list[str]:
    """The request lines ``counter`` saw for ``method`` on paths starting with ``path_prefix``."""
    return [line for line in counter.request_lines if line.startswith(f"{method} {path_prefix}")]


def recording_proxy(upstream: Any) -> Any:
    """A started CountingProxy that also keeps the raw client-to-Consul bytes in ``.raw``.

    The harness proxy records request lines only; the header block is what proves where the
    token travels (``X-Consul-Token``) and where it does not (the URL).
    """

    class RecordingProxy(CountingProxy):
        def __init__(self, upstream: Any) -> None:
            super().__init__(upstream)
            self._raw = bytearray()
            self._raw_lock = threading.Lock()

        def _record(self, buf: bytearray, data: bytes) -> None:
            with self._raw_lock:
                self._raw += data
            super()._record(buf, data)

        @property
        def raw(self) -> bytes:
            with self._raw_lock:
                return bytes(self._raw)

    return RecordingProxy(upstream).start()
