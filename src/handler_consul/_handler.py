"""HandlerConsul: lifecycle, ``execute()``, ``describe()`` and ``health_check()``.

One envelope's path goes down and only down: :meth:`HandlerConsul.execute` validates it
(:mod:`._parsing`; nothing reaches Consul otherwise), then :class:`._retry.Attempts` runs its
attempts (breaker permit, :mod:`._pool`, :mod:`._operations`, :mod:`._client`,
:mod:`._transport`) and translates failures at one boundary (:mod:`._translate`).
docs/patterns/architecture.md draws the whole map.
"""

from __future__ import annotations

import random
from asyncio import get_running_loop
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from handler_consul._breaker import BreakerState, MixinAsyncCircuitBreaker
from handler_consul._check_policy import DEFAULT_CHECK_POLICY
from handler_consul._clock import Clock, Sleep, monotonic
from handler_consul._coordination import Calls, Updater, kv_update, lock_request, watch
from handler_consul._effects import EnvelopeEffects
from handler_consul._envelope import Envelope, HandlerResponse, new_correlation_id
from handler_consul._errors import (
    ContextFields,
    InfraError,
    InfraUnavailableError,
    make_context,
)
from handler_consul._lifecycle import Lifecycle
from handler_consul._locks import LockContext
from handler_consul._log import handler_log, log_envelope_failure, log_envelope_success
from handler_consul._operations import OPERATIONS
from handler_consul._parsing import parse_envelope
from handler_consul._results import EndpointResult, WatchResult
from handler_consul._retry import AttemptObserver
from handler_consul._runtime import Runtime
from handler_consul._services import Services, hold
from handler_consul._settings import BreakerSettings, ConsulSettings
from handler_consul._version import __version__

if TYPE_CHECKING:
    # Only for type checkers: at run time OpenTelemetry is imported (by _telemetry) only when
    # a provider is handed in, so a handler without one never loads it.
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from handler_consul._telemetry import Telemetry

__all__ = ["HandlerConsul"]

_NOT_INITIALIZED = "HandlerConsul is not initialized: call and await initialize() first"


