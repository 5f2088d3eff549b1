"""A sentinel token is found nowhere: not in messages, reprs, contexts, causes, logs or describe().

The token is UUID-shaped so that Consul accepts it as a real SecretID (created with a chosen
SecretID through /v1/acl/token); every success and failure path runs with it configured. The
403 paths (no token, unknown tokens, a real token used outside its policy) are checked for
leaks with the rest of what a 403 does, in tests/test_errors.py.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
from harness import AclConsulAgent
from support import (
    SENTINEL,
    SENTINEL_TEXT,
    assert_error_clean,
    assert_introspection_clean,
    assert_logs_clean,
    assert_no_secret,
    envelope,
    exception_chain,
    recording_proxy,
    uniq,
)

import handler_consul
from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraConfigurationError,
    InfraConnectionError,
    InfraTimeoutError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

PACKAGE_DIR = str(Path(handler_consul.__file__).resolve().parent)
ALL_RULES = 'key_prefix "" { policy = "write" }\nservice_prefix "" { policy = "write" }'


@pytest.fixture(scope="module")
def sentinel_token(acl_agent: AclConsulAgent) -> str:
    """SENTINEL made a real token (chosen SecretID) with write on every key and service."""
    policy = acl_agent.request(
        "PUT",
        "/v1/acl/policy",
        {"Name": f"sentinel-{uniq('p')}", "Rules": ALL_RULES},
        token=acl_agent.management_token,
    )
    assert policy.status == 200, policy.text
    token = acl_agent.request(
        "PUT",
        "/v1/acl/token",
        {"SecretID": SENTINEL, "Policies": [{"ID": policy.json()["ID"]}]},
        token=acl_agent.management_token,
    )
    assert token.status == 200, token.text
    assert token.json()["SecretID"] == SENTINEL
    return SENTINEL


# -- where the token does go ----------------------------------------------------------------------


async def test_token_is_sent_only_as_the_x_consul_token_header(
    make_handler, acl_agent, sentinel_token
):
    proxy = recording_proxy(acl_agent)
    try:
        handler = await make_handler(proxy, token=sentinel_token)
        key = f"{uniq('hdr')}/k"
        response = await handler.execute(envelope("kv_put", key=key, value="v"))
        assert response.result == {"key": key, "applied": True}
        await handler.execute(envelope("kv_get", key=key))
        raw = proxy.raw
        lines = proxy.request_lines
        assert len(lines) == 3  # the leader probe, the put, the get
        for line in lines:
            assert sentinel_token not in line
        header = f"X-Consul-Token: {sentinel_token}\r\n".encode()
        assert raw.count(header) == len(lines)
        assert raw.count(sentinel_token.encode()) == len(lines)
    finally:
        proxy.close()


# -- success paths --------------------------------------------------------------------------------


async def test_successful_operations_leak_nothing(
    make_handler, acl_agent, sentinel_token, debug_logs
):
    handler = await make_handler(acl_agent, token=sentinel_token)
    sid = uniq("sec")
    key = f"{uniq('sec')}/k"
    responses = [
        await handler.execute(envelope("register", service_id=sid, name="sec", port=1)),
        await handler.execute(envelope("kv_put", key=key, value="v")),
        await handler.execute(envelope("kv_get", key=key)),
        await handler.execute(envelope("kv_get", key=key.rsplit("/", 1)[0] + "/", recurse=True)),
        await handler.execute(envelope("deregister", service_id=sid)),
    ]
    assert [r.status for r in responses] == ["success"] * 5
    for response in responses:
        assert_no_secret(response.model_dump_json(), "response")
        assert_no_secret(repr(response), "repr(response)")
    health = await handler.health_check()
    assert health["healthy"] is True
    assert_no_secret(json.dumps(health), "health_check()")
    assert_introspection_clean(handler)
    assert handler.describe()["settings"]["token_configured"] is True
    assert any(r.name.startswith("handler_consul") for r in debug_logs.records)
    assert_logs_clean(debug_logs.records)


def test_settings_never_show_the_token():
    settings = ConsulSettings(token=SENTINEL)
    assert settings.token is not None
    assert settings.token.get_secret_value() == SENTINEL
    for text, where in [
        (repr(settings), "repr"),
        (str(settings), "str"),
        (json.dumps(settings.model_dump(mode="json")), "model_dump(json)"),
        (settings.model_dump_json(), "model_dump_json"),
        (repr(settings.model_dump()), "model_dump()"),
        (json.dumps(settings.public_dict()), "public_dict"),
    ]:
        assert_no_secret(text, f"settings {where}")


def test_settings_from_env_never_show_the_token(monkeypatch):
    monkeypatch.setenv("CONSUL_TOKEN", SENTINEL)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", SENTINEL_TEXT)
    settings = ConsulSettings()
    assert_no_secret(repr(settings), "repr(settings)")
    assert_no_secret(settings.model_dump_json(), "settings json")


async def test_describe_before_initialize_leaks_nothing():
    handler = HandlerConsul(settings=ConsulSettings(token=SENTINEL))
    assert_introspection_clean(handler)
    health = await handler.health_check()
    assert health["healthy"] is False
    assert_no_secret(json.dumps(health), "health_check() before initialize")


# -- failure paths --------------------------------------------------------------------------------


async def test_connection_refused_leaks_nothing(
    make_handler, acl_agent, toxiproxy_for, sentinel_token, debug_logs
):
    proxy = toxiproxy_for(acl_agent)
    handler = await make_handler(proxy, token=sentinel_token, retry={"initial_delay_seconds": 0.01})
    proxy.down()
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(envelope("kv_get", key=f"{uniq('sec')}/k"))
    assert caught.value.context.attempts == 3
    assert_error_clean(caught.value)
    health = await handler.health_check()
    assert health["healthy"] is False
    assert_no_secret(json.dumps(health), "health_check() when down")
    assert_introspection_clean(handler)
    assert_logs_clean(debug_logs.records)


async def test_initialize_refused_leaks_nothing(dead_port, debug_logs):
    handler = HandlerConsul(
        settings=ConsulSettings(host="127.0.0.1", port=dead_port, token=SENTINEL)
    )
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    assert_error_clean(caught.value)
    assert_introspection_clean(handler)
    assert_logs_clean(debug_logs.records)


async def test_timeout_leaks_nothing(
    make_handler, acl_agent, toxiproxy_for, sentinel_token, debug_logs
):
    proxy = toxiproxy_for(acl_agent)
    handler = await make_handler(proxy, token=sentinel_token, timeout_seconds=0.3)
    proxy.latency(1000)
    with pytest.raises(InfraTimeoutError) as caught:
        await handler.execute(envelope("kv_put", key=f"{uniq('sec')}/k", value="v"))
    assert_error_clean(caught.value)
    assert_introspection_clean(handler)
    assert_logs_clean(debug_logs.records)


@pytest.mark.parametrize(
    "config",
    [
        {"token": SENTINEL, "port": 0},
        {"token": SENTINEL, "port": "abc"},
        {"token": SENTINEL, "host": "evil/path"},
        {"token": SENTINEL, "nonsense": SENTINEL},
        {"token": SENTINEL + "\n"},
        {"token": f"x\r\nX-Other: {SENTINEL}"},
        {"token": SENTINEL, "retry": {"max_attempts": SENTINEL}},
    ],
    ids=["port-0", "port-abc", "host", "unknown-key", "token-newline", "token-crlf", "nested"],
)
async def test_bad_config_leaks_nothing(config, debug_logs):
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize(config)
    assert_error_clean(caught.value)
    assert_introspection_clean(handler)
    assert_logs_clean(debug_logs.records)


async def test_bad_env_config_leaks_nothing(monkeypatch, debug_logs):
    monkeypatch.setenv("CONSUL_TOKEN", SENTINEL)
    monkeypatch.setenv("CONSUL_PORT", "abc")
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize()
    assert caught.value.context.field == "port"
    assert_error_clean(caught.value)
    assert_logs_clean(debug_logs.records)


@pytest.mark.parametrize(
    "payload",
    [
        {"key": "a/../b", "value": SENTINEL},
        {"key": f"a/../{SENTINEL}", "value": "v"},
        {"key": "k", "value": "v", "flags": SENTINEL},
    ],
    ids=["value", "key", "flags"],
)
async def test_validation_errors_leak_nothing(
    make_handler, acl_agent, sentinel_token, debug_logs, payload
):
    handler = await make_handler(acl_agent, token=sentinel_token)
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute({"operation": "consul.kv_put", "payload": payload})
    assert_error_clean(caught.value)
    assert_logs_clean(debug_logs.records)


# -- deeper leaks: what debuggers, error trackers and direct construction see ---------------------


async def test_traceback_locals_of_a_failure_leak_nothing(
    make_handler, acl_agent, toxiproxy_for, sentinel_token
):
    # Error trackers (Sentry) and `pytest --showlocals` render every frame's locals with repr().
    # Only the package's own frames are inspected: this test's frame holds the token itself.
    proxy = toxiproxy_for(acl_agent)
    handler = await make_handler(proxy, token=sentinel_token, timeout_seconds=0.3)
    proxy.latency(1000)
    with pytest.raises(InfraTimeoutError) as caught:
        await handler.execute(envelope("kv_get", key=f"{uniq('sec')}/k"))
    frames = 0
    for exc in exception_chain(caught.value):
        summary = traceback.TracebackException.from_exception(exc, capture_locals=True)
        for frame in summary.stack:
            if not frame.filename.startswith(PACKAGE_DIR):
                continue
            frames += 1
            for name, value in (frame.locals or {}).items():
                assert_no_secret(value, f"local {name!r} of {frame.name} ({frame.filename})")
    assert frames > 0


@pytest.mark.parametrize("bad", [SENTINEL + "\n", f"a\r\nX: {SENTINEL}"], ids=["lf", "crlf"])
def test_direct_settings_validation_error_leaks_nothing(bad):
    with pytest.raises(InfraConfigurationError) as caught:
        ConsulSettings(token=bad)
    assert caught.value.context.field == "token"
    assert_error_clean(caught.value)
