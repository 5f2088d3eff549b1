"""The token from a file: Consul's CONSUL_HTTP_TOKEN_FILE, our CONSUL_TOKEN_FILE, ``token_file``.

The file is read by ``initialize()`` (so a rotated token is picked up by the next one), its
content is stripped and must be a header-safe token, and a bad file is an
``InfraConfigurationError`` naming ``token_file`` and where it was set. A token and a token
file are alternatives: the highest precedence level that gives either wins, and one level
giving both is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import (
    SENTINEL_TEXT,
    assert_error_clean,
    assert_introspection_clean,
    assert_logs_clean,
    envelope,
    uniq,
)

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraAuthenticationError,
    InfraConfigurationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

WRITE_ANY_KEY = 'key_prefix "" { policy = "write" }'
BOGUS = "11111111-2222-3333-4444-555555555555"  # UUID-shaped, unknown to Consul


@pytest.fixture(scope="module")
def good_token(acl_agent: Any) -> str:
    """A minted token that may write any key (and nothing else)."""
    return str(acl_agent.mint_token(WRITE_ANY_KEY))


def token_file(tmp_path: Path, content: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


async def writes(handler: HandlerConsul, agent: Any) -> None:
    """A write that needs the token succeeds and lands on ``agent``."""
    key = f"{uniq('tokfile')}/k"
    response = await handler.execute(envelope("kv_put", key=key, value="here"))
    assert response.result == {"key": key, "applied": True}
    assert agent.request("GET", f"/v1/kv/{key}?raw", token=agent.management_token).body == b"here"


async def refused(handler: HandlerConsul) -> None:
    with pytest.raises(InfraAuthenticationError):
        await handler.execute(envelope("kv_put", key=f"{uniq('tokfile')}/k", value="v"))


async def initialize_fails(config: dict[str, Any] | None = None) -> InfraConfigurationError:
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize(config)
    error = caught.value
    assert error.context.category == "configuration"
    assert error.__cause__ is None
    assert error.__context__ is None
    assert handler.describe()["initialized"] is False
    return error


# -- the token file's token is used ---------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CONSUL_HTTP_TOKEN_FILE", "CONSUL_TOKEN_FILE"])
async def test_a_token_file_variable_authorizes_writes(
    monkeypatch, acl_agent, good_token, tmp_path, variable
):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv(variable, str(token_file(tmp_path, good_token + "\n")))
    async with HandlerConsul() as handler:
        await writes(handler, acl_agent)


async def test_the_token_file_key_of_initialize_authorizes_writes(acl_agent, good_token, tmp_path):
    handler = HandlerConsul()
    path = token_file(tmp_path, f"  \n{good_token}\r\n\t")  # surrounding whitespace is dropped
    await handler.initialize(
        {"host": acl_agent.host, "port": acl_agent.port, "token_file": str(path)}
    )
    try:
        await writes(handler, acl_agent)
        settings = handler.describe()["settings"]
        assert settings["token_configured"] is True
        assert settings["token_file"] == str(path)
    finally:
        await handler.shutdown()


async def test_without_the_token_the_same_write_is_refused(monkeypatch, acl_agent):
    # The control for the tests above: the ACL agent denies an anonymous write.
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    async with HandlerConsul() as handler:
        await refused(handler)


async def test_each_initialize_reads_the_file_again(monkeypatch, acl_agent, good_token, tmp_path):
    path = token_file(tmp_path, good_token)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(path))
    handler = HandlerConsul()
    await handler.initialize()
    try:
        await writes(handler, acl_agent)
        path.write_text(BOGUS)  # rotated (here, to a token Consul does not know)
        await writes(handler, acl_agent)  # the running handler keeps the token it read
        await handler.initialize()
        await refused(handler)
        path.write_text(good_token)
        await handler.initialize()
        await writes(handler, acl_agent)
    finally:
        await handler.shutdown()


# -- precedence: the highest level that gives a token or a token file wins ------------------------


async def test_initialize_token_beats_an_exported_token_file(monkeypatch, acl_agent, good_token):
    # The lower file does not exist: reading it would fail initialize().
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/consul-token")
    monkeypatch.setenv("CONSUL_TOKEN_FILE", "/nonexistent/consul-token")
    handler = HandlerConsul()
    await handler.initialize({"host": acl_agent.host, "port": acl_agent.port, "token": good_token})
    try:
        await writes(handler, acl_agent)
        assert handler.describe()["settings"]["token_file"] is None
    finally:
        await handler.shutdown()


async def test_initialize_token_file_beats_consul_token(
    monkeypatch, acl_agent, good_token, tmp_path
):
    monkeypatch.setenv("CONSUL_TOKEN", BOGUS)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", BOGUS)
    handler = HandlerConsul()
    path = token_file(tmp_path, good_token)
    await handler.initialize(
        {"host": acl_agent.host, "port": acl_agent.port, "token_file": str(path)}
    )
    try:
        await writes(handler, acl_agent)
    finally:
        await handler.shutdown()


async def test_consul_token_beats_consul_http_token_file(monkeypatch, acl_agent, good_token):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/consul-token")
    monkeypatch.setenv("CONSUL_TOKEN", good_token)
    async with HandlerConsul() as handler:
        await writes(handler, acl_agent)


async def test_consul_token_file_beats_consul_http_token(
    monkeypatch, acl_agent, good_token, tmp_path
):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", BOGUS)
    monkeypatch.setenv("CONSUL_TOKEN_FILE", str(token_file(tmp_path, good_token)))
    async with HandlerConsul() as handler:
        await writes(handler, acl_agent)


async def test_an_initialize_token_beats_the_base_settings_token_file(acl_agent, good_token):
    base = ConsulSettings(
        host=acl_agent.host, port=acl_agent.port, token_file="/nonexistent/consul-token"
    )
    handler = HandlerConsul(settings=base)
    await handler.initialize({"token": good_token})
    try:
        await writes(handler, acl_agent)
    finally:
        await handler.shutdown()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"CONSUL_TOKEN": BOGUS, "CONSUL_TOKEN_FILE": "{file}"},
            ("CONSUL_TOKEN", "CONSUL_TOKEN_FILE"),
        ),
        (
            {"CONSUL_HTTP_TOKEN": BOGUS, "CONSUL_HTTP_TOKEN_FILE": "{file}"},
            ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"),
        ),
    ],
)
async def test_a_token_and_a_token_file_on_one_level_is_an_error(monkeypatch, tmp_path, env, named):
    path = token_file(tmp_path, BOGUS)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(file=path))
    error = await initialize_fails()
    assert error.context.field == "token_file"
    for name in named:
        assert name in error.message
    assert BOGUS not in error.message


async def test_a_token_and_a_token_file_in_initialize_is_an_error(tmp_path):
    path = token_file(tmp_path, BOGUS)
    error = await initialize_fails({"token": SENTINEL_TEXT, "token_file": str(path)})
    assert error.context.field == "token_file"
    assert "initialize() key 'token'" in error.message
    assert "initialize() key 'token_file'" in error.message
    assert_error_clean(error)


# -- a bad token file ---------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CONSUL_HTTP_TOKEN_FILE", "CONSUL_TOKEN_FILE"])
async def test_a_missing_token_file_names_the_setting_and_the_variable(
    monkeypatch, tmp_path, variable
):
    missing = tmp_path / "no-such-token"
    monkeypatch.setenv(variable, str(missing))
    error = await initialize_fails()
    assert error.context.field == "token_file"
    assert variable in error.message
    assert str(missing) in error.message
    assert "No such file" in error.message


@pytest.mark.parametrize("content", ["", "\n", "  \t\r\n"])
async def test_an_empty_token_file_is_refused(tmp_path, content):
    path = token_file(tmp_path, content)
    error = await initialize_fails({"token_file": str(path)})
    assert error.context.field == "token_file"
    assert "initialize() key 'token_file'" in error.message
    assert "empty" in error.message


@pytest.mark.parametrize(
    "content",
    [
        f"{SENTINEL_TEXT} with spaces",
        f"{SENTINEL_TEXT}\nInjected: header",
        f"{SENTINEL_TEXT}\u00e9",
        "x" * 5000 + SENTINEL_TEXT,
    ],
)
async def test_a_token_file_without_a_usable_token_is_refused_unshown(
    tmp_path, content, debug_logs
):
    path = tmp_path / "token"
    path.write_bytes(content.encode("utf-8"))
    error = await initialize_fails({"token_file": str(path)})
    assert error.context.field == "token_file"
    assert_error_clean(error)
    assert_logs_clean(debug_logs.records)


async def test_a_directory_is_not_a_token_file(tmp_path):
    error = await initialize_fails({"token_file": str(tmp_path)})
    assert error.context.field == "token_file"
    assert "is not a regular file" in error.message


async def test_a_token_file_under_a_file_is_refused(tmp_path):
    # Unreadable for any user, root included (a mode-000 file is not, for root).
    parent = token_file(tmp_path, BOGUS)
    error = await initialize_fails({"token_file": str(parent / "token")})
    assert error.context.field == "token_file"
    assert "Not a directory" in error.message


# -- never shown ------------------------------------------------------------------------------


async def test_the_file_token_shows_nowhere(monkeypatch, acl_agent, tmp_path, debug_logs):
    # SENTINEL_TEXT stands in for the token: it is not Consul's, so writes are refused, but
    # the handler starts (the leader probe needs no ACL) and every surface can be searched.
    path = token_file(tmp_path, SENTINEL_TEXT)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", acl_agent.http_addr)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(path))
    async with HandlerConsul() as handler:
        with pytest.raises(InfraAuthenticationError) as caught:
            await handler.execute(envelope("kv_put", key=f"{uniq('tokfile')}/k", value="v"))
        assert_error_clean(caught.value)
        assert_introspection_clean(handler)
        settings = handler.describe()["settings"]
        assert settings["token_configured"] is True
        assert settings["token_file"] == str(path)
        assert "token" not in settings
        assert SENTINEL_TEXT not in json.dumps(await handler.health_check())
    assert_logs_clean(debug_logs.records)


def test_settings_hold_the_path_not_the_token(tmp_path):
    path = token_file(tmp_path, SENTINEL_TEXT)
    settings = ConsulSettings(token_file=str(path))
    assert settings.token is None  # read by initialize(), not by the settings
    assert settings.public_dict()["token_configured"] is True
    for text in (repr(settings), settings.model_dump_json(), json.dumps(settings.public_dict())):
        assert SENTINEL_TEXT not in text
