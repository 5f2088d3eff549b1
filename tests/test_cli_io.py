"""The console script in the asyncio I/O mode: ``CONSUL_IO=asyncio`` reaches the handler the
CLI runs, and its commands behave as in the default mode (tests/test_cli_commands.py)."""

from __future__ import annotations

import json
import uuid

from harness import ConsulAgent
from support import agent_env, cli


def test_kv_put_get_and_describe_in_asyncio_mode(consul_agent: ConsulAgent) -> None:
    env = agent_env(consul_agent, CONSUL_IO="asyncio")
    key = f"cli-io-{uuid.uuid4().hex[:10]}/timeout"

    put = cli("kv", "put", key, "30", env=env)
    got = cli("kv", "get", key, env=env)
    described = cli("describe", env=env)

    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {"key": key, "applied": True}
    assert got.returncode == 0, got.stderr
    assert got.stdout == "30\n"
    assert described.returncode == 0, described.stderr
    info = json.loads(described.stdout)
    assert info["io"] == "asyncio"
    assert info["settings"]["io"] == "asyncio"
    assert consul_agent.request("GET", f"/v1/kv/{key}?raw").body == b"30"


def test_run_over_json_lines_in_asyncio_mode(consul_agent: ConsulAgent) -> None:
    env = agent_env(consul_agent, CONSUL_IO="asyncio")
    prefix = f"cli-io-{uuid.uuid4().hex[:10]}"
    lines = [
        json.dumps(
            {"operation": "consul.kv_put", "payload": {"key": f"{prefix}/{i}", "value": f"v{i}"}}
        )
        for i in range(20)
    ]
    result = cli("run", stdin="\n".join(lines) + "\n", env=env)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 20
    assert all(a["status"] == "success" and a["result"]["applied"] for a in answers)
    for i in range(20):
        assert consul_agent.request("GET", f"/v1/kv/{prefix}/{i}?raw").body == f"v{i}".encode()
