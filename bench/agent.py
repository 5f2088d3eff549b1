"""The Consul dev agent the bench runs against: the test harness's, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import harness  # noqa: E402  (tests/harness: stdlib only)


def consul_binary(explicit: str | None = None) -> str:
    """The consul binary: --consul-bin, else scripts/consul-bin (which may build it once)."""
    if explicit:
        return explicit
    return harness.resolve("consul", build=True)


def consul_version(path: str) -> str:
    with contextlib.suppress(Exception):
        return harness.version("consul", path).splitlines()[0]
    return "unknown"


@contextlib.contextmanager
def dev_agent(consul_bin: str) -> Iterator[harness.ConsulAgent]:
    """A ``consul agent -dev`` on 127.0.0.1, logging at WARN (DEBUG request logs would be the
    agent's own bottleneck), stopped and removed on exit.

    Every contender is open at once and they all come from 127.0.0.1: the pools' kept-alive
    connections (up to 64 each), and python-consul2's consul.aio, which opens one per request.
    Consul refuses a client IP past 200 concurrent connections (``http_max_conns_per_client``)
    with 429s, which would open the handlers' breakers mid-run, so the bench's agent allows
    more.
    """
    with tempfile.TemporaryDirectory(prefix="handler-consul-bench-") as tmp:
        agent = harness.ConsulAgent(
            consul_bin,
            name="bench-dev",
            base_dir=tmp,
            extra_config={"log_level": "WARN", "limits": {"http_max_conns_per_client": 4096}},
        )
        try:
            agent.start()
            yield agent
        finally:
            agent.close()


def wrk_version() -> str | None:
    try:
        proc = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0] if text else "wrk"


def loadavg() -> list[float]:
    """The machine's load averages (1, 5, 15 min), for the record of a run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
