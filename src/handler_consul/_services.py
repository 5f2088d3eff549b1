"""The handler's service-discovery state, which outlives any one runtime.

- the :class:`._balance.Balancer`: round-robin positions and the leases held, shared by
  ``consul.endpoint`` and ``HandlerConsul.lease()``;
- the :class:`._maintain.Maintenance` of registrations made with ``maintain: true``.

:meth:`Services.attach` gives both to each new runtime (its state is where the operations
find them). :func:`hold` is ``lease()``: the instances are read by a ``consul.discover``
envelope (validation, breaker, cache and errors as for any envelope), the pick counts until
the block ends (that count is what ``least_connections`` reads), and the fallback stands in
exactly where ``consul.endpoint``'s does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from handler_consul._balance import Balancer
from handler_consul._clock import Clock
from handler_consul._envelope import HandlerResponse
from handler_consul._errors import ContextFields, InfraUnavailableError, make_context
from handler_consul._maintain import Maintenance
from handler_consul._operations.discovery import (
    BALANCER,
    OUTAGES,
    DiscoverPayload,
    LeaseOptions,
    as_endpoint,
    fallback_result,
    no_healthy_instance,
)
from handler_consul._operations.service import MAINTENANCE
from handler_consul._parsing import parse_options
from handler_consul._results import EndpointResult
from handler_consul._runtime import Runtime
from handler_consul._settings import ConsulSettings

__all__ = ["Services", "hold"]

Execute = Callable[[Mapping[str, Any]], Awaitable[HandlerResponse]]


class Services:
    """What ``HandlerConsul`` keeps for discovery across re-initializes."""

    def __init__(self, clock: Clock, rng: Callable[[], float]) -> None:
        self.balancer = Balancer(rng)
        self.maintenance = Maintenance(clock)

    def attach(self, runtime: Runtime | None) -> None:
        """Serve ``runtime`` from now on (once per runtime; call it before anything awaits
        after the runtime was installed, so no envelope runs on it without them)."""
        if runtime is None or MAINTENANCE in runtime.state:
            return
        runtime.state[BALANCER] = self.balancer
        runtime.state[MAINTENANCE] = self.maintenance
        self.maintenance.attach(
            runtime.attempts,
            runtime.long_polls,
            runtime.settings,
            runtime.target,
            runtime.add_closer,
        )


class Running(Protocol):
    """What ``hold`` reads of the handler's lifecycle."""

    runtime: Runtime | None

    def refusal(self) -> str | None: ...


@contextlib.asynccontextmanager
async def hold(
    execute: Execute,
    balancer: Balancer,
    lifecycle: Running,
    base: ConsulSettings | None,
    service: str,
    options: Mapping[str, Any],
    filters: Mapping[str, Any],
) -> AsyncIterator[EndpointResult]:
    """``HandlerConsul.lease()``. ``options`` are its strategy, fallback and timeout,
    ``filters`` discover's payload fields. With no healthy instance, or Consul unreachable
    and nothing fresh in the cache, the fallback is yielded, else the error is raised."""
    runtime = lifecycle.runtime
    settings = runtime.settings if runtime is not None else base
    named = filters.get("datacenter")
    datacenter = named if isinstance(named, str) else settings.datacenter if settings else None
    target = f"consul.{datacenter or 'default'}"
    chosen = parse_options(LeaseOptions, options, "consul.endpoint", target, datacenter)
    timeout_seconds = chosen.timeout_seconds
    payload = {"service": service, **filters}
    envelope: dict[str, Any] = {"operation": "consul.discover", "payload": payload}
    if timeout_seconds is not None:
        envelope["timeout_seconds"] = timeout_seconds
    try:
        found = (await execute(envelope)).as_discover()
    except OUTAGES:
        # Consul away: the fallback. A handler that is not running is the caller's to fix.
        if chosen.fallback is None or lifecycle.refusal() is not None:
            raise
        yield fallback_result(service, chosen.fallback)
        return
    query = DiscoverPayload.model_validate(payload).query_key()
    picked = balancer.pick(query, found["instances"], chosen.strategy)
    if picked is None:
        if chosen.fallback is None:
            raise InfraUnavailableError(
                f"consul.endpoint: {no_healthy_instance(service)}",
                context=make_context(
                    ContextFields("consul.endpoint", None, target, datacenter),
                    InfraUnavailableError,
                    attempts=0,
                ),
            )
        yield fallback_result(service, chosen.fallback)
        return
    held = balancer.acquire(picked)
    try:
        yield as_endpoint(service, picked, found)
    finally:
        balancer.release(held)
