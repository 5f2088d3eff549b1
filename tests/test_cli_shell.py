"""``handler-consul`` in a shell: a reader that stops early (``| head``), a terminal (progress
bar, human output), ``--help`` (examples, speed, nothing heavy imported), ``python -m``.
The installed script runs as a subprocess against a real agent."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import pytest
from harness import ConsulAgent

SCRIPT = Path(sys.executable).parent / "handler-consul"
_SCRUBBED = ("CONSUL_", "HANDLER_CONSUL_")
# What must never reach a user who closed the pipe.
_NOISE = ("Traceback", "Exception ignored", "BrokenPipeError", "ExceptionGroup")


def env_for(agent: ConsulAgent | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    if agent is not None:
        env.update(CONSUL_HOST=agent.host, CONSUL_PORT=str(agent.port))
    return env


def kv_get_lines(path: Path, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"operation": "consul.kv_get", "payload": {"key": f"pipe/{i}"}}) + "\n"
            for i in range(n)
        )
    )
    return path


def read_pty(master: int) -> bytes:
    """Everything written to the terminal until the child's side closes."""
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: no process holds the terminal any more
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks)


# -- a reader that stops early ---------------------------------------------------------------


def first_line_then_close(
    argv: list[str], env: dict[str, str], stdin: IO[bytes] | int
) -> tuple[bytes, int, str]:
    """Run, read one line of stdout, close it as `head -1` does; the exit code and stderr."""
    with subprocess.Popen(
        argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            first = proc.stdout.readline()
            proc.stdout.close()
            code = proc.wait(timeout=60)
            stderr = proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
    return first, code, stderr


@pytest.mark.parametrize("source", ["--file", "stdin"])
def test_run_into_a_reader_that_stops_early_exits_141_quietly(
    consul_agent: ConsulAgent, tmp_path: Path, source: str
) -> None:
    # ~600 KB of answers: far more than a pipe holds, so writes fail once the reader left.
    path = kv_get_lines(tmp_path / "in.jsonl", 2000)
    env = env_for(consul_agent)

    if source == "--file":
        first, code, stderr = first_line_then_close(
            [str(SCRIPT), "run", "--file", str(path)], env, subprocess.DEVNULL
        )
    else:
        with path.open("rb") as stdin:
            first, code, stderr = first_line_then_close([str(SCRIPT), "run"], env, stdin)

    assert json.loads(first)["status"] == "success"
    assert code == 141, stderr
    assert not [word for word in _NOISE if word in stderr], stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("handler-consul run: ")  # how far it got, still reported
    assert "2000 processed" not in summary  # it stopped taking envelopes


def test_kv_get_into_a_reader_that_stops_early_exits_141_quietly(
    consul_agent: ConsulAgent,
) -> None:
    env = env_for(consul_agent)
    key = f"pipe-{uuid.uuid4().hex[:10]}/big"
    put = subprocess.run(
        [str(SCRIPT), "kv", "put", key, "-"],
        input=b"x" * 300_000,  # more than a pipe holds
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert put.returncode == 0, put.stderr

    with subprocess.Popen(
        [str(SCRIPT), "kv", "get", key],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.read(1)  # head -c1
        proc.stdout.close()
        code = proc.wait(timeout=60)
        stderr = proc.stderr.read().decode()

    assert first == b"x"
    assert code == 141, stderr
    assert stderr == ""


# -- a terminal ------------------------------------------------------------------------------


def test_run_on_a_terminal_draws_one_progress_bar(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    path = kv_get_lines(tmp_path / "in.jsonl", 3000)
    master, terminal = pty.openpty()
    with subprocess.Popen(
        [str(SCRIPT), "run", "--file", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env_for(consul_agent),
    ) as proc:
        os.close(terminal)
        shown = read_pty(master).decode()
        code = proc.wait(timeout=120)

    assert code == 0, shown
    frames = [f for f in shown.split("\r\x1b[K") if f.strip()]
    bars = [f for f in frames if f.startswith("[")]
    assert bars, shown  # the bar is redrawn in place: carriage return, erase, redraw
    assert all("/3000" in bar and "%" in bar for bar in bars)
    assert any("ETA" in bar for bar in bars) or len(bars) == 1
    assert all("\n" not in bar for bar in frames[:-1])  # one line, redrawn
    assert "3000 processed, 3000 ok, 0 failed" in frames[-1]
    assert "100% of 3000" in frames[-1]


def test_run_off_a_terminal_prints_progress_lines_with_the_total(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    path = kv_get_lines(tmp_path / "in.jsonl", 50)

    result = subprocess.run(
        [str(SCRIPT), "run", "--file", str(path), "--progress-interval", "0.05"],
        capture_output=True,
        text=True,
        env=env_for(consul_agent),
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("handler-consul run: ") for line in lines)
    assert "50 processed, 50 ok, 0 failed" in lines[-1]
    assert "100% of 50" in lines[-1]


def test_output_is_human_on_a_terminal_and_json_in_a_pipe(consul_agent: ConsulAgent) -> None:
    env = env_for(consul_agent)
    key = f"tty-{uuid.uuid4().hex[:10]}/k"
    master, terminal = pty.openpty()
    with subprocess.Popen(
        [str(SCRIPT), "kv", "put", key, "v"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        env=env,
    ) as proc:
        os.close(terminal)
        shown = read_pty(master).decode()
        proc.wait(timeout=60)
    piped = subprocess.run(
        [str(SCRIPT), "kv", "put", key, "w"], capture_output=True, env=env, timeout=60, check=False
    )

    assert proc.returncode == 0
    assert shown.strip() == f"Success! Data written to: {key}"
    assert json.loads(piped.stdout) == {"key": key, "applied": True}


# -- --help ----------------------------------------------------------------------------------

_COMMANDS = [
    ["kv"],
    ["kv", "get"],
    ["kv", "put"],
    ["kv", "delete"],
    ["services"],
    ["services", "register"],
    ["services", "deregister"],
    ["services", "list"],
    ["exec"],
    ["run"],
    ["validate"],
    ["describe"],
    ["health"],
    ["schema"],
    ["demo"],
]


def test_help_is_fast_enough_for_scripts() -> None:
    times = []
    for _ in range(5):  # the best of 5: a busy machine slows some runs, never speeds one up
        started = time.perf_counter()
        result = subprocess.run(
            [str(SCRIPT), "--help"], capture_output=True, env=env_for(), timeout=60, check=False
        )
        times.append(time.perf_counter() - started)
        assert result.returncode == 0
    assert min(times) < 0.3, times


def test_help_imports_neither_consul_nor_requests_nor_the_handler() -> None:
    program = f"""
import json, sys
from handler_consul.cli import main
for argv in {[["--help"], *[[*c, "--help"] for c in _COMMANDS]]!r}:
    try:
        main(argv)
    except SystemExit:
        pass
heavy = ("consul", "requests", "pydantic", "handler_consul._handler", "handler_consul._client")
print(json.dumps([name for name in heavy if name in sys.modules]), file=sys.stderr)
"""
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=env_for(),
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []


def test_the_package_imports_its_names_on_first_use() -> None:
    program = """
import json, sys
import handler_consul
before = "consul" in sys.modules
from handler_consul import HandlerConsul
print(json.dumps([before, "consul" in sys.modules, HandlerConsul.__module__]))
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, True, "handler_consul._handler"]


def test_every_help_has_examples_and_only_the_options_it_uses() -> None:
    helps = {
        " ".join(c): subprocess.run(
            [str(SCRIPT), *c, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        for c in [[], *_COMMANDS]
    }

    for name, result in helps.items():
        assert result.returncode == 0, name
        assert "examples:\n  handler-consul" in result.stdout, name
    assert "exit status:" in helps[""].stdout
    schema_help = helps["schema"].stdout
    for unused in ("--host", "--port", "--token-file", "--log-level", "--timeout", "--format"):
        assert unused not in schema_help
    assert "--kind" in schema_help
    assert "--host" in helps["kv get"].stdout
    # On `services register`, --port is the service's; Consul's goes before the command.
    assert "--port PORT" in helps["services register"].stdout
    assert "HTTP port (CONSUL_PORT)" not in helps["services register"].stdout


def test_python_dash_m_handler_consul_runs_the_cli() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "handler_consul", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    usage = subprocess.run(
        [sys.executable, "-m", "handler_consul", "kv", "get", "--nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert version.returncode == 0
    assert version.stdout.startswith("handler-consul ")
    assert usage.returncode == 2
    assert "unrecognized arguments: --nope" in usage.stderr
