"""The error tree, and what a caller gets when Consul itself says no.

Consul's own rejections are answers, not outages: 400 (a definition Consul refuses), 403 (the
ACL token may not do this), 404 (an answer: not found), 413 (a value over the agent's limit)
and 500 "invalid session" (a lock on a session that does not exist) are each asked exactly
once, never retried, never counted by the breaker (one bad caller must not cut Consul off for
everyone), and end in a typed error whose context and ``to_dict()`` are exact. A 403 never
shows the token anywhere.

Each error is reached for real: real agents (one with ACLs, one with a 1 KiB value limit) and
requests counted at the harness's counting proxy. The errors of outages are where their
behaviour is: connection refused, 5xx and 429 in tests/test_retries.py, timeouts in
tests/test_deadline.py, an open breaker in tests/test_circuit_breaker.py, a saturated pool in
tests/test_backpressure.py, lifecycle misuse in tests/test_lifecycle.py, refused envelopes in
tests/test_refusals.py and bad configuration in tests/test_settings.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from harness import AclConsulAgent, ConsulAgent
from support import (
    FAST_RETRY,
    NEEDLES,
    SENTINEL_TEXT,
    CountFor,
    LogCollector,
    MakeHandler,
    assert_error_clean,
    assert_introspection_clean,
    assert_json_ready,
    assert_logs_clean,
    assert_nothing_counted,
    envelope,
    expected_context,
    kv_get,
    kv_put,
    requests_to,
    uniq,
    unique_key,
    with_correlation_id,
)

from handler_consul import (
    InfraAuthenticationError,
    InfraConnectionError,
    InfraConsulError,
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def test_error_tree() -> None:
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


# -- 403: the token may not do this --------------------------------------------------------------

# (token, the key prefix a minted token may write, operation). A token of None is no token; a
# prefix means a real token is minted with write on that prefix and used outside it.
ACL_DENIALS = [
    pytest.param(None, None, "kv_put", id="no-token"),
    pytest.param("00000000-1111-2222-3333-444444444444", None, "kv_put", id="unknown-uuid"),
    pytest.param(SENTINEL_TEXT, None, "kv_put", id="unknown-text"),
    pytest.param("sentinel-token-not-in-consul", None, "kv_put", id="unknown-other"),
    pytest.param(None, "allowed/", "kv_put", id="write-outside-its-policy"),
    pytest.param(None, "app/", "kv_get", id="read-outside-its-policy"),
]


@pytest.mark.parametrize(("token", "allowed", "operation"), ACL_DENIALS)
async def test_403_is_an_authentication_error_asked_once_never_counted_and_never_leaked(
    token: str | None,
    allowed: str | None,
    operation: str,
    acl_agent: AclConsulAgent,
    counting_proxy_for: CountFor,
    make_handler: MakeHandler,
    debug_logs: LogCollector,
) -> None:
    if allowed is not None:
        token = acl_agent.mint_token(f'key_prefix "{allowed}" {{ policy = "write" }}')
    counter = counting_proxy_for(acl_agent)
    handler = await make_handler(
        counter,
        retry={**FAST_RETRY, "max_attempts": 5},
        breaker={"failure_threshold": 1},
        **({} if token is None else {"token": token}),
    )
    counter.reset()
    key = f"{uniq('denied')}/k"
    env = with_correlation_id(kv_put(key) if operation == "kv_put" else kv_get(key))
    with pytest.raises(InfraAuthenticationError) as caught:
        await handler.execute(env)
    error = caught.value
    assert not isinstance(error, InfraConnectionError)
    assert error.context.model_dump(mode="json") == expected_context(
        operation=f"consul.{operation}",
        category="authentication",
        retryable=False,
        attempts=1,
        correlation_id=env["correlation_id"],
        status_code=403,
    )
    assert "403" in str(error)
    assert_json_ready(error)
    # Asked once, and not counted: a bad token must not open the breaker for everyone.
    method = "PUT" if operation == "kv_put" else "GET"
    assert len(requests_to(counter, method, f"/v1/kv/{key}")) == 1
    assert counter.requests == 1
    assert_nothing_counted(handler)
    # The token shows nowhere: not in the error or its chain, describe(), repr() or any log.
    needles = NEEDLES if token is None else (*NEEDLES, token)
    assert_error_clean(error, needles)
    assert_introspection_clean(handler, needles)
    assert_logs_clean(debug_logs.records, needles)
    if allowed is not None:
        # The same token works where its policy allows.
        ok = await handler.execute(kv_put(f"{allowed}{uniq('ok')}"))
        assert ok.result["applied"] is True


# -- 400, 404, 413: Consul refuses or does not have it -----------------------------------------


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
async def test_400_is_a_consul_error_asked_once_and_not_counted(
    check: dict[str, Any],
    says: str,
    make_handler: MakeHandler,
    consul_agent: ConsulAgent,
    counting_proxy_for: CountFor,
) -> None:
    counter = counting_proxy_for(consul_agent)
    handler = await make_handler(
        counter, retry={"max_attempts": 3}, breaker={"failure_threshold": 1}
    )
    counter.reset()
    sid = uniq("bad-check")
    env = with_correlation_id(envelope("register", service_id=sid, name="bad", check=check))
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
    assert counter.request_lines == ["PUT /v1/agent/service/register HTTP/1.1"]
    assert consul_agent.request("GET", f"/v1/agent/service/{sid}").status == 404
    assert_nothing_counted(handler)


async def test_404_is_an_answer_asked_once(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_tuned_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    handler = await make_tuned_handler(counter, breaker={"failure_threshold": 1})
    counter.reset()
    missing = await handler.execute(kv_get(unique_key()))
    assert (missing.result["found"], missing.attempts) == (False, 1)
    gone = await handler.execute(
        {"operation": "consul.deregister", "payload": {"service_id": f"nx-{uuid.uuid4().hex}"}}
    )
    assert (gone.result["deregistered"], gone.attempts) == (False, 1)
    assert counter.requests == 2
    assert_nothing_counted(handler)


async def test_413_is_a_consul_error_asked_once_and_not_counted(
    make_handler: MakeHandler, small_value_agent: ConsulAgent, counting_proxy_for: CountFor
) -> None:
    counter = counting_proxy_for(small_value_agent)
    handler = await make_handler(
        counter, retry={"max_attempts": 3}, breaker={"failure_threshold": 1}
    )
    counter.reset()
    key = f"{uniq('big')}/k"
    env = with_correlation_id(kv_put(key, "x" * 2048))
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
    assert counter.requests == 1
    assert_nothing_counted(handler)
    # Within the agent's limit the same handler writes fine.
    ok = await handler.execute(with_correlation_id(kv_put(key, "x" * 1000)))
    assert ok.result == {"key": key, "applied": True}


# -- 500 "invalid session": the caller's mistake, not an outage ---------------------------------


async def test_500_invalid_session_is_a_rejection_asked_once_and_not_counted(
    make_handler: MakeHandler, consul_agent: ConsulAgent, counting_proxy_for: CountFor
) -> None:
    """Consul answers a lock with an unknown session with 500 "invalid session": the caller's
    mistake. Not retried, and not counted, so one caller's bad input cannot open the breaker."""
    counter = counting_proxy_for(consul_agent)
    handler = await make_handler(
        counter, retry={**FAST_RETRY, "max_attempts": 3}, breaker={"failure_threshold": 1}
    )
    counter.reset()
    key = f"{uniq('session')}/lock"
    for _ in range(4):
        with pytest.raises(InfraConsulError) as caught:
            await handler.execute(with_correlation_id(kv_put(key, acquire=str(uuid.uuid4()))))
        error = caught.value
        assert error.context.status_code == 500
        assert error.context.attempts == 1
        assert error.context.retryable is False
        assert "invalid session" in error.message
        assert "invalid session" in str(error)
    assert len(requests_to(counter, "PUT", f"/v1/kv/{key}")) == 4
    assert counter.requests == 4
    assert_nothing_counted(handler)
