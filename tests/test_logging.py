"""Logging: one tree under ``handler_consul``; per-envelope records at DEBUG with structured
fields; breaker transitions at WARNING/INFO naming the breaker; lifecycle at INFO."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import envelope, settings_for, uniq

import handler_consul
from handler_consul import (
    HandlerConsul,
    InfraConnectionError,
    InfraUnavailableError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

PACKAGE_DIR = str(Path(handler_consul.__file__).resolve().parent)


def assert_envelope_fields(record: Any, correlation_id: Any, operation: str) -> None:
    assert record.levelno == logging.DEBUG
    assert record.name.startswith("handler_consul.")
    assert record.correlation_id == str(correlation_id)
    assert record.operation == operation
    assert type(record.attempt) is int
    assert isinstance(record.duration_ms, float)
    assert record.duration_ms >= 0


def with_id(operation: str, **payload: Any) -> tuple[dict[str, Any], uuid.UUID]:
    cid = uuid.uuid4()
    return {**envelope(operation, **payload), "correlation_id": str(cid)}, cid


async def test_every_record_of_the_package_is_under_handler_consul(
    make_handler, toxiproxy, debug_logs
):
    handler = await make_handler(
        toxiproxy, retry={"initial_delay_seconds": 0.01}, breaker={"failure_threshold": 2}
    )
    await handler.execute(envelope("kv_put", key=f"{uniq('log')}/k", value="v"))
    with pytest.raises(InfraValidationError):
        await handler.execute(envelope("kv_put", key="a//b", value="v"))
    toxiproxy.down()
    # Two failed attempts open the breaker (a WARNING), so the third attempt is refused.
    with pytest.raises(InfraUnavailableError):
        await handler.execute(envelope("kv_get", key="a"))
    await handler.health_check()
    await handler.shutdown()
    ours = [r for r in debug_logs.records if r.pathname.startswith(PACKAGE_DIR)]
    assert ours, "the package logged nothing at DEBUG"
    for record in ours:
        assert record.name == "handler_consul" or record.name.startswith("handler_consul."), (
            record.name
        )
    # And nothing under handler_consul is logged from outside the package.
    assert all(r.pathname.startswith(PACKAGE_DIR) for r in debug_logs.named("handler_consul"))


def test_library_adds_no_handlers_of_its_own():
    for name in ("handler_consul", "handler_consul.handler", "handler_consul.envelope"):
        handlers = logging.getLogger(name).handlers
        assert all(isinstance(h, logging.NullHandler) for h in handlers), (name, handlers)


async def test_success_is_one_debug_record_with_fields(handler, debug_logs):
    env, cid = with_id("kv_put", key=f"{uniq('log')}/k", value="v")
    await handler.execute(env)
    (record,) = debug_logs.for_correlation(cid)
    assert_envelope_fields(record, cid, "consul.kv_put")
    assert record.attempt == 1
    assert record.name == "handler_consul.envelope"


async def test_generated_correlation_id_is_the_one_logged(handler, debug_logs):
    response = await handler.execute(envelope("kv_get", key=f"{uniq('log')}/k"))
    (record,) = debug_logs.for_correlation(response.correlation_id)
    assert_envelope_fields(record, response.correlation_id, "consul.kv_get")


async def test_retried_failure_logs_each_attempt_and_the_outcome(
    make_handler, toxiproxy, debug_logs
):
    handler = await make_handler(
        toxiproxy, retry={"max_attempts": 3, "initial_delay_seconds": 0.01}
    )
    toxiproxy.down()
    env, cid = with_id("kv_get", key=f"{uniq('log')}/k")
    with pytest.raises(InfraConnectionError):
        await handler.execute(env)
    records = debug_logs.for_correlation(cid)
    for record in records:
        assert_envelope_fields(record, cid, "consul.kv_get")
    assert [r.attempt for r in records] == [1, 2, 3, 3]
    assert [getattr(r, "outcome", None) for r in records] == ["InfraConnectionError"] * 4
    assert records[-1].duration_ms >= records[0].duration_ms


async def test_refused_envelope_logs_one_debug_record(handler, debug_logs):
    env, cid = with_id("kv_put", key="a/../b", value="v")
    with pytest.raises(InfraValidationError):
        await handler.execute(env)
    (record,) = debug_logs.for_correlation(cid)
    assert_envelope_fields(record, cid, "consul.kv_put")
    assert record.attempt == 0
    assert record.field == "payload.key"


async def test_no_per_envelope_records_above_debug(make_handler, toxiproxy, info_logs):
    handler = await make_handler(toxiproxy, retry={"max_attempts": 1})
    await handler.execute(envelope("kv_get", key=f"{uniq('log')}/k"))
    with pytest.raises(InfraValidationError):
        await handler.execute(envelope("kv_get", key="a//b"))
    toxiproxy.down()
    with pytest.raises(InfraConnectionError):
        await handler.execute(envelope("kv_get", key="a"))
    assert [r for r in info_logs.records if hasattr(r, "correlation_id")] == []
    assert info_logs.named("handler_consul.envelope") == []


async def test_breaker_transitions_are_logged_with_the_breaker_name(
    make_handler, toxiproxy, info_logs
):
    handler = await make_handler(
        toxiproxy,
        datacenter="dc1",
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 2, "reset_timeout_seconds": 0.2},
    )
    toxiproxy.down()
    for _ in range(2):
        with pytest.raises(InfraConnectionError):
            await handler.execute(envelope("kv_get", key="a"))
    with pytest.raises(InfraUnavailableError):
        await handler.execute(envelope("kv_get", key="a"))
    toxiproxy.up()
    await asyncio.sleep(0.25)
    await handler.execute(envelope("kv_get", key=f"{uniq('log')}/k"))
    transitions = [r for r in info_logs.records if hasattr(r, "breaker_to")]
    assert [(r.breaker_from, r.breaker_to, r.levelno) for r in transitions] == [
        ("closed", "open", logging.WARNING),
        ("open", "half_open", logging.INFO),
        ("half_open", "closed", logging.INFO),
    ]
    for record in transitions:
        assert record.name.startswith("handler_consul")
        assert record.target == "consul.dc1"
        assert "consul.dc1" in record.getMessage()


async def test_lifecycle_is_logged_at_info(consul_agent, clean_consul_env, info_logs):
    handler = HandlerConsul(settings=settings_for(consul_agent))
    await handler.initialize()
    await handler.shutdown()
    lifecycle = [r for r in info_logs.named("handler_consul") if r.levelno == logging.INFO]
    assert len(lifecycle) == 2
    started, stopped = lifecycle
    assert "initialized" in started.getMessage()
    assert consul_agent.http_addr in started.getMessage()
    assert started.target == "consul.default"
    assert "shut down" in stopped.getMessage()
    assert stopped.target == "consul.default"
