"""OpenTelemetry (the ``otel`` extra): a span per envelope and the ``consul.client.*`` metrics,
checked with the SDK's in-memory exporters against real agents; and a handler given no
provider never imports OpenTelemetry at all (docs/patterns/observability.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from harness import ConsulAgent
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import (
    MakeHandler,
    ProxyFor,
    RecordingSleep,
    agent_env,
    in_thread,
    kv_get,
    kv_put,
    settings_for,
    unique_key,
    with_correlation_id,
)

from handler_consul import (
    HandlerConsul,
    InfraConnectionError,
    InfraUnavailableError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


@dataclass
class Otel:
    """An SDK tracer and meter provider that keep everything in memory."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of metric ``name`` collected now."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def value(self, name: str, **attributes: Any) -> Any:
        """The one point of ``name`` whose attributes include ``attributes`` (its value, or
        the point itself for a histogram)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        matches = [p for a, p in self.points(name) if wanted.items() <= a.items()]
        assert len(matches) == 1, (name, wanted, self.points(name))
        return getattr(matches[0], "value", matches[0])


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def server_of(target: Any) -> dict[str, Any]:
    return {"server.address": target.host, "server.port": target.port}


# -- a success -------------------------------------------------------------------------------


async def test_a_success_is_one_client_span_and_counted(
    otel: Otel, consul_agent: ConsulAgent
) -> None:
    async with HandlerConsul(
        settings_for(consul_agent),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    ) as handler:
        env = with_correlation_id(kv_put(unique_key("otel"), "1"))
        response = await handler.execute(env)

        (span,) = otel.finished()
        assert span.name == "consul.kv_put"
        assert span.kind is SpanKind.CLIENT
        assert span.status.status_code is StatusCode.UNSET
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "handler_consul"
        assert dict(span.attributes or {}) == {
            "consul.operation": "consul.kv_put",
            "consul.correlation_id": env["correlation_id"],
            "consul.attempts": 1,
            "consul.outcome": "success",
            **server_of(consul_agent),
        }
        assert span.events == ()

        success = {"consul.operation": "consul.kv_put", "consul.outcome": "success"}
        ((attributes, count),) = otel.points("consul.client.envelopes")
        assert attributes == {**success, **server_of(consul_agent)}
        assert count.value == 1
        duration = otel.value("consul.client.operation.duration", **_keys(success))
        assert duration.count == 1
        assert duration.sum == pytest.approx(response.duration_ms / 1000.0, abs=1e-6)
        assert list(duration.explicit_bounds)[:3] == [0.005, 0.01, 0.025]  # seconds
        assert otel.points("consul.client.retries") == []

        # The gauges, read on collection: an idle pool, a closed breaker, an unspent budget.
        assert otel.value("consul.client.pool.busy", **_keys(server_of(consul_agent))) == 0
        assert otel.value("consul.client.pool.waiting") == 0
        assert otel.value("consul.client.pool.limit") == 10
        assert otel.value("consul.client.retry_budget.balance") >= 10.0
        states = {
            a["consul.circuit_breaker.state"]: p.value
            for a, p in otel.points("consul.client.circuit_breaker.state")
        }
        assert states == {"closed": 1, "open": 0, "half_open": 0}


async def test_the_span_is_a_child_of_the_callers_span(
    otel: Otel, consul_agent: ConsulAgent
) -> None:
    tracer = otel.tracer_provider.get_tracer("the-application")
    async with HandlerConsul(
        settings_for(consul_agent), tracer_provider=otel.tracer_provider
    ) as handler:
        with tracer.start_as_current_span("request") as parent:
            await handler.execute(kv_get(unique_key("otel")))
    ours, theirs = otel.finished()
    assert ours.name == "consul.kv_get"
    assert ours.parent is not None
    assert ours.parent.span_id == parent.get_span_context().span_id
    assert ours.context is not None
    assert ours.context.trace_id == theirs.context.trace_id  # type: ignore[union-attr]


# -- a validation refusal ----------------------------------------------------------------------


async def test_a_refused_envelope_is_an_error_span_with_nothing_sent(
    otel: Otel, consul_agent: ConsulAgent
) -> None:
    async with HandlerConsul(
        settings_for(consul_agent),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    ) as handler:
        with pytest.raises(InfraValidationError):
            await handler.execute(kv_put("../agent/self", "x"))
        with pytest.raises(InfraValidationError):
            await handler.execute({"operation": "consul.drop_everything", "payload": {}})

    bad_key, unknown = otel.finished()
    assert bad_key.name == "consul.kv_put"
    assert bad_key.status.status_code is StatusCode.ERROR
    attributes = dict(bad_key.attributes or {})
    assert attributes["error.type"] == "InfraValidationError"
    assert attributes["consul.outcome"] == "failure"
    assert attributes["consul.attempts"] == 0
    assert attributes["consul.request_sent"] is False
    # An operation the handler does not know is the caller's free text: never a name.
    assert unknown.name == "consul.envelope"
    assert dict(unknown.attributes or {})["consul.operation"] == "_OTHER"
    assert "drop_everything" not in json.dumps(dict(unknown.attributes or {}))

    refused = {"consul.outcome": "failure", "error.type": "InfraValidationError"}
    assert (
        otel.value("consul.client.envelopes", consul__operation="consul.kv_put", **_keys(refused))
        == 1
    )
    assert otel.value("consul.client.envelopes", consul__operation="_OTHER") == 1
    assert otel.points("consul.client.retries") == []


def _keys(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attribute names as keyword arguments of ``Otel.value`` (dots spelt ``__``)."""
    return {k.replace(".", "__"): v for k, v in attributes.items()}


