"""OpenTelemetry spans and metrics: the optional ``otel`` extra.

Imported only when an application hands the handler a provider
(``HandlerConsul(tracer_provider=..., meter_provider=...)`` or ``handler.instrument(...)``).
A handler given neither never imports this module nor OpenTelemetry, and pays one ``is None``
test per envelope. Only the OpenTelemetry API is used; the application brings the SDK.

Per envelope: one CLIENT span named after the operation, current while the envelope runs (so
its DEBUG records can carry the trace), and the ``consul.client.envelopes`` counter and the
``consul.client.operation.duration`` histogram. Per retry: a ``retry`` span event and the
``consul.client.retries`` counter; a retry the budget refused adds to
``consul.client.retry_budget.exhausted``. Observed on collection: the breaker state, the
pool's busy, waiting and limit, and the retry budget's balance. Names follow OpenTelemetry's
semantic conventions where one exists (``error.type``, ``server.address``, ``server.port``,
``http.response.status_code``, a duration histogram in seconds); the rest are ``consul.*``.
docs/patterns/observability.md lists every name.

Observable callbacks may run on the SDK's export thread, so they only read: plain counters,
and the breaker's state as it stands (a breaker past its reset timeout shows OPEN until the
next caller moves it, as in ``describe()``), never anything that would change it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from handler_consul._breaker import BreakerState, CircuitBreaker
from handler_consul._envelope import Envelope, HandlerResponse
from handler_consul._errors import ContextFields, InfraError
from handler_consul._operations import OPERATIONS
from handler_consul._runtime import Runtime
from handler_consul._settings import ConsulSettings
from handler_consul._version import __version__

__all__ = ["SCOPE", "EnvelopeObservation", "Telemetry"]

SCOPE = "handler_consul"  # the instrumentation scope of the tracer and the meter

# Attributes. OpenTelemetry's own where a semantic convention exists.
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
HTTP_STATUS = "http.response.status_code"
OPERATION = "consul.operation"
OUTCOME = "consul.outcome"  # success | failure | cancelled
CORRELATION_ID = "consul.correlation_id"
ENVELOPE_ID = "consul.envelope_id"
ATTEMPTS = "consul.attempts"
DATACENTER = "consul.datacenter"
REQUEST_SENT = "consul.request_sent"
OUTCOME_UNKNOWN = "consul.outcome_unknown"
ATTEMPT = "consul.attempt"
RETRY_DELAY = "consul.retry.delay_seconds"
BREAKER_NAME = "consul.circuit_breaker.name"
BREAKER_STATE = "consul.circuit_breaker.state"

# Unknown operation names are the caller's free text: kept out of span names and attributes.
OTHER_OPERATION = "_OTHER"
UNKNOWN_SPAN_NAME = "consul.envelope"
# The boundaries the semantic conventions advise for client durations, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

Attributes = dict[str, Any]


class Telemetry:
    """One handler's tracer and its share of the instruments of a meter provider.

    ``runtime`` and ``breakers`` read the handler's current runtime and breakers (both are
    replaced by a re-initialize); ``base`` is the settings it was built with, if any, for the
    server attributes of envelopes refused before an initialize.
    """

    __slots__ = ("__weakref__", "_base", "_breakers", "_instruments", "_runtime", "_tracer")

    def __init__(
        self,
        *,
        runtime: Callable[[], Runtime | None],
        breakers: Callable[[], Iterable[CircuitBreaker]],
        base: ConsulSettings | None,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        self._runtime = runtime
        self._breakers = breakers
        self._base = base
        self._tracer = (
            tracer_provider.get_tracer(SCOPE, __version__) if tracer_provider is not None else None
        )
        self._instruments = _instruments_for(meter_provider) if meter_provider is not None else None
        if self._instruments is not None:
            self._instruments.add(self)

    def close(self) -> None:
        """Stop reporting this handler's gauges (its counters keep what they counted)."""
        if self._instruments is not None:
            self._instruments.discard(self)

    def server(self) -> Attributes:
        """``server.address``, ``server.port`` and ``consul.datacenter`` of the Consul the
        handler talks to now (nothing when it has neither run nor been given settings)."""
        runtime = self._runtime()
        settings = runtime.settings if runtime is not None else self._base
        if settings is None:
            return {}
        attributes: Attributes = {SERVER_ADDRESS: settings.host, SERVER_PORT: settings.port}
        if settings.datacenter:
            attributes[DATACENTER] = settings.datacenter
        return attributes

    # -- per envelope --------------------------------------------------------------------

    def envelope(self, envelope: Envelope | Mapping[str, Any]) -> EnvelopeObservation:
        """Observe one envelope: ``with telemetry.envelope(e) as seen: ... seen.succeeded()``."""
        return EnvelopeObservation(self, _operation_of(envelope))

    # -- per attempt (handler_consul._retry.AttemptObserver) -------------------------------

    def retrying(
        self, fields: ContextFields, error: InfraError, attempt: int, delay: float
    ) -> None:
        error_type = type(error).__qualname__
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "retry",
                {ATTEMPT: attempt, ERROR_TYPE: error_type, RETRY_DELAY: round(delay, 6)},
            )
        if self._instruments is not None:
            attributes = {OPERATION: _known(fields.operation), ERROR_TYPE: error_type}
            self._instruments.retries.add(1, {**attributes, **self.server()})

    def budget_exhausted(self, fields: ContextFields, error: InfraError, attempt: int) -> None:
        error_type = type(error).__qualname__
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("retry_budget_exhausted", {ATTEMPT: attempt, ERROR_TYPE: error_type})
        if self._instruments is not None:
            attributes = {OPERATION: _known(fields.operation), ERROR_TYPE: error_type}
            self._instruments.budget_exhausted.add(1, {**attributes, **self.server()})

    # -- observed on collection ----------------------------------------------------------

    def observe(self) -> _Observed | None:
        """What the gauges report for this handler now, or None when it is not running."""
        runtime = self._runtime()
        if runtime is None:
            return None
        server = self.server()
        pool = runtime.pool
        # tuple() of a dict view runs in C without releasing the GIL: safe against an insert
        # on the event loop while an export thread reads.
        breakers = tuple(self._breakers())
        return _Observed(
            server,
            pool.busy,
            pool.waiting,
            pool.max_workers,
            runtime.attempts.budget.peek_balance(),
            [(b.name, _state_now(b)) for b in breakers],
        )


