"""TLS settings are honoured: CA file, verification on by default, verify_tls=false, https scheme.

Consul makes its own CA and server certificate (``consul tls ca create`` / ``cert create``), and
an agent serves HTTPS on a port of its own beside the plain HTTP port the harness probes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent, allocate_ports

from handler_consul import ConsulSettings, HandlerConsul, InfraConnectionError, InfraConsulError

pytestmark = pytest.mark.consul

SENTINEL = "tls-sentinel-token-5b0e7c41"


class _TlsAgent(ConsulAgent):
    """A dev agent that also serves HTTPS with a certificate signed by its own CA."""

    def __init__(self, consul_bin: str, certs: dict[str, Path], **kwargs: Any) -> None:
        super().__init__(consul_bin, **kwargs)
        (self.https_port,) = allocate_ports(1)
        self.certs = certs

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["ports"] = {**cfg["ports"], "https": self.https_port}
        cfg["tls"] = {
            "defaults": {
                "ca_file": str(self.certs["ca"]),
                "cert_file": str(self.certs["cert"]),
                "key_file": str(self.certs["key"]),
                "verify_incoming": False,
            }
        }
        return cfg


@pytest.fixture(scope="module")
def tls_agent(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TlsAgent]:
    work = tmp_path_factory.mktemp("tls")
    for argv in (
        [consul_bin, "tls", "ca", "create"],
        [consul_bin, "tls", "cert", "create", "-server", "-dc", "dc1"],
    ):
        subprocess.run(argv, cwd=work, check=True, capture_output=True, timeout=60)
    certs = {
        "ca": work / "consul-agent-ca.pem",
        "cert": work / "dc1-server-consul-0.pem",
        "key": work / "dc1-server-consul-0-key.pem",
    }
    agent = _TlsAgent(consul_bin, certs, name="tls-dev", base_dir=work)
    try:
        agent.start()
        yield agent
    finally:
        agent.close()


def _settings(agent: _TlsAgent, **overrides: Any) -> ConsulSettings:
    # The certificate names localhost and 127.0.0.1 (consul tls cert create's defaults).
    values: dict[str, Any] = {
        "host": "localhost",
        "port": agent.https_port,
        "scheme": "https",
        "timeout_seconds": 5.0,
        "token": SENTINEL,
        "retry": {"max_attempts": 1},
    }
    values.update(overrides)
    return ConsulSettings(**values)


async def test_https_with_the_agents_ca_round_trips(tls_agent: _TlsAgent) -> None:
    settings = _settings(tls_agent, cacert=str(tls_agent.certs["ca"]))
    async with HandlerConsul(settings) as handler:
        put = await handler.execute(
            {"operation": "consul.kv_put", "payload": {"key": "tls/k", "value": "over-tls"}}
        )
        got = await handler.execute({"operation": "consul.kv_get", "payload": {"key": "tls/k"}})
    assert put.result == {"key": "tls/k", "applied": True}
    assert (got.result["found"], got.result["value"]) == (True, "over-tls")


async def test_verification_is_on_by_default(tls_agent: _TlsAgent) -> None:
    # Without the agent's CA the system trust store cannot verify it: initialize refuses.
    handler = HandlerConsul(_settings(tls_agent))
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    assert "SSL" in caught.value.message or "certificate" in caught.value.message.lower()
    assert SENTINEL not in repr(caught.value)
    assert SENTINEL not in str(caught.value.to_dict())
    assert handler.describe()["initialized"] is False


async def test_verify_tls_false_skips_verification(tls_agent: _TlsAgent) -> None:
    async with HandlerConsul(_settings(tls_agent, verify_tls=False)) as handler:
        health = await handler.health_check()
    assert health["healthy"] is True
    assert health["leader"]


async def test_consul_http_ssl_verify_env_turns_verification_off(
    tls_agent: _TlsAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_SSL_VERIFY", "false")
    monkeypatch.setenv("CONSUL_HOST", "localhost")
    monkeypatch.setenv("CONSUL_PORT", str(tls_agent.https_port))
    monkeypatch.setenv("CONSUL_SCHEME", "https")
    handler = HandlerConsul()
    await handler.initialize()
    try:
        assert handler.describe()["settings"]["verify_tls"] is False
        assert (await handler.health_check())["healthy"] is True
    finally:
        await handler.shutdown()


async def test_plain_http_to_the_https_port_is_refused_with_400(tls_agent: _TlsAgent) -> None:
    # Go's TLS server answers a plain-HTTP request with "400 Client sent an HTTP request to
    # an HTTPS server": a rejection, not an outage, so it is not retried.
    handler = HandlerConsul(_settings(tls_agent, scheme="http"))
    with pytest.raises(InfraConsulError) as caught:
        await handler.initialize()
    assert caught.value.context.status_code == 400
    assert "HTTPS" in caught.value.message
