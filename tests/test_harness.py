"""The harness itself works against real processes: agents, ACLs, a cluster, toxiproxy."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from harness import (
    AclConsulAgent,
    ConsulAgent,
    ConsulCluster,
    CountingProxy,
    Toxiproxy,
    allocate_ports,
    release_ports,
)

HERE = Path(__file__).resolve().parent


def _http(
    addr: str,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One request with http.client directly, so the harness checks itself independently."""
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"X-Consul-Token": token} if token else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _key() -> str:
    return f"harness-test/{uuid.uuid4().hex}"


def _round_trip(addr: str) -> float:
    start = time.monotonic()
    status, body = _http(addr, "GET", "/v1/status/leader")
    elapsed = time.monotonic() - start
    assert status == 200, body
    return elapsed


# ---- ports -------------------------------------------------------------------------------
def test_ports_are_never_handed_out_twice() -> None:
    first = allocate_ports(4)
    second = allocate_ports(4)
    try:
        assert len(set(first) | set(second)) == 8
        assert all(20000 <= p <= 32000 for p in first + second)
    finally:
        release_ports(first)
        release_ports(second)


# ---- dev agent ---------------------------------------------------------------------------
@pytest.mark.consul
def test_agent_answers_leader_and_kv_round_trip(consul_agent: ConsulAgent) -> None:
    assert consul_agent.host == "127.0.0.1"
    assert consul_agent.http_addr == f"127.0.0.1:{consul_agent.http_port}"
    assert consul_agent.url == f"http://127.0.0.1:{consul_agent.http_port}"

    status, body = _http(consul_agent.http_addr, "GET", "/v1/status/leader")
    assert status == 200
    assert json.loads(body) == consul_agent.server_addr

    key = _key()
    status, body = _http(consul_agent.http_addr, "PUT", f"/v1/kv/{key}", b"hello consul")
    assert (status, body.strip()) == (200, b"true")
    status, body = _http(consul_agent.http_addr, "GET", f"/v1/kv/{key}?raw")
    assert (status, body) == (200, b"hello consul")


@pytest.mark.consul
def test_agent_dns_and_grpc_are_disabled(consul_agent: ConsulAgent) -> None:
    ports = consul_agent.request("GET", "/v1/agent/self").json()["DebugConfig"]
    assert ports["DNSPort"] == -1
    assert ports["GRPCPort"] == -1
    assert ports["GRPCTLSPort"] == -1
    assert ports["HTTPPort"] == consul_agent.http_port
    # Long enough that a black-holed request hangs instead of being closed by Consul.
    assert ports["HTTPReadHeaderTimeout"] == ports["HTTPIdleTimeout"] == "1h0m0s"


@pytest.mark.consul
def test_fresh_agent_can_be_killed_and_restarted(fresh_consul_agent: ConsulAgent) -> None:
    agent = fresh_consul_agent
    pid, port = agent.pid, agent.http_port
    agent.kill()
    assert not agent.running
    with pytest.raises(ConnectionRefusedError):
        _http(agent.http_addr, "GET", "/v1/status/leader", timeout=1.0)
    agent.restart()
    assert agent.running
    assert agent.pid != pid
    assert agent.http_port == port
    assert _round_trip(agent.http_addr) < 5
    assert "harness: starting" in agent.log_tail(500)


# ---- ACL agent ---------------------------------------------------------------------------
@pytest.mark.consul
def test_acl_agent_refuses_anonymous_and_accepts_minted_token(acl_agent: AclConsulAgent) -> None:
    addr = acl_agent.http_addr
    key = _key()

    # Needs no permission at all (the handler's connectivity check relies on it).
    status, _ = _http(addr, "GET", "/v1/status/leader")
    assert status == 200
    status, _ = _http(addr, "GET", "/v1/agent/self")
    assert status == 403

    status, body = _http(addr, "PUT", f"/v1/kv/{key}", b"anonymous")
    assert status == 403, body

    status, body = _http(addr, "PUT", f"/v1/kv/{key}", b"x", token=str(uuid.uuid4()))
    assert status == 403
    assert body.decode().strip() == "ACL not found"

    token = acl_agent.mint_token('key_prefix "" { policy = "write" }')
    status, body = _http(addr, "PUT", f"/v1/kv/{key}", b"minted", token=token)
    assert (status, body.strip()) == (200, b"true")
    status, body = _http(addr, "GET", f"/v1/kv/{key}?raw", token=token)
    assert (status, body) == (200, b"minted")
    # A key-scoped token still cannot read the agent.
    status, _ = _http(addr, "GET", "/v1/agent/self", token=token)
    assert status == 403

    status, _ = _http(addr, "GET", "/v1/agent/self", token=acl_agent.management_token)
    assert status == 200


