"""HandlerConsul: lifecycle, ``execute()``, ``describe()`` and ``health_check()``.

One envelope's path goes down and only down: :meth:`HandlerConsul.execute` validates it
(:mod:`._parsing`; nothing reaches Consul otherwise), then :class:`._retry.Attempts` runs its
attempts (breaker permit, :mod:`._pool`, :mod:`._operations`, :mod:`._client`,
:mod:`._transport`) and translates failures at one boundary (:mod:`._translate`).
docs/patterns/architecture.md draws the whole map.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from uuid import UUID

from handler_consul._balance import Balancer, Strategy
from handler_consul._breaker import BreakerState, MixinAsyncCircuitBreaker
from handler_consul._clock import Clock, Sleep, monotonic
from handler_consul._effects import EnvelopeEffects
from handler_consul._envelope import Envelope, HandlerResponse
from handler_consul._errors import (
    ContextFields,
    InfraError,
    InfraUnavailableError,
    make_context,
)
from handler_consul._lifecycle import Lifecycle
from handler_consul._log import handler_log, log_envelope_failure, log_envelope_success
from handler_consul._maintain import Maintenance
from handler_consul._operations import OPERATIONS
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
from handler_consul._parsing import parse_envelope, parse_options
from handler_consul._results import EndpointResult
from handler_consul._retry import AttemptObserver
from handler_consul._runtime import Runtime
from handler_consul._settings import BreakerSettings, ConsulSettings
from handler_consul._validation import DEFAULT_CHECK_POLICY
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
        # Both outlive a re-initialize: round-robin positions and held leases are the
        # process's, and a maintained registration stays maintained on the new runtime.
        self._balancer = Balancer(rng)
        self._maintenance = Maintenance(clock)
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
        runtime = self._lifecycle.runtime
        if runtime is not None and MAINTENANCE not in runtime.state:
            # The new runtime serves envelopes from here on (no await since it was
            # installed): give it the process-wide balancer and the maintained services.
            runtime.state[BALANCER] = self._balancer
            runtime.state[MAINTENANCE] = self._maintenance
            self._maintenance.attach(
                runtime.attempts,
                runtime.long_polls,
                runtime.settings,
                runtime.target,
                runtime.add_closer,
            )

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
        chosen = getattr(payload, "datacenter", None)
        if chosen and chosen != datacenter:
            datacenter, target = chosen, f"consul.{chosen}"
        correlation_id = env.correlation_id or _new_correlation_id()
        fields = ContextFields(operation.name, correlation_id, target, datacenter)
        refusal = lifecycle.refusal()
        if runtime is None or refusal is not None:
            raise InfraUnavailableError(
                refusal or _NOT_INITIALIZED,
                context=make_context(fields, InfraUnavailableError, attempts=0),
            )
        timeout = env.timeout_seconds or runtime.settings.timeout_seconds
        breaker = self.circuit_breaker(datacenter)
        with lifecycle.admitted():
            if operation.serve is None:
                result, attempts = await runtime.attempts.run(
                    breaker, operation, payload, fields, started + timeout, observer
                )
            else:
                effects = EnvelopeEffects(
                    runtime, breaker, fields, started + timeout, observer, self._clock
                )
                result = dict(await operation.serve(effects, payload))
                attempts = effects.attempts
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
            "pool": runtime.pool.snapshot() if runtime else None,
            "long_polls": runtime.long_polls.snapshot() if runtime else None,
            "cache": runtime.cache.snapshot() if runtime else None,
            "retry_budget": runtime.attempts.budget.snapshot() if runtime else None,
            "in_flight": lifecycle.in_flight,
            "maintained": self._maintenance.snapshot(),
            "settings": settings.public_dict() if settings else None,
        }

    # -- endpoints held for a while -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self,
        service: str,
        *,
        strategy: Strategy = "round_robin",
        fallback: str | None = None,
        timeout_seconds: float | None = None,
        **filters: Any,
    ) -> AsyncIterator[EndpointResult]:
        """Hold one healthy instance of ``service`` for the ``async with`` block.

        ``filters`` are ``consul.discover``'s (``tags``, ``passing_only``, ``datacenter``,
        ``near``, ``node_meta``, ``cache``), read through :meth:`execute` like any envelope.
        ``strategy`` is ``consul.endpoint``'s, or ``least_connections``: the instance with
        the fewest leases held in this process. The lease counts until the block ends. With
        no healthy instance, or Consul unreachable and nothing fresh in the cache, the
        ``fallback`` (``"host:port"``) is yielded, else the error is raised.
        """
        runtime = self._lifecycle.runtime
        settings = runtime.settings if runtime else self._base_settings
        target = settings.breaker_name if settings else "consul.default"
        datacenter = settings.datacenter if settings else None
        options = parse_options(
            LeaseOptions,
            {"strategy": strategy, "fallback": fallback},
            "consul.endpoint",
            target,
            datacenter,
        )
        envelope: dict[str, Any] = {
            "operation": "consul.discover",
            "payload": {"service": service, **filters},
        }
        if timeout_seconds is not None:
            envelope["timeout_seconds"] = timeout_seconds
        try:
            found = (await self.execute(envelope)).as_discover()
        except OUTAGES:
            if options.fallback is None:
                raise
            yield fallback_result(service, options.fallback)
            return
        query = DiscoverPayload.model_validate(envelope["payload"]).query_key()
        picked = self._balancer.pick(query, found["instances"], options.strategy)
        if picked is None:
            if options.fallback is None:
                raise InfraUnavailableError(
                    f"consul.endpoint: {no_healthy_instance(service)}",
                    context=make_context(
                        ContextFields("consul.endpoint", None, target, datacenter),
                        InfraUnavailableError,
                        attempts=0,
                    ),
                )
            yield fallback_result(service, options.fallback)
            return
        held = self._balancer.acquire(picked)
        try:
            yield as_endpoint(service, picked, found)
        finally:
            self._balancer.release(held)

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


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def _new_correlation_id() -> UUID:
    """A random version-4 UUID without a syscall and without ``UUID.__init__``.

    ``uuid.uuid4()`` reads os.urandom, which releases the GIL; getting it back behind busy
    worker threads cost ~100 µs per envelope in profiles. Correlation IDs need uniqueness,
    not secrecy, so the process-wide Mersenne Twister is enough. The version and variant
    bits are set exactly as ``UUID(int=..., version=4)`` sets them (tests compare the two).
    """
    value = object.__new__(UUID)
    object.__setattr__(value, "int", (random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    object.__setattr__(value, "is_safe", uuid.SafeUUID.unknown)
    return value
