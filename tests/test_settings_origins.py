"""Every configuration error names where the bad value was set: the environment variable, the
``initialize()`` key or the ``ConsulSettings`` argument. ``context.field`` stays the setting's
name; the origin is in the message, and the value never is.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import SENTINEL_TEXT, assert_error_clean

from handler_consul import ConsulSettings, HandlerConsul, InfraConfigurationError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def checked(error: InfraConfigurationError, field: str, origin: str) -> None:
    assert error.context.field == field
    assert error.context.category == "configuration"
    assert f"invalid Consul setting {field!r} (from {origin})" in error.message, error.message
    assert error.__cause__ is None
    assert_error_clean(error)


async def initialize_error(config: dict[str, Any] | None = None) -> InfraConfigurationError:
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize(config)
    assert handler.describe()["initialized"] is False
    return caught.value


@pytest.mark.parametrize(
    ("env", "field", "variable"),
    [
        ({"CONSUL_HTTP_ADDR": "127.0.0.1:abc"}, "port", "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "127.0.0.1:0"}, "port", "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "ftp://consul.example:21"}, "scheme", "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "http://user@evil:80"}, "host", "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "unix://consul.sock"}, "unix_socket", "CONSUL_HTTP_ADDR"),
        ({"CONSUL_PORT": "x"}, "port", "CONSUL_PORT"),
        ({"consul_port": "x"}, "port", "CONSUL_PORT"),
        ({"CONSUL_HOST": "evil/path"}, "host", "CONSUL_HOST"),
        ({"CONSUL_SCHEME": "ftp"}, "scheme", "CONSUL_SCHEME"),
        ({"CONSUL_TIMEOUT": "soon"}, "timeout_seconds", "CONSUL_TIMEOUT"),
        ({"CONSUL_HTTP_SSL_VERIFY": "maybe"}, "verify_tls", "CONSUL_HTTP_SSL_VERIFY"),
        ({"CONSUL_DATACENTER": "dc/1"}, "datacenter", "CONSUL_DATACENTER"),
        ({"CONSUL_RETRY__MAX_ATTEMPTS": "11"}, "retry.max_attempts", "CONSUL_RETRY__MAX_ATTEMPTS"),
        ({"CONSUL_RETRY": '{"max_attempts": 11}'}, "retry.max_attempts", "CONSUL_RETRY"),
        ({"CONSUL_RETRY": "{not json"}, "retry", "CONSUL_RETRY"),
        (
            {"CONSUL_BREAKER__FAILURE_THRESHOLD": "0"},
            "breaker.failure_threshold",
            "CONSUL_BREAKER__FAILURE_THRESHOLD",
        ),
        ({"CONSUL_CLIENT_KEY": "/etc/consul/key.pem"}, "client_key", "CONSUL_CLIENT_KEY"),
        ({"CONSUL_TLS_SERVER_NAME": "a/b"}, "tls_server_name", "CONSUL_TLS_SERVER_NAME"),
        ({"CONSUL_UNIX_SOCKET": "consul.sock"}, "unix_socket", "CONSUL_UNIX_SOCKET"),
        ({"CONSUL_UNIX_SOCKET": "/" + "s" * 120}, "unix_socket", "CONSUL_UNIX_SOCKET"),
        ({"CONSUL_TOKEN": f"{SENTINEL_TEXT} x"}, "token", "CONSUL_TOKEN"),
        ({"CONSUL_HTTP_TOKEN": f"{SENTINEL_TEXT}\nX: y"}, "token", "CONSUL_HTTP_TOKEN"),
    ],
)
async def test_an_environment_error_names_its_variable(monkeypatch, env, field, variable):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    error = await initialize_error()
    checked(error, field, f"environment variable {variable}")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"port": "x"}, "port"),
        ({"port": 0}, "port"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"CONSUL_TIMEOUT": 0}, "timeout_seconds"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"hots": "localhost"}, "hots"),
        ({"unix_socket": "relative.sock"}, "unix_socket"),
        ({"token": f"{SENTINEL_TEXT}\n"}, "token"),
    ],
)
async def test_an_initialize_error_names_its_key(config, field):
    error = await initialize_error(config)
    checked(error, field, f"the initialize() key {field!r}")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"port": "x"}, "port"),
        ({"breaker": {"half_open_max_calls": 0}}, "breaker.half_open_max_calls"),
        ({"tls_server_name": "x y"}, "tls_server_name"),
    ],
)
def test_a_constructor_error_names_its_argument(values, field):
    with pytest.raises(InfraConfigurationError) as caught:
        ConsulSettings(**values)
    checked(caught.value, field, f"the ConsulSettings argument {field!r}")


async def test_an_override_of_base_settings_is_named_as_an_initialize_key():
    handler = HandlerConsul(settings=ConsulSettings(port=8501))
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize({"port": "x"})
    checked(caught.value, "port", "the initialize() key 'port'")


async def test_only_the_values_in_use_are_checked(monkeypatch):
    # CONSUL_PORT overrides the port of CONSUL_HTTP_ADDR, so its bad port is never used.
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:abc")
    monkeypatch.setenv("CONSUL_PORT", "8501")
    settings = ConsulSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8501)
    assert settings.origin("host") == "environment variable CONSUL_HTTP_ADDR"
    assert settings.origin("port") == "environment variable CONSUL_PORT"
    assert settings.origin("scheme") is None  # the default


def test_origins_follow_the_precedence(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://consul.example:8501")
    monkeypatch.setenv("CONSUL_HOST", "consul.internal")
    monkeypatch.setenv("CONSUL_RETRY__MAX_ATTEMPTS", "4")
    handler_settings = ConsulSettings(retry={"initial_delay_seconds": 0.5})
    assert handler_settings.origin("host") == "environment variable CONSUL_HOST"
    assert handler_settings.origin("port") == "environment variable CONSUL_HTTP_ADDR"
    assert handler_settings.origin("scheme") == "environment variable CONSUL_HTTP_ADDR"
    assert handler_settings.origin("retry.max_attempts") == (
        "environment variable CONSUL_RETRY__MAX_ATTEMPTS"
    )
    assert handler_settings.origin("retry.initial_delay_seconds") == (
        "the ConsulSettings argument 'retry.initial_delay_seconds'"
    )


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("CONSUL_CACERT", "cacert"),
        ("CONSUL_CAPATH", "capath"),
        ("CONSUL_CLIENT_CERT", "client_cert"),
    ],
)
async def test_a_missing_tls_file_names_its_variable(monkeypatch, tmp_path, variable, field):
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    monkeypatch.setenv(variable, str(missing))
    error = await initialize_error()
    checked(error, field, f"environment variable {variable}")


async def test_a_unix_socket_cannot_carry_https(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "unix:///run/consul/http.sock")
    monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    error = await initialize_error()
    checked(error, "unix_socket", "environment variable CONSUL_HTTP_ADDR")
    assert "CONSUL_HTTP_SSL" in error.message


async def test_a_unix_socket_and_a_host_on_one_level_is_an_error():
    error = await initialize_error({"host": "127.0.0.1", "unix_socket": "/run/consul.sock"})
    assert error.context.field == "unix_socket"
    assert "the initialize() key 'host'" in error.message
    assert "the initialize() key 'unix_socket'" in error.message