class EnvelopeObservation:
    """The span and the measurements of one envelope; a context manager.

    Entering starts the span and makes it current; :meth:`succeeded` or :meth:`failed`
    records the outcome; leaving ends the span, and an exception that neither saw (a
    cancellation) is recorded as ``cancelled`` or ``failure``.
    """

    __slots__ = ("_done", "_operation", "_server", "_span", "_telemetry", "_token")

    def __init__(self, telemetry: Telemetry, operation: str | None) -> None:
        self._telemetry = telemetry
        self._operation = operation
        self._server = telemetry.server()
        self._span: Span | None = None
        self._token: Token[Context] | None = None
        self._done = False

    def __enter__(self) -> EnvelopeObservation:
        tracer = self._telemetry._tracer
        if tracer is not None:
            self._span = tracer.start_span(
                self._operation or UNKNOWN_SPAN_NAME,
                kind=SpanKind.CLIENT,
                attributes={OPERATION: self._operation or OTHER_OPERATION, **self._server},
                record_exception=False,
                set_status_on_exception=False,
            )
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        if exc is not None and not self._done:
            cancelled = isinstance(exc, asyncio.CancelledError)
            self._finish(
                "cancelled" if cancelled else "failure",
                None,
                {ERROR_TYPE: type(exc).__qualname__},
                {},
                description=type(exc).__qualname__,
            )
        if self._span is not None:
            self._span.end()

    def succeeded(self, response: HandlerResponse) -> None:
        span: Attributes = {
            CORRELATION_ID: str(response.correlation_id),
            ATTEMPTS: response.attempts,
        }
        if response.envelope_id is not None:
            span[ENVELOPE_ID] = str(response.envelope_id)
        # The duration the response reports, so the histogram and the response agree.
        self._finish("success", response.duration_ms / 1000.0, {}, span)

    def failed(self, error: InfraError, seconds: float) -> None:
        context = error.context
        shared: Attributes = {ERROR_TYPE: type(error).__qualname__}
        if context.status_code is not None:
            shared[HTTP_STATUS] = context.status_code
        span: Attributes = {
            ATTEMPTS: context.attempts,
            REQUEST_SENT: context.request_sent,
            OUTCOME_UNKNOWN: context.outcome_unknown,
        }
        if context.correlation_id is not None:
            span[CORRELATION_ID] = str(context.correlation_id)
        self._finish("failure", seconds, shared, span, description=error.message)

    def _finish(
        self,
        outcome: str,
        seconds: float | None,
        shared: Attributes,
        span_only: Attributes,
        *,
        description: str | None = None,
    ) -> None:
        """Record the outcome once: on the span (everything) and in the instruments (only
        the attributes of bounded cardinality: no IDs)."""
        self._done = True
        if self._span is not None:
            self._span.set_attributes({OUTCOME: outcome, **shared, **span_only})
            if outcome != "success":
                self._span.set_status(Status(StatusCode.ERROR, description))
        instruments = self._telemetry._instruments
        if instruments is not None:
            attributes = {
                OPERATION: self._operation or OTHER_OPERATION,
                OUTCOME: outcome,
                **shared,
                **self._server,
            }
            instruments.envelopes.add(1, attributes)
            if seconds is not None:
                instruments.duration.record(seconds, attributes)


