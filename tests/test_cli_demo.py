"""``handler-consul demo``: against a configured Consul, against a throwaway agent it starts
and stops itself (also when interrupted), and without any Consul binary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import ConsulAgent
from support import CLI, agent_env, clean_env, cli


def consul_processes_in(directory: Path) -> list[str]:
    """Command lines of live ``consul`` processes whose arguments point into ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(argv[0]).name == "consul" and any(str(directory) in arg for arg in argv):
            found.append(f"{proc.name}: {' '.join(argv)}")
    return found


_STEPS = [
    r"1\. consul\.register +ok .* registered",
    r"2\. consul\.kv_put +ok .* applied=True",
    r"3\. consul\.kv_get +ok .* = 'hello from handler-consul'",
    r"4\. consul\.kv_put +refused .*\.\./agent/service/deregister/.*InfraValidationError",
    r"5\. consul\.deregister +ok .* deregistered=True",
]


def assert_demo_summary(stdout: str) -> None:
    for pattern in _STEPS:
        assert re.search(pattern, stdout), f"{pattern!r} not in:\n{stdout}"
    assert "all steps as expected" in stdout


def test_demo_against_a_configured_consul_cleans_up(consul_agent: ConsulAgent) -> None:
    result = cli("demo", env=agent_env(consul_agent))

    assert result.returncode == 0, result.stdout + result.stderr
    assert_demo_summary(result.stdout)
    assert "throwaway" not in result.stdout
    services = consul_agent.request("GET", "/v1/agent/services").json()
    assert not [s for s in services if s.startswith("handler-consul-demo-")]
    leftovers = consul_agent.request("GET", "/v1/kv/handler-consul-demo/?keys")
    assert leftovers.status == 404


def test_demo_with_nothing_configured_starts_and_stops_its_own_agent(
    consul_bin: str, tmp_path: Path
) -> None:
    # TMPDIR marks the agent's data dir, so any process left behind can be found by it.
    env = clean_env(CONSUL_BIN=consul_bin, TMPDIR=str(tmp_path))

    result = cli("demo", env=env, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert_demo_summary(result.stdout)
    match = re.search(
        r"against http://127\.0\.0\.1:\d+ \(throwaway agent, pid (\d+)\)", result.stdout
    )
    assert match, result.stdout
    assert "stopped the throwaway agent" in result.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(int(match.group(1)), 0)
    assert consul_processes_in(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_demo_stops_its_agent_when_interrupted(consul_bin: str, tmp_path: Path) -> None:
    env = clean_env(CONSUL_BIN=consul_bin, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [*CLI, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "starting" in first
        deadline = time.monotonic() + 30
        while not consul_processes_in(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = consul_processes_in(tmp_path)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        # A failed assertion above must not leave the demo running (or its pipes open).
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)

    assert started, "the demo never started its agent"
    assert proc.returncode == 130, out
    assert "stopped the throwaway agent" in out
    assert consul_processes_in(tmp_path) == []


def test_demo_without_a_consul_binary_says_how_to_get_one(tmp_path: Path) -> None:
    env = clean_env(
        PATH=os.path.dirname(sys.executable), HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path)
    )

    result = cli("demo", env=env)

    assert result.returncode == 3
    assert "scripts/consul-bin" in result.stderr