@pytest.mark.consul
def test_minted_read_only_token_cannot_write(acl_agent: AclConsulAgent) -> None:
    token = acl_agent.mint_token('key_prefix "harness-test/" { policy = "read" }')
    status, _ = _http(acl_agent.http_addr, "PUT", f"/v1/kv/{_key()}", b"x", token=token)
    assert status == 403


# ---- cluster -----------------------------------------------------------------------------
@pytest.mark.consul
@pytest.mark.slow
def test_cluster_elects_new_leader_after_leader_is_killed(consul_cluster: ConsulCluster) -> None:
    cluster = consul_cluster
    leader = cluster.leader()
    assert len(cluster.followers()) == 2
    peers = json.loads(_http(leader.http_addr, "GET", "/v1/status/peers")[1])
    assert sorted(peers) == sorted(a.server_addr for a in cluster.agents)

    started = time.monotonic()
    killed = cluster.kill_leader()
    assert killed is leader
    assert not killed.running
    new_leader = cluster.wait_for_leader(exclude=killed, timeout=30)
    failover = time.monotonic() - started
    assert new_leader is not killed
    assert failover < 20, f"failover took {failover:.1f}s"

    key = _key()
    status, body = _http(new_leader.http_addr, "PUT", f"/v1/kv/{key}", b"after failover")
    assert (status, body.strip()) == (200, b"true")
    follower = next(a for a in cluster.followers() if a is not new_leader)
    status, body = _http(follower.http_addr, "GET", f"/v1/kv/{key}?raw&consistent")
    assert (status, body) == (200, b"after failover")

    # The killed server comes back (same ports, same data dir), follows, and catches up.
    cluster.restart(killed)
    assert killed.running
    assert cluster.wait_for_leader() is new_leader
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, body = _http(killed.http_addr, "GET", f"/v1/kv/{key}?raw&stale")
        if status == 200:
            break
        time.sleep(0.05)
    assert (status, body) == (200, b"after failover")


# ---- toxiproxy ---------------------------------------------------------------------------
@pytest.mark.consul
def test_toxiproxy_latency_shows_in_round_trip(toxiproxy: Toxiproxy) -> None:
    baseline = min(_round_trip(toxiproxy.listen_addr) for _ in range(3))
    assert baseline < 0.1, f"baseline round trip {baseline:.3f}s"

    toxiproxy.latency(200)
    slowed = min(_round_trip(toxiproxy.listen_addr) for _ in range(2))
    assert slowed >= 0.2, f"round trip with 200 ms latency was {slowed:.3f}s"

    toxiproxy.clear()
    assert toxiproxy.toxics() == []
    assert min(_round_trip(toxiproxy.listen_addr) for _ in range(3)) < 0.1


@pytest.mark.consul
def test_toxiproxy_down_up_timeout_reset(toxiproxy: Toxiproxy) -> None:
    addr = toxiproxy.listen_addr
    toxiproxy.down()
    with pytest.raises(ConnectionRefusedError):
        _http(addr, "GET", "/v1/status/leader", timeout=1.0)
    toxiproxy.up()
    assert _round_trip(addr) < 1

    toxiproxy.timeout(0)  # black hole: accepts, never answers
    with pytest.raises(TimeoutError):
        _http(addr, "GET", "/v1/status/leader", timeout=0.5)
    toxiproxy.clear()

    toxiproxy.reset_peer()
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        _http(addr, "GET", "/v1/status/leader", timeout=2.0)
    toxiproxy.clear()
    assert _round_trip(addr) < 1