@dataclass(frozen=True, slots=True)
class _Observed:
    server: Attributes
    busy: int
    waiting: int
    limit: int
    balance: float
    breakers: list[tuple[str, BreakerState]]


class _Instruments:
    """The instruments of one meter provider, shared by every handler that reports to it.

    A meter returns the instrument registered first under a name, callbacks included, so a
    second handler cannot bring its own observable gauges: they iterate over every handler
    registered here instead.
    """

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._sources: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        self.envelopes = meter.create_counter(
            "consul.client.envelopes",
            unit="{envelope}",
            description="Envelopes finished, by operation and outcome.",
        )
        self.duration = meter.create_histogram(
            "consul.client.operation.duration",
            unit="s",
            description="Time from execute() to its response or error, retries included.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.retries = meter.create_counter(
            "consul.client.retries",
            unit="{retry}",
            description="Retries made, by operation and the error that caused them.",
        )
        self.budget_exhausted = meter.create_counter(
            "consul.client.retry_budget.exhausted",
            unit="{retry}",
            description="Retries not made because the retry budget was spent.",
        )
        gauges: list[tuple[str, Callable[[CallbackOptions], Iterable[Observation]], str, str]] = [
            ("retry_budget.balance", self._balance, "{retry}", "Retries the budget allows now."),
            (
                "circuit_breaker.state",
                self._breaker_states,
                "1",
                "1 for the state each circuit breaker is in, 0 for the others.",
            ),
            ("pool.busy", self._busy, "{worker}", "Worker threads running a call."),
            ("pool.waiting", self._waiting, "{envelope}", "Calls queued for a worker thread."),
            ("pool.limit", self._limit, "{worker}", "Worker threads the pool may run."),
        ]
        for name, callback, unit, description in gauges:
            meter.create_observable_gauge(
                f"consul.client.{name}", [callback], unit=unit, description=description
            )

    def add(self, source: Telemetry) -> None:
        with self._lock:
            self._sources.add(source)

    def discard(self, source: Telemetry) -> None:
        with self._lock:
            self._sources.discard(source)

    def _observed(self) -> list[_Observed]:
        with self._lock:
            sources = list(self._sources)
        return [seen for source in sources if (seen := source.observe()) is not None]

    def _summed(self, value: Callable[[_Observed], int]) -> Iterator[Observation]:
        """Pools of handlers that talk to the same Consul add up to one series."""
        totals: dict[tuple[tuple[str, Any], ...], int] = {}
        for seen in self._observed():
            key = tuple(sorted(seen.server.items()))
            totals[key] = totals.get(key, 0) + value(seen)
        for key, total in totals.items():
            yield Observation(total, dict(key))

    def _busy(self, options: CallbackOptions) -> Iterator[Observation]:
        return self._summed(lambda seen: seen.busy)

    def _waiting(self, options: CallbackOptions) -> Iterator[Observation]:
        return self._summed(lambda seen: seen.waiting)

    def _limit(self, options: CallbackOptions) -> Iterator[Observation]:
        return self._summed(lambda seen: seen.limit)

    def _balance(self, options: CallbackOptions) -> Iterator[Observation]:
        for seen in self._observed():
            yield Observation(seen.balance, seen.server)

    def _breaker_states(self, options: CallbackOptions) -> Iterator[Observation]:
        for seen in self._observed():
            for name, current in seen.breakers:
                for state in BreakerState:
                    attributes = {BREAKER_NAME: name, BREAKER_STATE: state.value, **seen.server}
                    yield Observation(int(state is current), attributes)


_REGISTRY: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def _instruments_for(provider: MeterProvider) -> _Instruments:
    with _REGISTRY_LOCK:
        instruments = _REGISTRY.get(provider)
        if instruments is None:
            instruments = _Instruments(provider.get_meter(SCOPE, __version__))
            _REGISTRY[provider] = instruments
        return instruments


def _operation_of(envelope: Envelope | Mapping[str, Any]) -> str | None:
    """The envelope's operation if it is one the handler knows, before any validation."""
    operation = (
        envelope.operation if isinstance(envelope, Envelope) else _get(envelope, "operation")
    )
    return operation if isinstance(operation, str) and operation in OPERATIONS else None


def _get(envelope: Any, key: str) -> Any:
    try:
        return envelope.get(key)
    except Exception:  # not a mapping: parse_envelope refuses it, we only name the span
        return None


def _known(operation: str | None) -> str:
    return operation if operation is not None and operation in OPERATIONS else OTHER_OPERATION


def _state_now(breaker: CircuitBreaker) -> BreakerState:
    """The state as it stands, without the expiry ``CircuitBreaker.state`` runs: this may be
    called from an export thread, which must not move the breaker."""
    return breaker._state.name
