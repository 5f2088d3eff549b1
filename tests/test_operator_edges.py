"""Edges an operator hits by mistake, each ending in a clear error and never the token.

- The token pasted where its file's path belongs is not repeated back.
- An empty variable sets nothing: a lower level's token still counts.
- A FIFO or /dev/zero as a token file cannot block the event loop or eat memory.
- Deeply nested JSON is bad input (exit 2), not a crash.
- SIGTERM during `run` ends it as Ctrl-C does, without a traceback.
- `--help` into a closed pipe exits 141 even with PYTHONUNBUFFERED.
- `CONSUL_HTTP_ADDR=unix://` with no path is refused, naming the variable.
- A token echoed back in another case is still redacted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import agent_env, clean_env, cli, envelope, uniq

from handler_consul import (
    ConsulSettings,
    HandlerConsul,
    InfraConfigurationError,
)
from handler_consul._errors import redact

SENTINEL = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
SCRIPT = [sys.executable, "-m", "handler_consul"]


async def test_a_token_set_as_the_token_files_path_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch, clean_consul_env: None
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", SENTINEL)
    handler = HandlerConsul()
    with pytest.raises(InfraConfigurationError) as caught:
        await handler.initialize()
    assert caught.value.context.field == "token_file"
    assert "CONSUL_HTTP_TOKEN_FILE" in caught.value.message
    assert SENTINEL not in caught.value.message
    assert SENTINEL not in repr(ConsulSettings().public_dict())


@pytest.mark.parametrize(
    ("empty", "lower"),
    [("CONSUL_TOKEN", "CONSUL_HTTP_TOKEN"), ("CONSUL_TOKEN_FILE", "CONSUL_HTTP_TOKEN_FILE")],
)
def test_an_empty_variable_leaves_the_token_to_a_lower_level(
    empty: str, lower: str, monkeypatch: pytest.MonkeyPatch, clean_consul_env: None, tmp_path: Path
) -> None:
    monkeypatch.setenv(empty, "")
    if lower.endswith("_FILE"):
        path = tmp_path / "token"
        path.write_text(SENTINEL + "\n")
        monkeypatch.setenv(lower, str(path))
        assert ConsulSettings().token_file == str(path)
    else:
        monkeypatch.setenv(lower, SENTINEL)
        token = ConsulSettings().token
        assert token is not None
        assert token.get_secret_value() == SENTINEL


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
async def test_a_token_file_that_never_ends_is_refused_at_once(
    kind: str, tmp_path: Path, clean_consul_env: None
) -> None:
    if kind == "fifo":
        path = tmp_path / "token-fifo"
        os.mkfifo(path)  # no writer: a blocking open would never return
    else:
        path = Path("/dev/zero")
    started = time.monotonic()
    handler = HandlerConsul(ConsulSettings(token_file=str(path)))
    with pytest.raises(InfraConfigurationError, match="not a regular file") as caught:
        await asyncio.wait_for(handler.initialize(), 5)
    assert caught.value.context.field == "token_file"
    assert time.monotonic() - started < 2


def test_the_cli_token_file_option_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "token-fifo"
    os.mkfifo(path)
    result = cli("--token-file", str(path), "kv", "get", "k", env=clean_env(), timeout=20)
    assert result.returncode == 2
    assert "not a regular file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["validate", "-"], ["exec"], ["run", "--dry-run"]])
def test_deeply_nested_json_is_bad_input_not_a_crash(command: list[str]) -> None:
    good = '{"operation":"consul.kv_get","payload":{"key":"k"}}'
    text = "[" * 100_000 + "\n" + (good + "\n" if command[0] != "exec" else "")
    result = cli(*command, env=clean_env(), stdin=text, timeout=60)
    assert result.returncode == 2, result.stderr[-500:]
    assert "nested too deeply" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "RecursionError" not in result.stderr


def test_sigterm_during_run_ends_it_like_ctrl_c_without_a_traceback(
    consul_agent: Any, tmp_path: Path
) -> None:
    lines = tmp_path / "many.jsonl"
    key = f"{uniq('term')}/k"
    lines.write_text(
        "\n".join(
            f'{{"operation":"consul.kv_get","payload":{{"key":"{key}"}}}}' for _ in range(50_000)
        )
    )
    for delay in (1.0, 1.5, 2.0):
        proc = subprocess.Popen(
            [*SCRIPT, "run", "--file", str(lines)],
            env=agent_env(consul_agent),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err, err[-2000:]


def test_help_into_a_closed_pipe_exits_141_even_unbuffered() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*SCRIPT, "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=clean_env(PYTHONUNBUFFERED="1"),
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr


def test_a_unix_address_without_a_path_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, clean_consul_env: None
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "unix://")
    with pytest.raises(InfraConfigurationError) as caught:
        ConsulSettings()
    assert caught.value.context.field == "unix_socket"
    assert "CONSUL_HTTP_ADDR" in caught.value.message


def test_a_token_echoed_in_another_case_is_redacted() -> None:
    token = "s3ntinel-Echo-Token"
    text = f"as sent {token}, lower {token.lower()}, upper {token.upper()}"
    assert redact(text, token) == "as sent [REDACTED], lower [REDACTED], upper [REDACTED]"


async def test_envelopes_still_work_after_these_edges(handler: Any) -> None:
    """A control: the handler fixture is unaffected by the edges above."""
    response = await handler.execute(envelope("kv_get", key=f"{uniq('edge')}/k"))
    assert response.result["found"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["--to", SENTINEL, "kv", "get", "k"],
        ["kv", SENTINEL],
        ["--port", SENTINEL, "kv", "get", "k"],
        ["kv", "get", "k", SENTINEL, "extra"],
    ],
)
def test_a_token_typed_in_the_wrong_place_is_not_echoed(args: list[str]) -> None:
    result = cli(*args, env=clean_env(), timeout=30)
    assert result.returncode == 2
    assert SENTINEL not in result.stdout + result.stderr
    assert "<hidden>" in result.stderr


def test_a_short_typo_is_still_shown_to_help_fix_it() -> None:
    result = cli("kv", "gte", "k", env=clean_env(), timeout=30)
    assert result.returncode == 2
    assert "invalid choice: 'gte'" in result.stderr
