"""Every error class of the contract, reached for real: a real agent, a real refusal."""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent
from support import envelope, expected_context, uniq

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraAuthenticationError,
    InfraConnectionError,
    InfraConsulError,
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

FAST_RETRY = {"initial_delay_seconds": 0.01, "max_delay_seconds": 0.02}


def assert_json_ready(error: InfraError) -> dict[str, Any]:
    data = error.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["error"] == type(error).__name__
    assert data["message"] == str(error)
    assert data["context"] == error.context.model_dump(mode="json")
    return data


def kv_put(key: str, value: str = "v", **kw: Any) -> dict[str, Any]:
    return {**envelope("kv_put", key=key, value=value, **kw), "correlation_id": str(uuid.uuid4())}


# -- InfraAuthenticationError: 403 from the ACL agent ------------------------------------------


@pytest.mark.parametrize(
    "token", [None, "00000000-1111-2222-3333-444444444444"], ids=["none", "unknown"]
)
async def test_403_from_acl_agent_is_authentication_error(make_handler, acl_agent, token):
    extra = {} if token is None else {"token": token}
    handler = await make_handler(acl_agent, **extra)
    env = kv_put(f"{uniq('auth')}/k")
    with pytest.raises(InfraAuthenticationError) as caught:
        await handler.execute(env)
    error = caught.value
    assert not isinstance(error, InfraConnectionError)
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_put",
        category="authentication",
        retryable=False,
        attempts=1,
        correlation_id=env["correlation_id"],
        status_code=403,
    )
    assert "403" in str(error)
    assert_json_ready(error)
    # Not an outage: the breaker did not count it.
    assert handler.describe()["circuit_breakers"]["consul.default"]["consecutive_failures"] == 0


async def test_403_on_read_with_a_token_scoped_elsewhere(make_handler, acl_agent):
    token = acl_agent.mint_token('key_prefix "app/" { policy = "write" }')
    handler = await make_handler(acl_agent, token=token, retry={"max_attempts": 5})
    with pytest.raises(InfraAuthenticationError) as caught:
        await handler.execute(envelope("kv_get", key=f"{uniq('other')}/k"))
    assert caught.value.context.attempts == 1
    assert caught.value.context.status_code == 403
    # The same token works where its policy allows.
    ok = await handler.execute(envelope("kv_put", key=f"app/{uniq('ok')}", value="v"))
    assert ok.result["applied"] is True


# -- InfraConnectionError: connection refused, retried ------------------------------------------


async def test_connection_refused_is_retried_to_max_attempts(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, retry={**FAST_RETRY, "max_attempts": 3})
    toxiproxy.down()
    env = {**envelope("kv_get", key=f"{uniq('refused')}/k"), "correlation_id": str(uuid.uuid4())}
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(env)
    error = caught.value
    assert type(error) is InfraConnectionError
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="connection",
        retryable=True,
        attempts=3,
        correlation_id=env["correlation_id"],
    )
    assert_json_ready(error)
    breaker = handler.describe()["circuit_breakers"]["consul.default"]
    assert breaker["consecutive_failures"] == 3
    # Back up: the same handler works again.
    toxiproxy.up()
    response = await handler.execute(envelope("kv_get", key=f"{uniq('refused')}/k"))
    assert response.result["found"] is False


async def test_connection_refused_with_max_attempts_one(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, retry={"max_attempts": 1})
    toxiproxy.down()
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(kv_put(f"{uniq('refused')}/k"))
    assert caught.value.context.attempts == 1


async def test_initialize_against_a_dead_port_is_connection_error(clean_consul_env, dead_port):
    handler = HandlerConsul(settings=ConsulSettings(host="127.0.0.1", port=dead_port))
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    error = caught.value
    assert type(error) is InfraConnectionError
    assert error.context.model_dump(mode="json") == expected_context(
        operation="initialize", category="connection", retryable=True, attempts=1
    )
    assert_json_ready(error)
    assert handler.describe()["initialized"] is False


