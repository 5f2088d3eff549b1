"""Consul's HTTP API on a unix socket: ``CONSUL_HTTP_ADDR=unix:///path``, ``unix_socket``.

A real agent serves its API on a unix socket (``addresses.http``) beside the loopback TCP
port the harness probes; the handler and the ``handler-consul`` console script talk to it
through the socket only, under the same deadline rules as over TCP.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent
from support import clean_env, envelope, uniq

from handler_consul import HandlerConsul, InfraConnectionError, InfraTimeoutError

pytestmark = [pytest.mark.consul, pytest.mark.usefixtures("clean_consul_env")]


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    # Short on purpose: a unix socket path has at most 107 bytes, pytest's tmp paths can be long.
    path = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class _UnixAgent(ConsulAgent):
    """A dev agent whose HTTP API listens on loopback TCP and on ``unix_socket``."""

    def __init__(self, consul_bin: str, unix_socket: Path, **kwargs: Any) -> None:
        super().__init__(consul_bin, **kwargs)
        self.unix_socket = str(unix_socket)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        # Both: the harness probes readiness over TCP, the handler under test uses the socket.
        cfg["addresses"] = {"http": f"{self.host} unix://{self.unix_socket}"}
        return cfg


@pytest.fixture(scope="module")
def unix_agent(
    consul_bin: str, tmp_path_factory: pytest.TempPathFactory, socket_dir: Path
) -> Iterator[_UnixAgent]:
    sock = socket_dir / "http.sock"
    agent = _UnixAgent(consul_bin, sock, name="unix-dev", base_dir=tmp_path_factory.mktemp("unix"))
    try:
        agent.start()
        assert sock.is_socket()
        yield agent
    finally:
        agent.close()


async def round_trip(handler: HandlerConsul, agent: _UnixAgent) -> None:
    """kv_put then kv_get through the handler; the value is on ``agent`` (read over TCP)."""
    key = f"{uniq('unix')}/k"
    put = await handler.execute(envelope("kv_put", key=key, value="over-unix"))
    got = await handler.execute(envelope("kv_get", key=key))
    assert put.result == {"key": key, "applied": True}
    assert (got.result["found"], got.result["value"]) == (True, "over-unix")
    assert agent.request("GET", f"/v1/kv/{key}?raw").body == b"over-unix"


async def test_consul_http_addr_unix_reaches_the_agent(monkeypatch, unix_agent):
    path = unix_agent.unix_socket
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"unix://{path}")
    async with HandlerConsul() as handler:
        await round_trip(handler, unix_agent)
        assert (await handler.health_check())["healthy"] is True
        info = handler.describe()
        assert info["settings"]["unix_socket"] == path
        assert f"unix://{path}" in repr(handler)


async def test_the_unix_socket_key_beats_a_tcp_address_below_it(monkeypatch, unix_agent, dead_port):
    # Nothing listens on the TCP address: only the socket can answer.
    monkeypatch.setenv("CONSUL_HOST", "127.0.0.1")
    monkeypatch.setenv("CONSUL_PORT", str(dead_port))
    handler = HandlerConsul()
    await handler.initialize({"unix_socket": unix_agent.unix_socket, "timeout_seconds": 5})
    try:
        await round_trip(handler, unix_agent)
    finally:
        await handler.shutdown()


async def test_consul_unix_socket_beats_consul_http_addr(monkeypatch, unix_agent, dead_port):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{dead_port}")
    monkeypatch.setenv("CONSUL_UNIX_SOCKET", f"unix://{unix_agent.unix_socket}")
    async with HandlerConsul() as handler:
        await round_trip(handler, unix_agent)


async def test_a_tcp_address_beats_a_unix_socket_below_it(monkeypatch, unix_agent):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "unix:///nonexistent/consul.sock")
    monkeypatch.setenv("CONSUL_HOST", unix_agent.host)
    monkeypatch.setenv("CONSUL_PORT", str(unix_agent.port))
    async with HandlerConsul() as handler:
        await round_trip(handler, unix_agent)
        assert handler.describe()["settings"]["unix_socket"] is None


async def test_a_missing_socket_is_a_connection_error_naming_it(socket_dir):
    missing = str(socket_dir / "absent.sock")
    handler = HandlerConsul()
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize({"unix_socket": missing, "retry": {"max_attempts": 1}})
    error = caught.value
    assert f"unix://{missing}" in error.message
    assert "FileNotFoundError" in error.message
    assert error.context.request_sent is False


async def test_a_silent_socket_is_bounded_by_the_deadline(socket_dir):
    # A listener that never accepts: the connect completes in the kernel's backlog, the
    # request is written, and no answer ever comes.
    path = str(socket_dir / f"{uniq('silent')}.sock")  # one per test: it runs in each I/O mode
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    handler = HandlerConsul()
    try:
        listener.bind(path)
        listener.listen(8)
        started = time.monotonic()
        with pytest.raises(InfraTimeoutError) as caught:
            await handler.initialize(
                {"unix_socket": path, "timeout_seconds": 1.0, "retry": {"max_attempts": 1}}
            )
    finally:
        listener.close()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed
    # Sent, then no answer: whichever of the transport or the pool saw the deadline first.
    assert caught.value.context.request_sent is True


def test_the_console_script_health_over_the_socket(unix_agent):
    script = Path(sys.executable).parent / "handler-consul"
    result = subprocess.run(
        [str(script), "health"],
        capture_output=True,
        text=True,
        env=clean_env(CONSUL_HTTP_ADDR=f"unix://{unix_agent.unix_socket}"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert report["leader"]
