"""Configuration: the env precedence against a real agent, nested knobs, and bad config."""

from __future__ import annotations

from typing import Any

import pytest
from support import envelope, uniq

from handler_consul import (
    BreakerSettings,
    ConsulSettings,
    HandlerConsul,
    InfraAuthenticationError,
    InfraConfigurationError,
    RetrySettings,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

SENTINEL = "sentinel-4f1d2c9e-config-secret"


async def reaches(handler: HandlerConsul, agent: Any) -> None:
    """A write through the handler lands on ``agent`` (so it was the one addressed)."""
    key = f"{uniq('settings')}/k"
    response = await handler.execute(envelope("kv_put", key=key, value="here"))
    assert response.result == {"key": key, "applied": True}
    token = getattr(agent, "management_token", None)
    assert agent.request("GET", f"/v1/kv/{key}?raw", token=token).body == b"here"


# -- defaults ------------------------------------------------------------------------------------


def test_defaults():
    s = ConsulSettings()
    assert (s.host, s.port, s.scheme, s.token, s.datacenter) == (
        "localhost",
        8500,
        "http",
        None,
        None,
    )
    assert s.timeout_seconds == 30.0
    assert s.max_concurrent_operations == 10
    assert s.max_wait_seconds is None
    assert s.effective_max_wait_seconds == 30.0
    assert s.verify_tls is True
    assert s.retry == RetrySettings()
    assert (
        s.retry.max_attempts,
        s.retry.initial_delay_seconds,
        s.retry.max_delay_seconds,
        s.retry.exponential_base,
    ) == (3, 0.1, 5.0, 2.0)
    assert s.breaker == BreakerSettings()
    assert (
        s.breaker.enabled,
        s.breaker.failure_threshold,
        s.breaker.reset_timeout_seconds,
        s.breaker.half_open_max_calls,
    ) == (True, 5, 30.0, 1)
    assert s.breaker_name == "consul.default"


def test_max_wait_follows_timeout_unless_set(monkeypatch):
    monkeypatch.setenv("CONSUL_TIMEOUT", "7.5")
    assert ConsulSettings().effective_max_wait_seconds == 7.5
    monkeypatch.setenv("CONSUL_MAX_WAIT_SECONDS", "0.5")
    assert ConsulSettings().effective_max_wait_seconds == 0.5


# -- the contract's own variables ------------------------------------------------------------------


async def test_consul_host_and_port_from_env(monkeypatch, consul_agent):
    monkeypatch.setenv("CONSUL_HOST", consul_agent.host)
    monkeypatch.setenv("CONSUL_PORT", str(consul_agent.port))
    async with HandlerConsul() as handler:
        assert handler.describe()["settings"]["port"] == consul_agent.port
        await reaches(handler, consul_agent)


def test_every_contract_variable_is_read(monkeypatch):
    env = {
        "CONSUL_HOST": "consul.internal",
        "CONSUL_PORT": "8501",
        "CONSUL_SCHEME": "https",
        "CONSUL_TOKEN": SENTINEL,
        "CONSUL_TIMEOUT": "2.5",
        "CONSUL_DATACENTER": "eu-west_1",
        "CONSUL_MAX_CONCURRENT_OPERATIONS": "4",
        "CONSUL_MAX_WAIT_SECONDS": "1.5",
        "CONSUL_CACERT": "/etc/consul/ca.pem",
        "CONSUL_CLIENT_CERT": "/etc/consul/client.pem",
        "CONSUL_CLIENT_KEY": "/etc/consul/client-key.pem",
        "CONSUL_HTTP_SSL_VERIFY": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = ConsulSettings()
    assert s.host == "consul.internal"
    assert s.port == 8501
    assert s.scheme == "https"
    assert s.token is not None
    assert s.token.get_secret_value() == SENTINEL
    assert s.timeout_seconds == 2.5
    assert s.datacenter == "eu-west_1"
    assert s.breaker_name == "consul.eu-west_1"
    assert s.max_concurrent_operations == 4
    assert s.max_wait_seconds == 1.5
    assert (s.cacert, s.client_cert, s.client_key) == (
        "/etc/consul/ca.pem",
        "/etc/consul/client.pem",
        "/etc/consul/client-key.pem",
    )
    assert s.verify_tls is False
    assert s.base_url == "https://consul.internal:8501"


def test_nested_knobs_from_env(monkeypatch):
    env = {
        "CONSUL_RETRY__MAX_ATTEMPTS": "5",
        "CONSUL_RETRY__INITIAL_DELAY_SECONDS": "0.25",
        "CONSUL_RETRY__MAX_DELAY_SECONDS": "2",
        "CONSUL_RETRY__EXPONENTIAL_BASE": "3",
        "CONSUL_BREAKER__ENABLED": "false",
        "CONSUL_BREAKER__FAILURE_THRESHOLD": "7",
        "CONSUL_BREAKER__RESET_TIMEOUT_SECONDS": "12.5",
        "CONSUL_BREAKER__HALF_OPEN_MAX_CALLS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = ConsulSettings()
    assert (
        s.retry.max_attempts,
        s.retry.initial_delay_seconds,
        s.retry.max_delay_seconds,
        s.retry.exponential_base,
    ) == (5, 0.25, 2.0, 3.0)
    assert (
        s.breaker.enabled,
        s.breaker.failure_threshold,
        s.breaker.reset_timeout_seconds,
        s.breaker.half_open_max_calls,
    ) == (False, 7, 12.5, 2)


async def test_nested_env_knobs_reach_the_running_handler(monkeypatch, consul_agent):
    monkeypatch.setenv("CONSUL_HOST", consul_agent.host)
    monkeypatch.setenv("CONSUL_PORT", str(consul_agent.port))
    monkeypatch.setenv("CONSUL_BREAKER__FAILURE_THRESHOLD", "9")
    monkeypatch.setenv("CONSUL_RETRY__MAX_ATTEMPTS", "4")
    monkeypatch.setenv("CONSUL_MAX_CONCURRENT_OPERATIONS", "3")
    async with HandlerConsul() as handler:
        await reaches(handler, consul_agent)
        info = handler.describe()
        assert info["circuit_breakers"]["consul.default"]["failure_threshold"] == 9
        assert info["settings"]["retry"]["max_attempts"] == 4
        assert info["max_concurrent_operations"] == 3
        assert info["pool"]["max_workers"] == 3


async def test_initialize_nested_mapping_merges_with_env(monkeypatch, consul_agent):
    monkeypatch.setenv("CONSUL_RETRY__INITIAL_DELAY_SECONDS", "0.05")
    handler = HandlerConsul()
    await handler.initialize(
        {"host": consul_agent.host, "port": consul_agent.port, "retry": {"max_attempts": 6}}
    )
    try:
        retry = handler.describe()["settings"]["retry"]
        assert (retry["max_attempts"], retry["initial_delay_seconds"]) == (6, 0.05)
    finally:
        await handler.shutdown()


# -- precedence, proved on the wire ------------------------------------------------------------


async def test_consul_port_beats_consul_http_addr(monkeypatch, consul_agent, dead_port):
    # python-consul2 on its own lets CONSUL_HTTP_ADDR win; the handler must not.
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{dead_port}")
    monkeypatch.setenv("CONSUL_HOST", consul_agent.host)
    monkeypatch.setenv("CONSUL_PORT", str(consul_agent.port))
    async with HandlerConsul() as handler:
        await reaches(handler, consul_agent)


async def test_explicit_settings_beat_consul_http_addr(monkeypatch, consul_agent, dead_port):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://127.0.0.1:{dead_port}")
    settings = ConsulSettings(host=consul_agent.host, port=consul_agent.port)
    async with HandlerConsul(settings=settings) as handler:
        await reaches(handler, consul_agent)


async def test_initialize_mapping_beats_consul_port(monkeypatch, consul_agent, dead_port):
    monkeypatch.setenv("CONSUL_HOST", "127.0.0.1")
    monkeypatch.setenv("CONSUL_PORT", str(dead_port))
    handler = HandlerConsul()
    await handler.initialize({"port": consul_agent.port})
    try:
        await reaches(handler, consul_agent)
    finally:
        await handler.shutdown()


@pytest.mark.parametrize("form", ["{addr}", "http://{addr}", "http://{addr}/"])
async def test_consul_http_addr_alone_is_used(monkeypatch, consul_agent, form):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", form.format(addr=consul_agent.http_addr))
    async with HandlerConsul() as handler:
        await reaches(handler, consul_agent)


async def test_consul_token_beats_consul_http_token(monkeypatch, acl_agent):
    good = acl_agent.mint_token('key_prefix "" { policy = "write" }')
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", SENTINEL)
    monkeypatch.setenv("CONSUL_TOKEN", good)
    async with HandlerConsul() as handler:
        await reaches(handler, acl_agent)


async def test_consul_http_token_is_used_when_alone(monkeypatch, acl_agent):
    good = acl_agent.mint_token('key_prefix "" { policy = "write" }')
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", good)
    async with HandlerConsul() as handler:
        await reaches(handler, acl_agent)


async def test_bogus_consul_token_is_not_overridden_by_a_good_http_token(monkeypatch, acl_agent):
    good = acl_agent.mint_token('key_prefix "" { policy = "write" }')
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", good)
    monkeypatch.setenv("CONSUL_TOKEN", "11111111-2222-3333-4444-555555555555")
    async with HandlerConsul() as handler:
        with pytest.raises(InfraAuthenticationError):
            await handler.execute(envelope("kv_put", key=f"{uniq('tok')}/k", value="v"))


async def test_initialize_token_beats_consul_token(monkeypatch, acl_agent):
    good = acl_agent.mint_token('key_prefix "" { policy = "write" }')
    monkeypatch.setenv("CONSUL_TOKEN", SENTINEL)
    handler = HandlerConsul()
    await handler.initialize({"host": acl_agent.host, "port": acl_agent.port, "token": good})
    try:
        await reaches(handler, acl_agent)
    finally:
        await handler.shutdown()


async def test_consul_scheme_beats_consul_http_ssl(monkeypatch, consul_agent):
    monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    monkeypatch.setenv("CONSUL_SCHEME", "http")
    monkeypatch.setenv("CONSUL_HOST", consul_agent.host)
    monkeypatch.setenv("CONSUL_PORT", str(consul_agent.port))
    async with HandlerConsul() as handler:
        assert handler.describe()["settings"]["scheme"] == "http"
        await reaches(handler, consul_agent)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CONSUL_HTTP_SSL": "true"}, ("localhost", 8500, "https")),
        ({"CONSUL_HTTP_SSL": "1"}, ("localhost", 8500, "https")),
        ({"CONSUL_HTTP_SSL": "false"}, ("localhost", 8500, "http")),
        ({"CONSUL_HTTP_ADDR": "https://consul.example:8501"}, ("consul.example", 8501, "https")),
        ({"CONSUL_HTTP_ADDR": "https://consul.example"}, ("consul.example", 443, "https")),
        ({"CONSUL_HTTP_ADDR": "consul.example"}, ("consul.example", 8500, "http")),
        ({"CONSUL_HTTP_ADDR": "[::1]:8502"}, ("::1", 8502, "http")),
        (
            {"CONSUL_HTTP_ADDR": "other:9000", "CONSUL_HOST": "mine"},
            ("mine", 9000, "http"),
        ),
        (
            {"CONSUL_HTTP_ADDR": "https://other:9000", "CONSUL_SCHEME": "http"},
            ("other", 9000, "http"),
        ),
    ],
)
def test_consul_http_variables_resolve(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = ConsulSettings()
    assert (s.host, s.port, s.scheme) == expected


def test_explicit_keyword_beats_every_variable(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://a.example:1")
    monkeypatch.setenv("CONSUL_HOST", "b.example")
    monkeypatch.setenv("CONSUL_PORT", "2")
    s = ConsulSettings(host="c.example", port=3, scheme="http")
    assert (s.host, s.port, s.scheme) == ("c.example", 3, "http")


# -- bad configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "abc"}, "port"),
        ({"scheme": "ftp"}, "scheme"),
        ({"max_concurrent_operations": 101}, "max_concurrent_operations"),
        ({"max_concurrent_operations": 0}, "max_concurrent_operations"),
        ({"host": "evil/path"}, "host"),
        ({"host": "user@evil"}, "host"),
        ({"host": "evil:80"}, "host"),
        ({"host": "evil?x=1"}, "host"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"datacenter": "dc/1"}, "datacenter"),
        ({"retry": {"max_attempts": 11}}, "retry.max_attempts"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"breaker": {"failure_threshold": 0}}, "breaker.failure_threshold"),
        ({"breaker": {"unknown": 1}}, "breaker.unknown"),
        ({"hots": "localhost"}, "hots"),
        ({"io": "trio"}, "io"),
        ({"io": ""}, "io"),
    ],
)
async def test_bad_initialize_config_names_the_field(config, field):
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize({"host": "127.0.0.1", "token": SENTINEL, **config})
    error = caught.value
    assert error.context.field == field
    assert error.context.category == "configuration"
    assert error.context.retryable is False
    assert field in str(error)
    assert f"(from the initialize() key {field!r})" in error.message
    for text in (str(error), repr(error), repr(error.to_dict())):
        assert SENTINEL not in text
    assert error.__cause__ is None
    assert handler.describe()["initialized"] is False


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("CONSUL_PORT", "abc", "port"),
        ("CONSUL_PORT", "0", "port"),
        ("CONSUL_SCHEME", "ftp", "scheme"),
        ("CONSUL_MAX_CONCURRENT_OPERATIONS", "101", "max_concurrent_operations"),
        ("CONSUL_HOST", "evil/path", "host"),
        ("CONSUL_TIMEOUT", "soon", "timeout_seconds"),
        ("CONSUL_RETRY__MAX_ATTEMPTS", "11", "retry.max_attempts"),
        ("CONSUL_HTTP_ADDR", "127.0.0.1:abc", "port"),
        ("CONSUL_IO", "gevent", "io"),
    ],
)
async def test_bad_env_config_names_the_field(monkeypatch, name, value, field):
    monkeypatch.setenv("CONSUL_TOKEN", SENTINEL)
    monkeypatch.setenv(name, value)
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize()
    assert caught.value.context.field == field
    # The variable that set it, even when its name is not the field's (CONSUL_HTTP_ADDR).
    assert f"(from environment variable {name})" in caught.value.message
    assert SENTINEL not in str(caught.value)
    assert SENTINEL not in repr(caught.value)


async def test_bad_token_names_the_field_not_the_value():
    secret = f"{SENTINEL}\nInjected: header"
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize({"token": secret})
    assert caught.value.context.field == "token"
    for text in (str(caught.value), repr(caught.value), repr(caught.value.to_dict())):
        assert SENTINEL not in text


# -- the I/O mode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [
        (None, {}, "threads"),  # the default
        ("asyncio", {}, "asyncio"),
        ("AsyncIO ", {}, "asyncio"),  # as lenient as scheme: case and spaces
        ("asyncio", {"io": "threads"}, "threads"),  # initialize() beats the environment
    ],
)
async def test_io_comes_from_consul_io_and_is_shown_by_describe(
    monkeypatch, consul_agent, env, config, expected
):
    if env is not None:
        monkeypatch.setenv("CONSUL_IO", env)
    handler = HandlerConsul()
    await handler.initialize({"host": consul_agent.host, "port": consul_agent.port, **config})
    try:
        described = handler.describe()
        assert described["io"] == expected
        assert described["settings"]["io"] == expected
        assert described["pool"]["threads"] == (0 if expected == "asyncio" else 1)
        await reaches(handler, consul_agent)
    finally:
        await handler.shutdown()