async def test_5xx_from_consul_is_connection_error_and_a_lock_write_is_not_resent(
    make_handler, counting_proxy
):
    # A datacenter Consul does not know: every KV call answers 500 "No path to datacenter".
    handler = await make_handler(
        counting_proxy, datacenter="nowhere", retry={**FAST_RETRY, "max_attempts": 3}
    )
    counting_proxy.reset()
    key = f"{uniq('5xx')}/lock"
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(kv_put(key, acquire=str(uuid.uuid4())))
    error = caught.value
    assert type(error) is InfraConnectionError
    assert error.context.status_code == 500
    assert error.context.attempts == 1  # outcome unknown and not idempotent: never re-sent
    assert error.context.datacenter == "nowhere"
    assert "500" in str(error)
    assert [p.split("?")[0] for p in counting_proxy.paths] == [f"/v1/kv/{key}"]
    assert_json_ready(error)


async def test_500_invalid_session_is_a_rejection_not_an_outage(make_handler, counting_proxy):
    """Consul answers a lock with an unknown session with 500 "invalid session": the caller's
    mistake. Not retried, and not counted, so one caller's bad input cannot open the breaker."""
    handler = await make_handler(
        counting_proxy, retry={**FAST_RETRY, "max_attempts": 3}, breaker={"failure_threshold": 2}
    )
    counting_proxy.reset()
    key = f"{uniq('session')}/lock"
    for _ in range(4):
        with pytest.raises(InfraConsulError) as caught:
            await handler.execute(kv_put(key, acquire=str(uuid.uuid4())))
        error = caught.value
        assert error.context.status_code == 500
        assert error.context.attempts == 1
        assert error.context.retryable is False
        assert "invalid session" in error.message
    assert len([p for p in counting_proxy.paths if p.startswith(f"/v1/kv/{key}")]) == 4
    assert handler.describe()["circuit_breakers"]["consul.default"]["state"] == "closed"
    assert handler.describe()["circuit_breakers"]["consul.default"]["consecutive_failures"] == 0


# -- InfraTimeoutError ---------------------------------------------------------------------------


async def test_request_timeout_via_latency(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, timeout_seconds=0.3)
    toxiproxy.latency(1500)
    env = {**envelope("kv_get", key=f"{uniq('slow')}/k"), "correlation_id": str(uuid.uuid4())}
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraTimeoutError) as caught:
        await handler.execute(env)
    elapsed = loop.time() - started
    assert elapsed < 1.2
    error = caught.value
    assert isinstance(error, InfraConnectionError)
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="timeout",
        retryable=True,
        attempts=1,
        correlation_id=env["correlation_id"],
        request_sent=True,
        outcome_unknown=True,
    )
    assert_json_ready(error)


async def test_envelope_deadline_is_honoured(make_handler, toxiproxy):
    handler = await make_handler(toxiproxy, timeout_seconds=10)
    toxiproxy.latency(1500)
    env = {**envelope("kv_get", key=f"{uniq('slow')}/k"), "timeout_seconds": 0.25}
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InfraTimeoutError) as caught:
        await handler.execute(env)
    assert loop.time() - started < 1.2
    assert caught.value.context.category == "timeout"
    assert caught.value.context.operation == "consul.kv_get"


# -- InfraUnavailableError -----------------------------------------------------------------------


async def test_breaker_opens_after_threshold(make_handler, toxiproxy):
    handler = await make_handler(
        toxiproxy,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 2, "reset_timeout_seconds": 60},
    )
    toxiproxy.down()
    for _ in range(2):
        with pytest.raises(InfraConnectionError):
            await handler.execute(envelope("kv_get", key="any/k"))
    env = {**envelope("kv_get", key="any/k"), "correlation_id": str(uuid.uuid4())}
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(env)
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="unavailable",
        retryable=False,
        attempts=0,
        correlation_id=env["correlation_id"],
    )
    assert "consul.default" in str(error)
    assert "open" in str(error)
    assert error.retry_after_seconds is not None
    assert 0 < error.retry_after_seconds <= 60
    data = assert_json_ready(error)
    assert data["retry_after_seconds"] == error.retry_after_seconds
    assert handler.describe()["circuit_breakers"]["consul.default"]["state"] == "open"
    # The agent coming back does not matter while the breaker is open: nothing is sent.
    toxiproxy.up()
    with pytest.raises(InfraUnavailableError):
        await handler.execute(envelope("kv_get", key="any/k"))


