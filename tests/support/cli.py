"""Running ``handler-consul`` as a user does: a subprocess with an environment of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

CLI = [sys.executable, "-m", "handler_consul.cli"]
# Everything that could point the CLI at a Consul or hand it a token; each test sets its own.
_SCRUBBED = ("CONSUL_", "HANDLER_CONSUL_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CONSUL_* / HANDLER_CONSUL_* variable, plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(extra)
    return env


def agent_env(agent: Any, **extra: str) -> dict[str, str]:
    """A clean environment aimed at ``agent`` through CONSUL_HOST / CONSUL_PORT."""
    return clean_env(CONSUL_HOST=agent.host, CONSUL_PORT=str(agent.port), **extra)


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m handler_consul.cli *args``, its output captured as text."""
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
