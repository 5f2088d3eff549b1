"""Inputs an adversary picks: each is refused with its field named, and nothing reaches Consul.

- A health check may not turn the agent on its own API (PUT to /v1/agent/service/deregister/..,
  a write to /v1/kv/..), however the URL is spelled, unless the settings widen it.
- Validators match whole strings (a trailing newline is not a valid id) and refuse text that
  cannot travel to Consul unchanged (lone surrogates).
- Settings that would break the handler later are refused when they are read, naming the
  setting or the variable, never echoing the token.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import urllib.request
from typing import Any

import pytest
from harness import ConsulAgent, CountingProxy
from support import envelope, uniq

from handler_consul import ConsulSettings, InfraConfigurationError, InfraValidationError

pytestmark = pytest.mark.consul


def _services(agent: ConsulAgent) -> dict[str, Any]:
    url = f"http://{agent.http_addr}/v1/agent/services"
    with urllib.request.urlopen(url, timeout=5) as resp:
        services: dict[str, Any] = json.loads(resp.read())
    return services


async def _refused(handler: Any, proxy: CountingProxy, env: dict[str, Any], field: str) -> None:
    proxy.reset()
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(env)
    assert caught.value.context.field == field
    assert proxy.requests == 0


# -- health checks aimed at the Consul API -------------------------------------------------------


async def test_a_check_that_would_deregister_a_live_service_is_refused(
    make_handler: Any, consul_agent: ConsulAgent, counting_proxy: CountingProxy
) -> None:
    """The reproduced exploit: a PUT check on the agent's deregister URL, interval 1 s."""
    handler = await make_handler(counting_proxy)
    victim = uniq("payments")
    await handler.execute(envelope("register", service_id=victim, name="payments"))
    deregister_url = f"http://{consul_agent.http_addr}/v1/agent/service/deregister/{victim}"
    check = {"http": deregister_url, "method": "PUT", "interval": "1s"}
    await _refused(
        handler,
        counting_proxy,
        envelope("register", service_id=uniq("evil"), name="evil", check=check),
        "payload.check.http",
    )
    assert victim in _services(consul_agent)


@pytest.mark.parametrize(
    "url",
    [
        "http://{agent}/v1/kv/x",  # the agent's own address
        "http://localhost:{port}/ui/",  # the agent under another loopback name, any path
        "http://[::1]:{port}/",
        "http://0.0.0.0:{port}/",  # the unspecified address lands on this host
        "http://[::]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped loopback
        "http://[::ffff:7f00:1]:{port}/",
        "http://example.invalid/v1/agent/service/deregister/x",  # any host, the API path
        "http://example.invalid//v1/kv/x",
        "http://example.invalid/./v1/kv/x",
        "http://example.invalid/health/../v1/kv/x",
        "http://example.invalid/%76%31/kv/x",
        "http://example.invalid/%2576%2531/kv/x",
        "http://example.invalid/v1",
    ],
)
async def test_a_check_aimed_at_the_consul_api_is_refused_however_it_is_spelled(
    url: str, make_handler: Any, consul_agent: ConsulAgent, counting_proxy: CountingProxy
) -> None:
    handler = await make_handler(counting_proxy)
    # The counting proxy is what the handler calls "Consul": point the check at it.
    target = url.format(agent=counting_proxy.http_addr, port=counting_proxy.port)
    check = {"http": target, "interval": "10s"}
    env = envelope("register", service_id=uniq("chk"), name="chk", check=check)
    await _refused(handler, counting_proxy, env, "payload.check.http")


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_a_check_may_only_read_unless_the_settings_allow_more(
    method: str, make_handler: Any, counting_proxy: CountingProxy
) -> None:
    check = {"http": "http://127.0.0.1:9/health", "method": method, "interval": "10s"}
    env = envelope("register", service_id=uniq("m"), name="m", check=check)
    strict = await make_handler(counting_proxy)
    await _refused(strict, counting_proxy, env, "payload.check.method")
    wide = await make_handler(
        counting_proxy, checks={"allowed_methods": ["GET", "HEAD", "POST", "PUT"]}
    )
    counting_proxy.reset()
    response = await wide.execute(env)
    assert response.result["registered"] is True
    assert counting_proxy.paths == ["/v1/agent/service/register"]
    await wide.execute(envelope("deregister", service_id=env["payload"]["service_id"]))


async def test_allow_consul_api_lets_an_operator_aim_a_check_at_the_agent(
    make_handler: Any, consul_agent: ConsulAgent, counting_proxy: CountingProxy
) -> None:
    handler = await make_handler(counting_proxy, checks={"allow_consul_api": True})
    sid = uniq("self-check")
    check = {"http": f"{consul_agent.url}/v1/status/leader", "interval": "10s"}
    response = await handler.execute(envelope("register", service_id=sid, name="s", check=check))
    assert response.result["registered"] is True
    await handler.execute(envelope("deregister", service_id=sid))


