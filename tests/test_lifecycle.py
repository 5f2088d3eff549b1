"""Lifecycle: initialize, execute, shutdown, describe, health_check, the context manager and
the entry point, against real agents."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import uuid

import pytest
from support import (
    LagTicker,
    assert_json_ready,
    envelope,
    expected_context,
    settings_for,
    uniq,
)

import handler_consul
from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraConnectionError,
    InfraTimeoutError,
    InfraUnavailableError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

OPERATIONS = [
    "consul.check_update",
    "consul.deregister",
    "consul.discover",
    "consul.endpoint",
    "consul.kv_delete",
    "consul.kv_get",
    "consul.kv_put",
    "consul.register",
    "consul.services",
    "consul.session_create",
    "consul.session_destroy",
    "consul.session_renew",
    "consul.txn",
    "consul.watch",
]


# -- describe ------------------------------------------------------------------------------------


def test_describe_before_initialize():
    handler = HandlerConsul(settings=ConsulSettings(timeout_seconds=12.5, token="x-secret-x"))
    info = handler.describe()
    assert info["handler_type"] == "infra_handler"
    assert info["handler_category"] == "effect"
    assert info["supported_operations"] == OPERATIONS
    assert info["timeout_seconds"] == 12.5
    assert info["initialized"] is False
    assert info["version"] == handler_consul.__version__
    assert "x-secret-x" not in json.dumps(info)


async def test_describe_after_initialize(handler, consul_agent):
    await handler.execute(envelope("kv_get", key=f"{uniq('desc')}/k"))
    info = handler.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["handler_type"] == "infra_handler"
    assert info["handler_category"] == "effect"
    assert info["supported_operations"] == OPERATIONS
    assert info["supported_operations"] == sorted(info["supported_operations"])
    assert info["timeout_seconds"] == 30.0
    assert info["initialized"] is True
    assert info["version"] == importlib.metadata.version("handler-consul")
    assert info["circuit_breakers"]["consul.default"]["state"] == "closed"
    assert info["max_concurrent_operations"] == 10
    assert info["pool"]["max_workers"] == 10
    settings = info["settings"]
    assert (settings["host"], settings["port"]) == (consul_agent.host, consul_agent.port)
    assert "token" not in settings
    assert settings["token_configured"] is False


# -- execute outside the lifecycle ---------------------------------------------------------------


async def test_execute_before_initialize_is_unavailable_and_says_so():
    handler = HandlerConsul()
    with pytest.raises(InfraUnavailableError, match="not initialized") as caught:
        await handler.execute(envelope("kv_get", key="a"))
    assert "not initialized" in str(caught.value)
    assert "shut down" not in str(caught.value)
    assert caught.value.context.category == "unavailable"
    assert caught.value.context.attempts == 0
    assert caught.value.context.operation == "consul.kv_get"
    assert_json_ready(caught.value)


async def test_execute_after_shutdown_is_unavailable_and_says_so(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    await handler.shutdown()
    with pytest.raises(InfraUnavailableError, match="shut down") as caught:
        await handler.execute(envelope("kv_get", key="a"))
    assert "shut down" in str(caught.value)
    assert "not initialized" not in str(caught.value)
    assert caught.value.context.attempts == 0
    assert_json_ready(caught.value)
    assert handler.describe()["initialized"] is False


async def test_shutdown_is_idempotent_and_safe_before_initialize(make_handler, consul_agent):
    never = HandlerConsul()
    await never.shutdown()
    assert never.describe()["initialized"] is False
    handler = await make_handler(consul_agent)
    await handler.shutdown()
    await handler.shutdown()
    assert handler.describe()["initialized"] is False


async def test_initialize_after_shutdown_works_again(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    await handler.shutdown()
    await handler.initialize()
    key = f"{uniq('again')}/k"
    assert (await handler.execute(envelope("kv_put", key=key, value="v"))).result["applied"]


# -- initialize ----------------------------------------------------------------------------------


async def test_initialize_twice_replaces_resources(make_handler, consul_agent, counting_proxy_for):
    first_proxy = counting_proxy_for(consul_agent)
    second_proxy = counting_proxy_for(consul_agent)
    handler = await make_handler(first_proxy, max_concurrent_operations=2)
    await handler.execute(envelope("kv_get", key=f"{uniq('re')}/k"))
    old_pool = handler._lifecycle.runtime.pool  # private: the only way to see the old pool itself
    await handler.initialize({"port": second_proxy.port, "max_concurrent_operations": 4})
    assert old_pool.snapshot()["closed"] is True
    assert handler.describe()["pool"]["max_workers"] == 4
    assert handler.describe()["settings"]["port"] == second_proxy.port
    first_proxy.reset()
    second_proxy.reset()
    key = f"{uniq('re')}/k"
    response = await handler.execute(envelope("kv_put", key=key, value="v\n"))
    assert response.result == {"key": key, "applied": True}
    assert first_proxy.requests == 0
    assert second_proxy.paths == [f"/v1/kv/{key}"]


async def test_failed_reinitialize_keeps_the_working_runtime(make_handler, consul_agent, dead_port):
    handler = await make_handler(consul_agent)
    with pytest.raises(InfraConnectionError):
        await handler.initialize({"port": dead_port})
    assert handler.describe()["initialized"] is True
    response = await handler.execute(envelope("kv_get", key=f"{uniq('keep')}/k"))
    assert response.status == "success"


async def test_initialize_against_a_dead_port_is_a_connection_error(dead_port):
    handler = HandlerConsul(settings=ConsulSettings(host="127.0.0.1", port=dead_port))
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    error = caught.value
    assert type(error) is InfraConnectionError
    assert error.context.operation == "initialize"
    assert error.context.model_dump(mode="json") == expected_context(
        operation="initialize", category="connection", retryable=True, attempts=1
    )
    assert_json_ready(error)
    assert handler.describe()["initialized"] is False
    with pytest.raises(InfraUnavailableError, match="not initialized"):
        await handler.execute(envelope("kv_get", key="a"))


async def test_initialize_against_a_black_hole_times_out_without_blocking_the_loop(toxiproxy):
    toxiproxy.timeout(0)  # accepts, never answers
    handler = HandlerConsul(settings=settings_for(toxiproxy, timeout_seconds=0.5))
    loop = asyncio.get_running_loop()
    async with LagTicker(interval=0.01) as lag:
        started = loop.time()
        with pytest.raises(InfraTimeoutError):
            await handler.initialize()
        elapsed = loop.time() - started
    assert 0.4 <= elapsed < 2.0
    assert lag.max_gap_seconds < 0.25
    assert handler.describe()["initialized"] is False


async def test_initialize_with_a_key_scoped_token(acl_agent):
    token = acl_agent.mint_token('key_prefix "app/" { policy = "write" }')
    # The token has no agent:read, so /v1/agent/self would refuse it ...
    assert acl_agent.request("GET", "/v1/agent/self", token=token).status == 403
    handler = HandlerConsul(settings=settings_for(acl_agent, token=token))
    # ... yet initialize() and health_check() succeed: their check needs no permission.
    await handler.initialize()
    try:
        health = await handler.health_check()
        assert health["healthy"] is True
        key = f"app/{uniq('scoped')}"
        response = await handler.execute(envelope("kv_put", key=key, value="v"))
        assert response.result == {"key": key, "applied": True}
    finally:
        await handler.shutdown()


# -- health_check --------------------------------------------------------------------------------


async def test_health_check_reports_leader_latency_and_breaker(handler, consul_agent):
    health = await handler.health_check()
    assert set(health) == {"healthy", "initialized", "latency_ms", "leader", "breaker"}
    assert health["healthy"] is True
    assert health["initialized"] is True
    assert health["leader"] == consul_agent.leader_addr()
    assert isinstance(health["latency_ms"], float)
    assert health["latency_ms"] > 0
    assert health["breaker"] == "closed"
    assert json.loads(json.dumps(health)) == health


async def test_health_check_when_consul_is_down(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy)
    toxiproxy.down()
    health = await handler.health_check()
    assert health["healthy"] is False
    assert health["leader"] is None
    assert health["error_type"] == "InfraConnectionError"
    assert json.loads(json.dumps(health)) == health


async def test_health_check_with_open_breaker_is_unhealthy(make_handler, toxiproxy):
    handler = await make_handler(
        toxiproxy,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 60},
    )
    toxiproxy.down()
    with pytest.raises(InfraConnectionError):
        await handler.execute(envelope("kv_get", key="a"))
    toxiproxy.up()
    health = await handler.health_check()
    assert (health["healthy"], health["breaker"]) == (False, "open")
    assert health["leader"]  # Consul itself answers; the breaker is what is unhealthy


async def test_health_check_before_initialize():
    health = await HandlerConsul().health_check()
    assert health["healthy"] is False
    assert health["initialized"] is False


# -- the async context manager -------------------------------------------------------------------


async def test_async_context_manager(consul_agent):
    handler = HandlerConsul(settings=settings_for(consul_agent))
    async with handler as entered:
        assert entered is handler
        assert handler.describe()["initialized"] is True
        await handler.execute(envelope("kv_get", key=f"{uniq('ctx')}/k"))
    assert handler.describe()["initialized"] is False
    with pytest.raises(InfraUnavailableError, match="shut down"):
        await handler.execute(envelope("kv_get", key="a"))


async def test_async_context_manager_shuts_down_on_error(consul_agent):
    handler = HandlerConsul(settings=settings_for(consul_agent))
    with pytest.raises(RuntimeError, match="boom"):
        async with handler:
            raise RuntimeError("boom")
    assert handler.describe()["initialized"] is False


# -- shutdown with work in flight ----------------------------------------------------------------


async def test_shutdown_lets_in_flight_envelopes_finish(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, shutdown_grace_seconds=5)
    toxiproxy.latency(300)
    task = asyncio.ensure_future(handler.execute(envelope("kv_get", key=f"{uniq('drain')}/k")))
    await asyncio.sleep(0.05)
    await handler.shutdown()
    assert task.done()
    assert task.result().status == "success"


async def test_shutdown_fails_what_outlives_the_grace_period(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, shutdown_grace_seconds=0.1, timeout_seconds=5)
    toxiproxy.latency(1500)
    cid = uuid.uuid4()
    env = {**envelope("kv_get", key=f"{uniq('grace')}/k"), "correlation_id": str(cid)}
    task = asyncio.ensure_future(handler.execute(env))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    async with LagTicker(interval=0.01) as lag:
        started = loop.time()
        await handler.shutdown()
        elapsed = loop.time() - started
    assert elapsed < 0.6
    assert lag.max_gap_seconds < 0.25
    with pytest.raises(InfraUnavailableError) as caught:
        await task
    assert caught.value.context.category == "unavailable"


async def test_shutdown_failure_carries_the_envelope_context(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, shutdown_grace_seconds=0.1, timeout_seconds=5)
    toxiproxy.latency(1500)
    cid = uuid.uuid4()
    env = {**envelope("kv_get", key=f"{uniq('grace')}/k"), "correlation_id": str(cid)}
    task = asyncio.ensure_future(handler.execute(env))
    await asyncio.sleep(0.05)
    await handler.shutdown()
    with pytest.raises(InfraUnavailableError) as caught:
        await task
    context = caught.value.context
    assert (context.operation, context.correlation_id, context.target) == (
        "consul.kv_get",
        cid,
        "consul.default",
    )
    assert context.attempts == 1


async def test_execute_while_shutting_down_is_refused(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, shutdown_grace_seconds=5)
    toxiproxy.latency(300)
    task = asyncio.ensure_future(handler.execute(envelope("kv_get", key=f"{uniq('sd')}/k")))
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(handler.shutdown())
    await asyncio.sleep(0.01)
    with pytest.raises(InfraUnavailableError, match="shutting down"):
        await handler.execute(envelope("kv_get", key="a"))
    await closing
    assert (await task).status == "success"


# -- the entry point -----------------------------------------------------------------------------


def test_entry_point_resolves_to_the_handler():
    (entry,) = [
        e for e in importlib.metadata.entry_points(group="infra_handlers") if e.name == "consul"
    ]
    assert entry.value == "handler_consul:HandlerConsul"
    assert entry.load() is HandlerConsul