async def test_breaker_is_named_after_the_datacenter(make_handler, toxiproxy):
    handler = await make_handler(
        toxiproxy,
        datacenter="dc1",
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 60},
    )
    toxiproxy.down()
    with pytest.raises(InfraConnectionError) as first:
        await handler.execute(envelope("kv_get", key="any/k"))
    assert (first.value.context.target, first.value.context.datacenter) == ("consul.dc1", "dc1")
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(envelope("kv_get", key="any/k"))
    assert (caught.value.context.target, caught.value.context.datacenter) == ("consul.dc1", "dc1")
    assert handler.describe()["circuit_breakers"]["consul.dc1"]["state"] == "open"


async def test_not_initialized(clean_consul_env):
    handler = HandlerConsul()
    with pytest.raises(InfraUnavailableError, match="not initialized") as caught:
        await handler.execute(envelope("kv_get", key="a"))
    assert caught.value.context.category == "unavailable"
    assert caught.value.context.attempts == 0
    assert caught.value.context.operation == "consul.kv_get"
    assert_json_ready(caught.value)


async def test_after_shutdown(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    await handler.shutdown()
    with pytest.raises(InfraUnavailableError, match="shut down") as caught:
        await handler.execute(envelope("kv_get", key="a"))
    assert "not initialized" not in str(caught.value)
    assert caught.value.context.attempts == 0
    assert_json_ready(caught.value)


async def test_pool_saturated_past_max_wait(make_handler, toxiproxy):
    handler = await make_handler(
        toxiproxy, max_concurrent_operations=1, max_wait_seconds=0.1, timeout_seconds=5
    )
    toxiproxy.latency(800)
    slow = asyncio.ensure_future(handler.execute(envelope("kv_get", key=f"{uniq('sat')}/a")))
    await asyncio.sleep(0.05)  # let the slow call take the only worker
    env = {**envelope("kv_get", key=f"{uniq('sat')}/b"), "correlation_id": str(uuid.uuid4())}
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(env)
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_get",
        category="unavailable",
        retryable=False,
        attempts=1,
        correlation_id=env["correlation_id"],
    )
    assert_json_ready(error)
    # The call holding the worker still finishes normally.
    assert (await slow).result["found"] is False
    # Saturation is not an outage: the breaker has counted nothing.
    assert handler.describe()["circuit_breakers"]["consul.default"]["consecutive_failures"] == 0


# -- InfraConsulError: Consul itself rejects the request -----------------------------------------


@pytest.mark.parametrize(
    ("check", "says"),
    [
        # Go duration syntax our validation accepts, but it overflows time.Duration.
        ({"ttl": "99999999999h"}, "invalid duration"),
        # A zero interval: Consul's own check validation refuses it.
        ({"tcp": "127.0.0.1:80", "interval": "0s"}, "Interval must be > 0"),
    ],
    ids=["duration-overflow", "zero-interval"],
)
async def test_400_from_consul(make_handler, consul_agent, check, says):
    handler = await make_handler(consul_agent, retry={"max_attempts": 3})
    sid = uniq("bad-check")
    env = {
        **envelope("register", service_id=sid, name="bad", check=check),
        "correlation_id": str(uuid.uuid4()),
    }
    with pytest.raises(InfraConsulError) as caught:
        await handler.execute(env)
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.register",
        category="consul",
        retryable=False,
        attempts=1,
        correlation_id=env["correlation_id"],
        status_code=400,
    )
    assert says in str(error)
    assert_json_ready(error)
    assert consul_agent.request("GET", f"/v1/agent/service/{sid}").status == 404
    assert handler.describe()["circuit_breakers"]["consul.default"]["consecutive_failures"] == 0