# -- whole-string matching and encodable text ---------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "payload", "field"),
    [
        ("register", {"service_id": "rv-nl\n", "name": "rv"}, "payload.service_id"),
        ("register", {"name": "rv\n"}, "payload.name"),
        ("register", {"name": "rv", "address": "10.0.0.1\n"}, "payload.address"),
        ("register", {"name": "rv", "address": "host.example\n"}, "payload.address"),
        ("register", {"name": "rv", "meta": {"k\n": "v"}}, "payload.meta"),
        ("register", {"name": "rv", "check": {"ttl": "10s\n"}}, "payload.check.ttl"),
        ("deregister", {"service_id": "rv-nl\n"}, "payload.service_id"),
        ("kv_put", {"key": "k", "value": "v", "acquire": f"{'0' * 8}-0000-0000-0000-{'0' * 12}\n"},
         "payload.acquire"),
        ("kv_put", {"key": "k", "value": "a\udc80"}, "payload.value"),
        ("register", {"name": "rv", "meta": {"k": "a\ud800"}}, "payload.meta"),
        ("register", {"name": "rv", "check": {"ttl": "10s", "notes": "\udfff"}},
         "payload.check.notes"),
        ("kv_put", {"key": "k\udc80", "value": "v"}, "payload.key"),
        ("register", {"name": "rv", "tags": ["t\ud800"]}, "payload.tags.0"),
    ],
)  # fmt: skip
async def test_inputs_that_only_almost_match_are_refused(
    operation: str,
    payload: dict[str, Any],
    field: str,
    make_handler: Any,
    counting_proxy: CountingProxy,
) -> None:
    handler = await make_handler(counting_proxy)
    await _refused(handler, counting_proxy, envelope(operation, **payload), field)


# -- settings ------------------------------------------------------------------------------------

TOKEN_LIKE = "sentinel-\u00e9t\u00e9-token"


@pytest.mark.parametrize(
    "token", [TOKEN_LIKE, "two words", "line\nbreak", "tab\tbed", "\u4e2d\u6587"]
)
def test_a_token_that_is_not_printable_ascii_is_refused_without_echoing_it(
    token: str, clean_consul_env: None
) -> None:
    with pytest.raises(InfraConfigurationError) as caught:
        ConsulSettings(token=token)
    error = caught.value
    assert error.context.field == "token"
    assert "printable ASCII" in error.message
    assert token not in repr(error.to_dict())
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize("value", ["{not json", "[1, 2", '{"max_attempts": '])
def test_a_malformed_nested_variable_names_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch, clean_consul_env: None
) -> None:
    monkeypatch.setenv("CONSUL_RETRY", value)
    with pytest.raises(InfraConfigurationError) as caught:
        ConsulSettings()
    assert caught.value.context.field == "retry"
    assert "CONSUL_RETRY" in caught.value.message
    assert caught.value.__context__ is None


@pytest.mark.parametrize(
    ("setting", "value"), [("max_queued_operations", 0), ("max_wait_seconds", 0.0)]
)
def test_pool_settings_that_would_refuse_every_call_are_refused(
    setting: str, value: float, clean_consul_env: None
) -> None:
    with pytest.raises(InfraConfigurationError) as caught:
        ConsulSettings(**{setting: value})
    assert caught.value.context.field == setting


async def test_a_missing_ca_file_is_a_configuration_error_naming_the_setting(
    consul_agent: ConsulAgent, clean_consul_env: None, tmp_path: Any
) -> None:
    from handler_consul import HandlerConsul

    missing = str(tmp_path / "no-such-ca.pem")
    handler = HandlerConsul(
        ConsulSettings(
            host=consul_agent.host, port=consul_agent.port, scheme="https", cacert=missing,
            token="sentinel-token-for-the-ca-test",
        )
    )  # fmt: skip
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize()
    error = caught.value
    assert error.context.field == "cacert"
    assert "No such file" in error.message
    assert error.__cause__ is None
    assert error.__context__ is None  # the OSError's frames (settings, token) are not attached


class _RedirectToConsul(http.server.BaseHTTPRequestHandler):
    """A check target that answers with a redirect to the agent's KV API."""

    location = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_check_cannot_follow_a_redirect_into_the_consul_api(
    make_handler: Any, consul_agent: ConsulAgent
) -> None:
    """Consul follows redirects for http checks unless told not to, and publishes the answer
    as the check's output: a redirect to /v1/kv/<secret>?raw would publish the secret."""
    handler = await make_handler(consul_agent)
    key, secret = f"{uniq('secret')}/db", uniq("hunter2")
    await handler.execute(envelope("kv_put", key=key, value=secret))
    target = type(
        "Redirect",
        (_RedirectToConsul,),
        {"location": f"http://{consul_agent.http_addr}/v1/kv/{key}?raw"},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), target)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sid = uniq("redirect")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        check = {"http": url, "interval": "1s", "timeout": "1s"}
        await handler.execute(envelope("register", service_id=sid, name="r", check=check))
        output = ""
        deadline = time.monotonic() + 10
        while "302" not in output and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            checks = await asyncio.to_thread(_agent_checks, consul_agent)
            output = next((c["Output"] for c in checks.values() if c["ServiceID"] == sid), "")
        assert "302" in output  # the check saw the redirect and did not follow it
        assert secret not in output
    finally:
        await handler.execute(envelope("deregister", service_id=sid))
        server.shutdown()
        server.server_close()
        thread.join(5)


def _agent_checks(agent: ConsulAgent) -> dict[str, Any]:
    url = f"http://{agent.http_addr}/v1/agent/checks"
    with urllib.request.urlopen(url, timeout=5) as resp:
        checks: dict[str, Any] = json.loads(resp.read())
    return checks


async def test_following_redirects_needs_the_consul_api_allowance(
    make_handler: Any, counting_proxy: CountingProxy
) -> None:
    check = {"http": "http://127.0.0.1:9/health", "interval": "10s", "disable_redirects": False}
    env = envelope("register", service_id=uniq("follow"), name="f", check=check)
    strict = await make_handler(counting_proxy)
    await _refused(strict, counting_proxy, env, "payload.check.disable_redirects")
    wide = await make_handler(counting_proxy, checks={"allow_consul_api": True})
    counting_proxy.reset()
    assert (await wide.execute(env)).result["registered"] is True
    assert counting_proxy.paths == ["/v1/agent/service/register"]
    await wide.execute(envelope("deregister", service_id=env["payload"]["service_id"]))
