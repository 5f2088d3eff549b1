"""HandlerConsul: lifecycle and ``execute()``.

One envelope's path: :meth:`HandlerConsul.execute` validates it against the operation's
payload model (nothing reaches Consul otherwise), then for each attempt asks the breaker for
a permit, runs the operation in the bounded pool under what is left of the deadline, and
reports the outcome to the permit. Failed attempts are translated in
:mod:`handler_consul.translate` and retried by the rules in docs/patterns/circuit_breaker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Self, cast
from uuid import UUID

from handler_consul._version import __version__
from handler_consul.breaker import BreakerConfig, BreakerState, MixinAsyncCircuitBreaker
from handler_consul.client import ConsulClient, build_client
from handler_consul.clock import Clock, monotonic
from handler_consul.envelope import Envelope, HandlerResponse
from handler_consul.errors import (
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
)
from handler_consul.operations import OPERATIONS, Operation
from handler_consul.parsing import parse_envelope
from handler_consul.pool import BoundedThreadPool, PoolClosed
from handler_consul.retry import RetryBudget, RetryPolicy, sleep_budget
from handler_consul.settings import ConsulSettings, load_settings
from handler_consul.translate import ContextFields, make_context, translate

__all__ = ["HandlerConsul"]

logger = logging.getLogger("handler_consul.handler")
_envelope_log = logging.getLogger("handler_consul.envelope")

_NOT_INITIALIZED = "HandlerConsul is not initialized: call and await initialize() first"
_SHUT_DOWN = "HandlerConsul is shut down: call initialize() again to reuse it"
_SHUTTING_DOWN = "HandlerConsul is shutting down and accepts no new envelopes"
_UNCOUNTED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


@dataclass(slots=True)
class _Runtime:
    """Everything initialize() builds; replaced as a whole on re-initialize."""

    settings: ConsulSettings
    client: ConsulClient
    pool: BoundedThreadPool
    policy: RetryPolicy
    budget: RetryBudget
    # Kept out of repr: traceback renderers (Sentry, --showlocals) repr every frame local.
    token: str | None = field(repr=False)
    target: str = ""  # the breaker name, computed once rather than per envelope


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
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._base_settings = settings
        self._clock = clock
        self._rng = rng
        self._injected_sleep = sleep
        self._runtime: _Runtime | None = None
        self._closing = False
        self._was_shut_down = False
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._sleepers: set[asyncio.Future[None]] = set()
        self._init_circuit_breakers(BreakerConfig(), clock=clock, on_transition=self._on_transition)

    def __repr__(self) -> str:
        state = "initialized" if self._runtime else "not initialized"
        target = self._runtime.settings.base_url if self._runtime else "-"
        return f"HandlerConsul({target}, {state})"

    # -- lifecycle ---------------------------------------------------------------------

    async def initialize(self, config: Mapping[str, Any] | None = None) -> None:
        """Build settings, client and pool, then check that Consul answers.

        The check is ``GET /v1/status/leader`` in the pool under the timeout: it needs no ACL
        permission and never blocks the event loop, even against an address that accepts
        connections and never replies. A second call replaces the old resources cleanly.
        """
        settings = load_settings(self._base_settings, config)
        runtime = self._build_runtime(settings)
        fields = ContextFields("initialize", None, settings.breaker_name, settings.datacenter)
        try:
            leader, error = await self._probe_leader(runtime, fields)
        except _UNCOUNTED:
            self._dispose(runtime)
            raise
        if error is not None:
            self._dispose(runtime)
            raise error
        previous = self._runtime
        self._init_circuit_breakers(
            _breaker_config(settings), clock=self._clock, on_transition=self._on_transition
        )
        # Created now, not on first use, so describe() shows it from the start.
        self.circuit_breaker(settings.datacenter)
        self._runtime = runtime
        self._closing = False
        self._was_shut_down = False
        if previous is not None:
            # Envelopes admitted before hold a reference to the old runtime and finish on it.
            previous.pool.close()
            previous.client.http.close()
        if not leader:
            logger.warning(
                "Consul at %s answered but reports no cluster leader",
                settings.base_url,
                extra={"target": settings.breaker_name},
            )
        logger.info(
            "initialized: %s, pool %d, breaker %s",
            settings.base_url,
            settings.max_concurrent_operations,
            settings.breaker_name,
            extra={"target": settings.breaker_name, "leader": leader},
        )

    async def _probe_leader(
        self, runtime: _Runtime, fields: ContextFields
    ) -> tuple[str, InfraError | None]:
        """GET /v1/status/leader in the pool: the leader's address, or the translated error."""
        timeout = runtime.settings.timeout_seconds
        try:
            leader: str = await runtime.pool.run(
                _call_leader, runtime.client, timeout, timeout=timeout
            )
        except _UNCOUNTED:
            raise
        except BaseException as exc:  # translated: the caller decides whether to raise it
            return "", translate(exc, fields, attempts=1, token=runtime.token)
        return leader, None

    def _build_runtime(self, settings: ConsulSettings) -> _Runtime:
        client = build_client(settings)
        pool = BoundedThreadPool(
            settings.max_concurrent_operations,
            max_wait_seconds=settings.effective_max_wait_seconds,
            max_queued=settings.max_queued_operations,
        )
        retry = settings.retry
        policy = RetryPolicy(
            max_attempts=retry.max_attempts,
            initial_delay_seconds=retry.initial_delay_seconds,
            max_delay_seconds=retry.max_delay_seconds,
            exponential_base=retry.exponential_base,
        )
        budget = RetryBudget(
            ratio=retry.budget_ratio,
            min_retries_per_second=retry.budget_min_per_second,
            clock=self._clock,
        )
        token = settings.token.get_secret_value() if settings.token is not None else None
        return _Runtime(settings, client, pool, policy, budget, token, settings.breaker_name)

    @staticmethod
    def _dispose(runtime: _Runtime) -> None:
        runtime.pool.close()
        runtime.client.http.close()

    async def shutdown(self) -> None:
        """Refuse new envelopes, let in-flight ones finish within the grace period, then fail
        the rest with InfraUnavailableError. Never joins a thread; idempotent."""
        runtime = self._runtime
        if runtime is None or self._closing:
            return
        self._closing = True
        grace = runtime.settings.shutdown_grace_seconds
        if self._in_flight:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        if self._in_flight:
            failed = runtime.pool.abandon(_shut_down_marker)
            for sleeper in list(self._sleepers):
                if not sleeper.done():
                    sleeper.set_exception(_shut_down_marker())
                    failed += 1
            logger.warning("shutdown: grace period over, failed %d in-flight envelopes", failed)
            # Let the failed envelopes observe their error before resources go away.
            await asyncio.sleep(0)
        self._dispose(runtime)
        self._runtime = None
        self._closing = False
        self._was_shut_down = True
        self._drained = None
        logger.info("shut down", extra={"target": runtime.settings.breaker_name})

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

    # -- execute -----------------------------------------------------------------------

    async def execute(self, envelope: Envelope | Mapping[str, Any]) -> HandlerResponse:
        """Run one envelope; return a HandlerResponse or raise an InfraError subclass."""
        started = self._clock()
        try:
            return await self._execute(envelope, started)
        except InfraError as error:
            if _envelope_log.isEnabledFor(logging.DEBUG):
                self._log_outcome(error, started)
            raise

    def _log_outcome(self, error: InfraError, started: float) -> None:
        """One DEBUG record per failed envelope, with the fields orchestrators filter on."""
        context = error.context
        _envelope_log.debug(
            "%s failed: %s",
            context.operation or "envelope",
            type(error).__name__,
            extra={
                "correlation_id": str(context.correlation_id) if context.correlation_id else None,
                "operation": context.operation,
                "attempt": context.attempts,
                "duration_ms": round((self._clock() - started) * 1000.0, 3),
                "outcome": type(error).__name__,
                "field": context.field,
            },
        )

    async def _execute(
        self, envelope: Envelope | Mapping[str, Any], started: float
    ) -> HandlerResponse:
        runtime = self._runtime
        if runtime is not None:
            target, datacenter = runtime.target, runtime.settings.datacenter
        else:
            target, datacenter = self._target(), self._datacenter()
        operation, payload, env = parse_envelope(envelope, target, datacenter)
        correlation_id = env.correlation_id or _new_correlation_id()
        fields = ContextFields(operation.name, correlation_id, target, datacenter)
        if runtime is None or self._closing:
            message = (
                _SHUTTING_DOWN
                if self._closing
                else _SHUT_DOWN
                if self._was_shut_down
                else _NOT_INITIALIZED
            )
            raise InfraUnavailableError(
                message, context=make_context(fields, InfraUnavailableError, attempts=0)
            )
        timeout = env.timeout_seconds or runtime.settings.timeout_seconds
        self._in_flight += 1
        try:
            result, attempts = await self._attempts(
                runtime, operation, payload, fields, started + timeout
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._drained is not None:
                self._drained.set()
        duration_ms = (self._clock() - started) * 1000.0
        if _envelope_log.isEnabledFor(logging.DEBUG):
            _envelope_log.debug(
                "%s succeeded",
                operation.name,
                extra={
                    "correlation_id": str(correlation_id),
                    "operation": operation.name,
                    "attempt": attempts,
                    "duration_ms": round(duration_ms, 3),
                    "outcome": "success",
                },
            )
        return HandlerResponse.trusted(
            operation.name, correlation_id, env.envelope_id, result, attempts, round(duration_ms, 3)
        )

    async def _attempts(
        self,
        runtime: _Runtime,
        operation: Operation,
        payload: Any,
        fields: ContextFields,
        deadline: float,
    ) -> tuple[dict[str, Any], int]:
        breaker = self.circuit_breaker(runtime.settings.datacenter)
        policy = runtime.policy
        attempt = 0
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise InfraTimeoutError(
                    f"{operation.name}: envelope deadline passed after {attempt} attempt(s)",
                    context=make_context(fields, InfraTimeoutError, attempts=attempt),
                )
            permit = breaker.try_acquire()
            if permit is None:
                retry_after = breaker.retry_after_seconds()
                # Item 18: an open breaker is waited out only on a retry, and only when its
                # wait fits inside the deadline; a first attempt fails fast.
                wait = sleep_budget(remaining, retry_after) if attempt else None
                if wait is None or attempt >= policy.max_attempts or not math.isfinite(retry_after):
                    raise InfraUnavailableError(
                        f"{operation.name}: circuit breaker {breaker.name} is open",
                        context=partial(make_context, fields, InfraUnavailableError, attempt),
                        retry_after_seconds=retry_after if math.isfinite(retry_after) else None,
                    )
                await self._sleep(wait, fields, attempt, runtime)
                continue
            if attempt == 0:
                # Only envelopes that reach Consul earn retry budget: an outage's fast-failed
                # traffic must not pay for the retries that follow it.
                runtime.budget.record_call()
            attempt += 1
            call_started = self._clock()
            error: InfraError | None = None
            try:
                result = await runtime.pool.run(
                    _call_operation,
                    runtime.client,
                    operation,
                    payload,
                    remaining,
                    timeout=remaining,
                )
            except _UNCOUNTED:
                permit.ignore()
                raise
            except BaseException as exc:  # every other failure is translated, below
                error = translate(exc, fields, attempts=attempt, token=runtime.token)
                if error.counts_as_failure:
                    permit.failure()
                else:
                    permit.ignore()
            else:
                permit.success(self._clock() - call_started)
                # Operations build a fresh dict per call (their TypedDicts): no copy needed.
                return cast(dict[str, Any], result), attempt
            delay = self._retry_delay(runtime, operation, payload, error, attempt, deadline)
            self._log_failure(fields, error, attempt, call_started, retrying=delay is not None)
            if delay is None:
                raise error
            await self._sleep(delay, fields, attempt, runtime)

    def _retry_delay(
        self,
        runtime: _Runtime,
        operation: Operation,
        payload: Any,
        error: InfraError,
        attempt: int,
        deadline: float,
    ) -> float | None:
        """The backoff before the next attempt, or None when this error ends the envelope."""
        if not error.retryable or attempt >= runtime.policy.max_attempts:
            return None
        if error.outcome_unknown and not operation.idempotent(payload):
            return None
        delay = runtime.policy.backoff_seconds(attempt, self._rng)
        wait = sleep_budget(deadline - self._clock(), delay)
        if wait is None or not runtime.budget.try_spend():
            return None
        return wait

    async def _sleep(
        self, seconds: float, fields: ContextFields, attempt: int, runtime: _Runtime
    ) -> None:
        """Back off between attempts; a shutdown ends the wait with this envelope's context."""
        try:
            await self._backoff(seconds)
        except PoolClosed as exc:
            error = translate(exc, fields, attempts=attempt, token=runtime.token)
        else:
            return
        raise error

    async def _backoff(self, seconds: float) -> None:
        if self._injected_sleep is not None:
            await self._injected_sleep(seconds)
            return
        if self._closing:
            raise _shut_down_marker()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _resolve, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            handle.cancel()
            self._sleepers.discard(future)

    # -- parsing -------------------------------------------------------------------------

    def _target(self) -> str:
        """The breaker name errors report as their target, even before initialize()."""
        settings = self._runtime.settings if self._runtime else self._base_settings
        return settings.breaker_name if settings is not None else "consul.default"

    def _datacenter(self) -> str | None:
        settings = self._runtime.settings if self._runtime else self._base_settings
        return settings.datacenter if settings is not None else None

    # -- introspection -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What orchestrators read from a handler: JSON-serialisable, no secrets."""
        runtime = self._runtime
        settings = runtime.settings if runtime else (self._base_settings or None)
        info: dict[str, Any] = {
            "handler_type": self.handler_type,
            "handler_category": self.handler_category,
            "supported_operations": sorted(OPERATIONS),
            "timeout_seconds": settings.timeout_seconds if settings else None,
            "initialized": runtime is not None,
            "version": __version__,
            "circuit_breakers": _json_ready(self.circuit_breaker_states()),
            "max_concurrent_operations": settings.max_concurrent_operations if settings else None,
            "pool": runtime.pool.snapshot() if runtime else None,
            "retry_budget": runtime.budget.snapshot() if runtime else None,
            "in_flight": self._in_flight,
            "settings": settings.public_dict() if settings else None,
        }
        return info

    async def health_check(self) -> dict[str, Any]:
        """Ask Consul for its leader (no ACL needed); report latency and breaker state.

        Runs in the pool like any call, but outside the breaker: it reports the breaker's
        state rather than being refused by it.
        """
        runtime = self._runtime
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
        leader, error = await self._probe_leader(runtime, fields)
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

    # -- logging -------------------------------------------------------------------------

    def _on_transition(self, name: str, old: BreakerState, new: BreakerState) -> None:
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        logger.log(
            level,
            "circuit breaker %s: %s -> %s",
            name,
            old.value,
            new.value,
            extra={"target": name, "breaker_from": old.value, "breaker_to": new.value},
        )

    def _log_failure(
        self,
        fields: ContextFields,
        error: InfraError,
        attempt: int,
        started: float,
        *,
        retrying: bool,
    ) -> None:
        if _envelope_log.isEnabledFor(logging.DEBUG):
            _envelope_log.debug(
                "%s attempt %d failed: %s%s",
                fields.operation,
                attempt,
                type(error).__name__,
                " (retrying)" if retrying else "",
                extra={
                    "correlation_id": str(fields.correlation_id),
                    "operation": fields.operation,
                    "attempt": attempt,
                    "duration_ms": round((self._clock() - started) * 1000.0, 3),
                    "outcome": type(error).__name__,
                    "retrying": retrying,
                },
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


def _call_operation(
    client: ConsulClient, operation: Operation, payload: Any, timeout: float
) -> Mapping[str, Any]:
    """Runs in a worker thread: bound this thread's requests by the time that is left."""
    client.http.set_request_timeout(timeout)
    return operation.run(client, payload)


def _call_leader(client: ConsulClient, timeout: float) -> str:
    client.http.set_request_timeout(timeout)
    leader = client.status.leader()
    return leader if isinstance(leader, str) else ""


def _shut_down_marker() -> PoolClosed:
    """What shutdown posts to unfinished envelopes; translate() adds each one's context."""
    return PoolClosed("shut down before this envelope finished")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _breaker_config(settings: ConsulSettings) -> BreakerConfig:
    b = settings.breaker
    return BreakerConfig(
        enabled=b.enabled,
        failure_threshold=b.failure_threshold,
        reset_timeout_seconds=b.reset_timeout_seconds,
        half_open_max_calls=b.half_open_max_calls,
        slow_call_duration_seconds=b.slow_call_duration_seconds,
        reset_timeout_multiplier=b.reset_timeout_multiplier,
        max_reset_timeout_seconds=b.max_reset_timeout_seconds,
        # Item 7: a probe outstanding past the request timeout has failed.
        probe_timeout_seconds=settings.timeout_seconds,
    )


def _json_ready(value: Any) -> Any:
    """Replace non-finite floats (a forced-open breaker's retry_after) with None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value