@pytest.mark.consul
@pytest.mark.slow
def test_toxiproxy_black_hole_outlasts_consuls_default_read_timeout(toxiproxy: Toxiproxy) -> None:
    """Consul closes a silent connection after 10 s by default; harness agents do not."""
    toxiproxy.timeout(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _http(toxiproxy.listen_addr, "GET", "/v1/status/leader", timeout=11.0)
    assert time.monotonic() - started >= 11.0


@pytest.mark.consul
def test_toxiproxy_for_a_fresh_agent(toxiproxy_for, fresh_consul_agent: ConsulAgent) -> None:
    proxy = toxiproxy_for(fresh_consul_agent)
    assert proxy.upstream_addr == fresh_consul_agent.http_addr
    assert proxy.url == f"http://127.0.0.1:{proxy.listen_port}"
    status, body = _http(proxy.listen_addr, "GET", "/v1/status/leader")
    assert status == 200
    assert json.loads(body) == fresh_consul_agent.server_addr


# ---- counting proxy ----------------------------------------------------------------------
@pytest.mark.consul
def test_counting_proxy_counts_and_records_requests(counting_proxy: CountingProxy) -> None:
    assert (counting_proxy.connections, counting_proxy.requests) == (0, 0)
    key = _key()
    status, _ = _http(counting_proxy.listen_addr, "PUT", f"/v1/kv/{key}?cas=0", b"v")
    assert status == 200
    assert counting_proxy.connections == 1
    assert counting_proxy.requests == 1
    assert counting_proxy.request_lines == [f"PUT /v1/kv/{key}?cas=0 HTTP/1.1"]
    assert counting_proxy.paths == [f"/v1/kv/{key}?cas=0"]
    assert counting_proxy.bytes_up > 0
    assert counting_proxy.bytes_down > 0

    # Two requests on one keep-alive connection are two request lines.
    host, port = "127.0.0.1", counting_proxy.listen_port
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", f"/v1/kv/{key}?raw")
            resp = conn.getresponse()
            assert resp.read() == b"v"
    finally:
        conn.close()
    assert counting_proxy.connections == 2
    assert counting_proxy.request_lines[1:] == [f"GET /v1/kv/{key}?raw HTTP/1.1"] * 2

    counting_proxy.reset()
    assert (counting_proxy.connections, counting_proxy.requests, counting_proxy.bytes_up) == (
        0,
        0,
        0,
    )


@pytest.mark.consul
def test_counting_proxy_frames_requests_after_a_body_without_newline(
    counting_proxy: CountingProxy,
) -> None:
    # A body is skipped by its Content-Length, so the next request line on the same
    # keep-alive connection is counted even though "v" ends in no newline.
    key = _key()
    conn = http.client.HTTPConnection("127.0.0.1", counting_proxy.listen_port, timeout=5)
    try:
        for method, body in (("PUT", b"v"), ("PUT", b"GET /fake HTTP/1.1\r\n"), ("GET", None)):
            conn.request(method, f"/v1/kv/{key}", body=body)
            assert conn.getresponse().read()
    finally:
        conn.close()
    assert counting_proxy.request_lines == [
        f"PUT /v1/kv/{key} HTTP/1.1",
        f"PUT /v1/kv/{key} HTTP/1.1",
        f"GET /v1/kv/{key} HTTP/1.1",
    ]


def test_counting_proxy_sees_nothing_when_nothing_is_sent(
    counting_proxy: CountingProxy,
) -> None:
    with socket.create_connection(("127.0.0.1", counting_proxy.listen_port), timeout=2):
        pass
    deadline = time.monotonic() + 2
    while counting_proxy.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counting_proxy.connections == 1
    assert counting_proxy.requests == 0
    assert counting_proxy.request_lines == []


# ---- no binary: the run fails and says why -----------------------------------------------
def test_without_a_binary_consul_tests_fail_and_say_why(tmp_path: Path) -> None:
    """No CONSUL_BIN, no consul on PATH, an empty cache and no Go: an error, never a skip."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONSUL_BIN", "TOXIPROXY_BIN")}
    env.update(PATH="/usr/bin:/bin", HANDLER_CONSUL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--no-header",
            f"{HERE / 'test_harness.py'}::test_agent_answers_leader_and_kv_round_trip",
        ],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "no consul binary, so this test cannot run" in out
    assert "no Go toolchain" in out
    assert "1 error" in out
    assert "skipped" not in out