class HandlerConsul(MixinAsyncCircuitBreaker):
    """The Consul effect handler an orchestrator runtime loads (entry point ``infra_handlers``)."""

    handler_type = "infra_handler"
    handler_category = "effect"

    def __init__(
        self,
        settings: ConsulSettings | None = None,
        *,
        clock: Clock = monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Sleep | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._base_settings = settings
        self._clock = clock
        self._lifecycle = Lifecycle(self, settings, clock=clock, rng=rng, sleep=sleep)
        self._init_circuit_breakers(BreakerSettings(), clock=clock, on_transition=_on_transition)
        self._telemetry: Telemetry | None = None
        # Round-robin positions, held leases and maintained registrations outlive a runtime.
        self._services = Services(clock, rng)
        self._calls = Calls(self._call, lambda: self._lifecycle.runtime, clock, rng)
        if tracer_provider is not None or meter_provider is not None:
            self.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    def __repr__(self) -> str:
        runtime = self._lifecycle.runtime
        state = "initialized" if runtime else "not initialized"
        target = runtime.settings.base_url if runtime else "-"
        return f"HandlerConsul({target}, {state})"

    # -- lifecycle ---------------------------------------------------------------------

    async def initialize(self, config: Mapping[str, Any] | None = None) -> None:
        """Build settings, client and pool, then check that Consul answers.

        The check is ``GET /v1/status/leader`` in the pool under the timeout: it needs no ACL
        permission and never blocks the event loop, even against an address that accepts
        connections and never replies. A second call replaces the old resources cleanly.
        """
        await self._lifecycle.initialize(config)
        self._services.attach(self._lifecycle.runtime)

    async def shutdown(self) -> None:
        """Refuse new envelopes, let in-flight ones finish within the grace period, then fail
        the rest with InfraUnavailableError. Never joins a thread; idempotent."""
        await self._lifecycle.shutdown()

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- telemetry -----------------------------------------------------------------------

    def instrument(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """Report spans and metrics to these OpenTelemetry providers (the ``otel`` extra).

        A span per envelope and the ``consul.client.*`` metrics of
        docs/patterns/observability.md. Replaces what an earlier call (or the constructor)
        set; with neither provider, telemetry is off again. Until it is called, the handler
        never imports OpenTelemetry.
        """
        old, self._telemetry = self._telemetry, None
        if old is not None:
            old.close()
        if tracer_provider is None and meter_provider is None:
            return
        from handler_consul._telemetry import Telemetry  # only now: it imports OpenTelemetry

        self._telemetry = Telemetry(
            runtime=lambda: self._lifecycle.runtime,
            breakers=lambda: self._cb_breakers.values(),
            base=self._base_settings,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )

    # -- execute -----------------------------------------------------------------------

    async def execute(self, envelope: Envelope | Mapping[str, Any]) -> HandlerResponse:
        """Run one envelope; return a HandlerResponse or raise an InfraError subclass."""
        started = self._clock()
        telemetry = self._telemetry
        if telemetry is not None:
            return await self._execute_observed(envelope, started, telemetry)
        try:
            return await self._execute(envelope, started, None)
        except InfraError as error:
            log_envelope_failure(error, self._clock() - started)
            raise

    async def _execute_observed(
        self, envelope: Envelope | Mapping[str, Any], started: float, telemetry: Telemetry
    ) -> HandlerResponse:
        """``execute()`` inside the envelope's span, with its outcome measured."""
        with telemetry.envelope(envelope) as observed:
            try:
                response = await self._execute(envelope, started, telemetry)
            except InfraError as error:
                seconds = self._clock() - started
                log_envelope_failure(error, seconds)
                observed.failed(error, seconds)
                raise
            observed.succeeded(response)
            return response

    async def _execute(
        self,
        envelope: Envelope | Mapping[str, Any],
        started: float,
        observer: AttemptObserver | None,
        closing_ok: bool = False,
    ) -> HandlerResponse:
        lifecycle = self._lifecycle
        runtime = lifecycle.runtime
        if runtime is not None:
            target, datacenter = runtime.target, runtime.settings.datacenter
            policy = runtime.check_policy
        else:
            settings = self._base_settings
            target = settings.breaker_name if settings else "consul.default"
            datacenter = settings.datacenter if settings else None
            policy = settings.check_policy if settings else DEFAULT_CHECK_POLICY
        operation, payload, env = parse_envelope(envelope, target, datacenter, policy)
        # An operation aimed at another datacenter (its payload's ``datacenter``, sent as
        # ``dc``) has that datacenter's breaker: dc2's outage never fast-fails dc1.
        # Read from the model's __dict__: getattr() on a pydantic model without the field
        # goes through its __getattr__ and an AttributeError, ~4 µs on every envelope.
        chosen = payload.__dict__.get("datacenter")
        if chosen and chosen != datacenter:
            datacenter, target = chosen, f"consul.{chosen}"
        correlation_id = env.correlation_id or new_correlation_id()
        fields = ContextFields(operation.name, correlation_id, target, datacenter)
        refusal = lifecycle.refusal()
        if closing_ok and lifecycle.state == "shutting_down":
            refusal = None  # shutdown's own cleanup (releasing locks) while the pools work
        if runtime is None or refusal is not None:
            raise InfraUnavailableError(
                refusal or _NOT_INITIALIZED,
                context=make_context(fields, InfraUnavailableError, attempts=0),
            )
        timeout = env.timeout_seconds or runtime.settings.timeout_seconds
        # The breaker is kept under the target's name; the lookup that may create one (or
        # fall back to the shared overflow breaker) runs only when it is not there.
        breaker = self._cb_breakers.get(target)
        if breaker is None:
            breaker = self.circuit_breaker(datacenter)
        busy = lifecycle.enter(get_running_loop())
        if busy is not None:
            raise InfraUnavailableError(
                busy, context=make_context(fields, InfraUnavailableError, attempts=0)
            )
        try:
            if operation.serve is None or not operation.served(payload):
                result, attempts = await runtime.attempts.run(
                    breaker, operation, payload, fields, started + timeout, observer
                )
            else:
                effects = EnvelopeEffects(
                    runtime, breaker, fields, started + timeout, observer, self._clock
                )
                served = await operation.serve(effects, payload)
                # serve functions build a fresh dict per call, as operations do: no copy then.
                result = served if type(served) is dict else dict(served)
                attempts = effects.attempts
        finally:
            lifecycle.leave()
        duration = self._clock() - started
        log_envelope_success(operation.name, correlation_id, attempts, duration)
        return HandlerResponse.trusted(
            operation.name,
            correlation_id,
            env.envelope_id,
            result,
            attempts,
            round(duration * 1000.0, 3),
        )

    # -- KV coordination -------------------------------------------------------------------

    def lock(
        self,
        key: str,
        *,
        ttl: str = "15s",
        wait: float = 30.0,
        lock_delay: str = "15s",
        value: str | bytes = "",
    ) -> LockContext:
        """``async with handler.lock(key) as lease``: a session holding ``key``, waited for up
        to ``wait`` s on a blocking query (then InfraLockTimeoutError). ``lease.fencing_token``
        strictly increases across holders; ``lease.lost`` is set when the lock can no longer
        be trusted. Released on exit, cancellation and shutdown() (kv_coordination.md)."""
        request = lock_request(key=key, ttl=ttl, wait=wait, lock_delay=lock_delay, value=value)
        return LockContext(self._calls, request)

    async def kv_update(self, key: str, fn: Updater, *, max_attempts: int = 10) -> str | bytes:
        """Read-modify-write with CAS: store ``fn(current)``, where ``current`` is the value
        (text, or bytes when not UTF-8) or None; retried on a CAS miss, InfraConflictError
        after ``max_attempts``. Returns the stored value."""
        return await kv_update(self._calls, key, fn, max_attempts=max_attempts)

    def watch(
        self,
        *,
        key: str | None = None,
        prefix: str | None = None,
        service: str | None = None,
        wait: float = 60.0,
    ) -> AsyncIterator[WatchResult]:
        """``async for change in handler.watch(key=...)``: the state now, then each change of
        the key, prefix or service (one of them), by blocking queries in the long-poll pool.
        Rides out transient failures; ends at shutdown()."""
        return watch(self._calls, {"key": key, "prefix": prefix, "service": service}, wait=wait)

    async def _call(
        self,
        operation: str,
        payload: Mapping[str, Any],
        *,
        timeout: float | None = None,
        closing: bool = False,
    ) -> dict[str, Any]:
        """One operation for the Python APIs above, exactly as execute() runs it; with
        ``closing``, also while shutdown releases what is held."""
        envelope: dict[str, Any] = {"operation": operation, "payload": payload}
        if timeout is not None:
            envelope["timeout_seconds"] = timeout
        started = self._clock()
        try:
            response = await self._execute(envelope, started, None, closing)
        except InfraError as error:
            log_envelope_failure(error, self._clock() - started)
            raise
        return response.result

    # -- introspection -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What orchestrators read from a handler: JSON-serialisable, no secrets."""
        lifecycle = self._lifecycle
        runtime = lifecycle.runtime
        settings = runtime.settings if runtime else self._base_settings
        return {
            "handler_type": self.handler_type,
            "handler_category": self.handler_category,
            "supported_operations": sorted(OPERATIONS),
            "timeout_seconds": settings.timeout_seconds if settings else None,
            "initialized": runtime is not None,
            "state": lifecycle.state,
            "version": __version__,
            "circuit_breakers": self.circuit_breaker_states(),
            "max_concurrent_operations": settings.max_concurrent_operations if settings else None,
            "io": settings.io if settings else None,
            "pool": runtime.pool.snapshot() if runtime else None,
            "long_polls": runtime.long_polls.snapshot() if runtime else None,
            "cache": runtime.cache.snapshot() if runtime else None,
            "retry_budget": runtime.attempts.budget.snapshot() if runtime else None,
            "in_flight": lifecycle.in_flight,
            "maintained": self._services.maintenance.snapshot(),
            "settings": settings.public_dict() if settings else None,
        }

    def lease(
        self,
        service: str,
        *,
        strategy: str = "round_robin",
        fallback: str | None = None,
        timeout_seconds: float | None = None,
        **filters: Any,
    ) -> AbstractAsyncContextManager[EndpointResult]:
        """``async with handler.lease(service) as endpoint``: one healthy instance, counted
        as held until the block ends (what ``least_connections`` reads). ``filters`` are
        ``consul.discover``'s; see :func:`handler_consul._services.hold`."""
        options = {"strategy": strategy, "fallback": fallback, "timeout_seconds": timeout_seconds}
        return hold(self.execute, self._services.balancer, self._lifecycle, self._base_settings,
                    service, options, filters)  # fmt: skip

    async def health_check(self) -> dict[str, Any]:
        """Ask Consul for its leader (no ACL needed); report latency and breaker state.

        Runs in the pool like any call, but outside the breaker: it reports the breaker's
        state rather than being refused by it.
        """
        runtime: Runtime | None = self._lifecycle.runtime
        if runtime is None:
            return {
                "healthy": False,
                "initialized": False,
                "latency_ms": None,
                "leader": None,
                "breaker": None,
                "error": _NOT_INITIALIZED,
            }
        breaker = self.circuit_breaker(runtime.settings.datacenter)
        fields = ContextFields("health_check", None, breaker.name, runtime.settings.datacenter)
        started = self._clock()
        leader, error = await runtime.probe_leader(fields)
        latency_ms = round((self._clock() - started) * 1000.0, 3)
        if error is not None:
            return {
                "healthy": False,
                "initialized": True,
                "latency_ms": latency_ms,
                "leader": None,
                "breaker": breaker.state.value,
                "error": error.message,
                "error_type": type(error).__name__,
            }
        return {
            "healthy": bool(leader) and breaker.state is not BreakerState.OPEN,
            "initialized": True,
            "latency_ms": latency_ms,
            "leader": leader or None,
            "breaker": breaker.state.value,
        }


def _on_transition(name: str, old: BreakerState, new: BreakerState) -> None:
    level = 30 if new is BreakerState.OPEN else 20  # WARNING when it opens, else INFO
    handler_log.log(
        level,
        "circuit breaker %s: %s -> %s",
        name,
        old.value,
        new.value,
        extra={"target": name, "breaker_from": old.value, "breaker_to": new.value},
    )