# -- a connection failure with retries -------------------------------------------------------


async def test_connection_refused_retries_show_as_events_and_counts(
    otel: Otel,
    toxiproxy_for: ProxyFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, sleep=RecordingSleep(), retry={"max_attempts": 3})
    handler.instrument(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    await in_thread(proxy.down)  # nothing listens: connection refused

    with pytest.raises(InfraConnectionError):
        await handler.execute(kv_get(unique_key("otel")))

    (span,) = otel.finished()
    attributes = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert "refused" in (span.status.description or "").lower()
    assert attributes["error.type"] == "InfraConnectionError"
    assert attributes["consul.attempts"] == 3
    assert attributes["consul.request_sent"] is False
    assert attributes["server.port"] == proxy.port
    retries = [e for e in span.events if e.name == "retry"]
    assert [dict(e.attributes or {})["consul.attempt"] for e in retries] == [1, 2]
    assert {dict(e.attributes or {})["error.type"] for e in retries} == {"InfraConnectionError"}

    failed = {"consul.operation": "consul.kv_get", "error.type": "InfraConnectionError"}
    assert otel.value("consul.client.retries", **_keys(failed)) == 2
    assert otel.value("consul.client.envelopes", **_keys(failed)) == 1
    assert otel.points("consul.client.retry_budget.exhausted") == []


async def test_a_retry_the_budget_refuses_is_counted(
    otel: Otel,
    toxiproxy_for: ProxyFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(
        proxy,
        sleep=RecordingSleep(),
        retry={"max_attempts": 3, "budget_ratio": 0.0, "budget_min_per_second": 0.0},
    )
    handler.instrument(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    await in_thread(proxy.down)

    with pytest.raises(InfraConnectionError):
        await handler.execute(kv_get(unique_key("otel")))

    (span,) = otel.finished()
    assert [e.name for e in span.events] == ["retry_budget_exhausted"]
    assert dict(span.attributes or {})["consul.attempts"] == 1
    assert otel.value("consul.client.retry_budget.exhausted") == 1
    assert otel.points("consul.client.retries") == []
    assert otel.value("consul.client.retry_budget.balance") == 0.0


async def test_the_breaker_gauge_follows_the_breaker(otel: Otel, consul_agent: ConsulAgent) -> None:
    async with HandlerConsul(
        settings_for(consul_agent), meter_provider=otel.meter_provider
    ) as handler:
        handler.force_open_circuit()
        with pytest.raises(InfraUnavailableError):
            await handler.execute(kv_get(unique_key("otel")))
        states = {
            a["consul.circuit_breaker.state"]: p.value
            for a, p in otel.points("consul.client.circuit_breaker.state")
            if a["consul.circuit_breaker.name"] == "consul.default"
        }
        assert states == {"closed": 0, "open": 1, "half_open": 0}
        assert otel.value("consul.client.envelopes", error__type="InfraUnavailableError") == 1
    # Shut down: the handler reports no gauges any more.
    assert otel.points("consul.client.pool.busy") == []


async def test_a_cancelled_envelope_ends_its_span(
    otel: Otel,
    toxiproxy_for: ProxyFor,
    consul_agent: ConsulAgent,
    make_tuned_handler: MakeHandler,
) -> None:
    backing_off = asyncio.Event()

    async def sleep_forever(seconds: float) -> None:
        backing_off.set()
        await asyncio.Event().wait()

    proxy = toxiproxy_for(consul_agent)
    handler = await make_tuned_handler(proxy, sleep=sleep_forever)
    handler.instrument(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    await in_thread(proxy.down)
    task = asyncio.ensure_future(handler.execute(kv_get(unique_key("otel"))))
    await asyncio.wait_for(backing_off.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    (span,) = otel.finished()
    assert dict(span.attributes or {})["consul.outcome"] == "cancelled"
    assert dict(span.attributes or {})["error.type"] == "CancelledError"
    assert [e.name for e in span.events] == ["retry"]
    assert otel.value("consul.client.envelopes", consul__outcome="cancelled") == 1


# -- several handlers, switching off -------------------------------------------------------------


async def test_handlers_sharing_a_meter_provider_each_report(
    otel: Otel, consul_agent: ConsulAgent, toxiproxy_for: ProxyFor
) -> None:
    proxy = toxiproxy_for(consul_agent)
    one = HandlerConsul(settings_for(consul_agent), meter_provider=otel.meter_provider)
    two = HandlerConsul(
        settings_for(proxy, max_concurrent_operations=3), meter_provider=otel.meter_provider
    )
    async with one, two:
        await one.execute(kv_get(unique_key("otel")))
        await two.execute(kv_get(unique_key("otel")))
        limits = {a["server.port"]: p.value for a, p in otel.points("consul.client.pool.limit")}
        assert limits == {consul_agent.port: 10, proxy.port: 3}
        counted = {a["server.port"]: p.value for a, p in otel.points("consul.client.envelopes")}
        assert counted == {consul_agent.port: 1, proxy.port: 1}


async def test_instrument_with_nothing_switches_telemetry_off(
    otel: Otel, consul_agent: ConsulAgent
) -> None:
    async with HandlerConsul(
        settings_for(consul_agent),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    ) as handler:
        handler.instrument()
        await handler.execute(kv_get(unique_key("otel")))
        assert otel.finished() == []
        assert otel.points("consul.client.envelopes") == []
        assert otel.points("consul.client.pool.busy") == []


# -- nothing asked, nothing paid ----------------------------------------------------------------

_WITHOUT_PROVIDERS = textwrap.dedent(
    """\
    import asyncio, json, sys

    from handler_consul import HandlerConsul


    async def main() -> None:
        async with HandlerConsul() as handler:
            await handler.execute(
                {"operation": "consul.kv_put", "payload": {"key": sys.argv[1], "value": "1"}}
            )
            try:
                await handler.execute({"operation": "consul.kv_put", "payload": {"key": "../x"}})
            except Exception:
                pass
            handler.describe()
            await handler.health_check()


    asyncio.run(main())
    print(json.dumps(sorted(
        name for name in sys.modules
        if name.startswith("opentelemetry") or name == "handler_consul._telemetry"
    )))
    """
)


def test_a_handler_without_providers_never_imports_opentelemetry(
    consul_agent: ConsulAgent,
) -> None:
    import opentelemetry.trace  # noqa: F401  (installed here: its absence below is a choice)

    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PROVIDERS, unique_key("otel")],
        env=agent_env(consul_agent),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
