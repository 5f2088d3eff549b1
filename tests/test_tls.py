"""TLS settings are honoured: CA file, verification on by default, verify_tls=false, https scheme.

Consul makes its own CA and server certificate (``consul tls ca create`` / ``cert create``), and
an agent serves HTTPS on a port of its own beside the plain HTTP port the harness probes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent, allocate_ports

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraConfigurationError,
    InfraConnectionError,
    InfraConsulError,
)

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


# -- CONSUL_CAPATH: a directory of CA certificates -------------------------------------------------


@pytest.fixture(scope="module")
def other_ca(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the agent's certificate."""
    work = tmp_path_factory.mktemp("other-ca")
    subprocess.run(
        [consul_bin, "tls", "ca", "create"], cwd=work, check=True, capture_output=True, timeout=60
    )
    return work / "consul-agent-ca.pem"


def _capath(root: Path, *files: tuple[str, Path | bytes]) -> Path:
    """A CA directory as Consul reads one: any file names, nested directories included."""
    for name, content in files:
        path = root / "cas" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.read_bytes())
    (root / "cas").mkdir(exist_ok=True)
    return root / "cas"


async def test_capath_holding_the_agents_ca_round_trips(
    tls_agent: _TlsAgent, other_ca: Path, tmp_path: Path
) -> None:
    capath = _capath(
        tmp_path,
        ("other.pem", other_ca),
        ("nested/agent-ca.crt", tls_agent.certs["ca"]),
    )
    async with HandlerConsul(_settings(tls_agent, capath=str(capath))) as handler:
        put = await handler.execute(
            {"operation": "consul.kv_put", "payload": {"key": "tls/capath", "value": "ok"}}
        )
    assert put.result == {"key": "tls/capath", "applied": True}


async def test_consul_capath_is_read_from_the_environment(
    tls_agent: _TlsAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_consul_env: None
) -> None:
    capath = _capath(tmp_path, ("ca.pem", tls_agent.certs["ca"]))
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"https://localhost:{tls_agent.https_port}")
    monkeypatch.setenv("CONSUL_CAPATH", str(capath))
    async with HandlerConsul() as handler:
        assert handler.describe()["settings"]["capath"] == str(capath)
        assert (await handler.health_check())["healthy"] is True


async def test_capath_without_the_agents_ca_fails_verification(
    tls_agent: _TlsAgent, other_ca: Path, tmp_path: Path
) -> None:
    # The directory replaces the system store, as CONSUL_CAPATH does for Consul's CLI.
    capath = _capath(tmp_path, ("other.pem", other_ca))
    handler = HandlerConsul(_settings(tls_agent, capath=str(capath)))
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    assert SENTINEL not in str(caught.value.to_dict())


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ((), "holds no certificate file"),
        ((("README", b"not a certificate\n"),), "cannot load"),
    ],
)
async def test_a_capath_that_cannot_be_used_is_a_configuration_error(
    tls_agent: _TlsAgent, tmp_path: Path, files: tuple[tuple[str, bytes], ...], reason: str
) -> None:
    capath = _capath(tmp_path, *files)
    handler = HandlerConsul(_settings(tls_agent, capath=str(capath)))
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize()
    assert caught.value.context.field == "capath"
    assert reason in caught.value.message
    assert "the ConsulSettings argument 'capath'" in caught.value.message


async def test_cacert_takes_precedence_over_capath(tls_agent: _TlsAgent, tmp_path: Path) -> None:
    # As in Consul: with a CA file, the directory is not read (this one would be refused).
    capath = _capath(tmp_path, ("README", b"not a certificate\n"))
    settings = _settings(tls_agent, cacert=str(tls_agent.certs["ca"]), capath=str(capath))
    async with HandlerConsul(settings) as handler:
        assert (await handler.health_check())["healthy"] is True


# -- CONSUL_TLS_SERVER_NAME: the name verified (and sent as SNI) instead of the host ---------------
# The agent's certificate names server.dc1.consul, localhost and 127.0.0.1.


async def test_the_server_name_is_verified_instead_of_the_host(tls_agent: _TlsAgent) -> None:
    settings = _settings(
        tls_agent,
        host="127.0.0.1",
        cacert=str(tls_agent.certs["ca"]),
        tls_server_name="server.dc1.consul",
    )
    async with HandlerConsul(settings) as handler:
        assert (await handler.health_check())["healthy"] is True
        assert handler.describe()["settings"]["tls_server_name"] == "server.dc1.consul"


async def test_a_wrong_server_name_fails_verification(tls_agent: _TlsAgent) -> None:
    # The host alone (127.0.0.1) is in the certificate: only the name can make this fail.
    settings = _settings(
        tls_agent,
        host="127.0.0.1",
        cacert=str(tls_agent.certs["ca"]),
        tls_server_name="client.dc1.consul",
    )
    handler = HandlerConsul(settings)
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    message = caught.value.message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert f"127.0.0.1:{tls_agent.https_port}" in message
    async with HandlerConsul(settings.model_copy(update={"tls_server_name": None})) as plain:
        assert (await plain.health_check())["healthy"] is True


async def test_consul_tls_server_name_is_read_from_the_environment(
    tls_agent: _TlsAgent, monkeypatch: pytest.MonkeyPatch, clean_consul_env: None
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"https://127.0.0.1:{tls_agent.https_port}")
    monkeypatch.setenv("CONSUL_CACERT", str(tls_agent.certs["ca"]))
    monkeypatch.setenv("CONSUL_TLS_SERVER_NAME", "wrong.dc1.consul")
    handler = HandlerConsul()
    with pytest.raises(InfraConnectionError):
        await handler.initialize()
    monkeypatch.setenv("CONSUL_TLS_SERVER_NAME", "server.dc1.consul")
    async with HandlerConsul() as handler:
        assert (await handler.health_check())["healthy"] is True


class _SniRecorder:
    """A TLS server with the agent's certificate that records the SNI of each handshake and
    answers every request as /v1/status/leader would."""

    def __init__(self, certs: dict[str, Path]) -> None:
        self.names: list[str | None] = []
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certs["cert"], certs["key"])
        self._context.sni_callback = lambda sock, name, context: self.names.append(name)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            with (
                contextlib.suppress(OSError),
                self._context.wrap_socket(raw, server_side=True) as conn,
            ):
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise OSError("closed before a whole request")
                    received += chunk
                body = b'"127.0.0.1:8300"'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)


@pytest.mark.parametrize(
    ("host", "server_name", "sent"),
    [
        ("127.0.0.1", "server.dc1.consul", "server.dc1.consul"),
        ("localhost", "server.dc1.consul", "server.dc1.consul"),
        ("localhost", None, "localhost"),
    ],
)
async def test_the_server_name_is_the_sni(
    tls_agent: _TlsAgent, host: str, server_name: str | None, sent: str
) -> None:
    recorder = _SniRecorder(tls_agent.certs)
    try:
        settings = _settings(
            tls_agent,
            host=host,
            port=recorder.port,
            cacert=str(tls_agent.certs["ca"]),
            tls_server_name=server_name,
        )
        async with HandlerConsul(settings) as handler:
            assert (await handler.health_check())["healthy"] is True
    finally:
        recorder.close()
    assert recorder.names
    assert set(recorder.names) == {sent}