class SmallValueAgent(ConsulAgent):
    """A dev agent whose kv_max_value_size is 1 KiB, so a 2 KiB value earns a 413."""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["limits"] = {**cfg.get("limits", {}), "kv_max_value_size": 1024}
        return cfg


@pytest.fixture
def small_value_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    agent = SmallValueAgent(consul_bin, name="small-kv", base_dir=tmp_path)
    try:
        agent.start()
        yield agent
    finally:
        agent.close()


@pytest.fixture
def two_connection_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    """An agent that answers 429 to a client IP holding more than two HTTP connections."""
    agent = ConsulAgent(
        consul_bin,
        name="two-conns",
        base_dir=tmp_path,
        extra_config={"limits": {"http_max_conns_per_client": 2}},
    )
    try:
        agent.start()
        yield agent
    finally:
        agent.close()


async def test_429_from_consul_is_a_retryable_connection_error(make_handler, two_connection_agent):
    handler = await make_handler(
        two_connection_agent, retry={**FAST_RETRY, "max_attempts": 3}, breaker={"enabled": False}
    )
    await handler.shutdown()  # its keep-alive connection would count against the limit
    held = [
        http.client.HTTPConnection(two_connection_agent.host, two_connection_agent.port, timeout=5)
        for _ in range(2)
    ]
    try:
        for conn in held:  # two open connections: the handler's next one is over the limit
            conn.request("GET", "/v1/status/leader")
            assert conn.getresponse().read()
        handler = HandlerConsul(
            ConsulSettings(
                host=two_connection_agent.host,
                port=two_connection_agent.port,
                retry={**FAST_RETRY, "max_attempts": 3},
            )
        )
        with pytest.raises(InfraConnectionError) as caught:
            await handler.initialize()
        error = caught.value
        assert type(error) is InfraConnectionError
        assert error.context.status_code == 429
        assert error.context.retryable is True
        assert "too many concurrent connections" in error.message
        assert_json_ready(error)
    finally:
        for conn in held:
            conn.close()
    # Once the connections are gone the same settings work.
    recovered = await make_handler(two_connection_agent, retry={**FAST_RETRY, "max_attempts": 3})
    response = await recovered.execute(kv_put(f"{uniq('429')}/k"))
    assert response.result["applied"] is True


async def test_413_from_consul(make_handler, small_value_agent):
    handler = await make_handler(small_value_agent, retry={"max_attempts": 3})
    key = f"{uniq('big')}/k"
    env = kv_put(key, "x" * 2048)
    with pytest.raises(InfraConsulError) as caught:
        await handler.execute(env)
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_put",
        category="consul",
        retryable=False,
        attempts=1,
        correlation_id=env["correlation_id"],
        status_code=413,
    )
    assert "413" in str(error)
    assert_json_ready(error)
    # Within the agent's limit the same handler writes fine.
    ok = await handler.execute(kv_put(key, "x" * 1000))
    assert ok.result == {"key": key, "applied": True}


# -- InfraValidationError ------------------------------------------------------------------------


async def test_validation_error_context(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    correlation_id = uuid.uuid4()
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(
            {
                "operation": "consul.kv_put",
                "payload": {"key": "a/../b", "value": "v"},
                "correlation_id": str(correlation_id),
            }
        )
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_put",
        category="validation",
        retryable=False,
        attempts=0,
        correlation_id=correlation_id,
        field="payload.key",
    )
    data = assert_json_ready(error)
    assert data["errors"][0]["field"] == "payload.key"


def test_error_tree():
    assert issubclass(InfraTimeoutError, InfraConnectionError)
    for cls in (
        InfraValidationError,
        InfraConnectionError,
        InfraAuthenticationError,
        InfraUnavailableError,
        InfraConsulError,
    ):
        assert issubclass(cls, InfraError)
    assert InfraConnectionError.retryable is True
    assert InfraTimeoutError.retryable is True
    for cls in (
        InfraValidationError,
        InfraAuthenticationError,
        InfraUnavailableError,
        InfraConsulError,
    ):
        assert cls.retryable is False
