"""The docs in docs/patterns/ are true: their python samples run, their JSON samples validate,
and every test they cite as proof exists.

Each ```python block of every page is a complete script (``asyncio.run(main())``, no top-level
``await``) and runs as one, in a subprocess, against the shared dev agent, found through
CONSUL_HOST / CONSUL_PORT as a user's code would find it. Each ```json block of our pages
that is an envelope, a success response or an error dict is validated against the models the
handler and the CLI use. Each ``tests/<file>.py::<test>`` that
resilience.md names must be a test function defined in that file.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent
from support import agent_env

from handler_consul._schema import ErrorLine, envelope_adapter, response_adapter

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "patterns"
OURS = [
    "consul_integration.md",
    "error_handling.md",
    "security_patterns.md",
    "observability.md",
    "service_discovery.md",
]
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
# ```json refused marks an envelope the docs show being refused: it must fail validation.
_FENCE = re.compile(r"^```(\w*)[ ]*([\w ]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A cited test: `tests/test_retries.py::test_name`, as resilience.md writes them.
_CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def blocks(language: str, pages: list[str]) -> list[tuple[str, str]]:
    """(id, code) of every fenced block in ``language`` in ``pages``; the id names the page,
    the line and the block's info words (``refused``)."""
    found = []
    for page in pages:
        text = (DOCS / page).read_text()
        for n, match in enumerate(m for m in _FENCE.finditer(text) if m.group(1) == language):
            line = text[: match.start()].count("\n") + 1
            info = "-".join(match.group(2).split())
            found.append((f"{page}:{line}#{n}{'-' + info if info else ''}", match.group(3)))
    return found


PYTHON = blocks("python", PAGES)
JSON = blocks("json", OURS)


def test_every_page_has_samples() -> None:
    for page in OURS:
        assert any(i.startswith(page) for i, _ in PYTHON), f"{page} has no runnable sample"


def test_the_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    for page in [*OURS, "circuit_breaker.md", "thread_pool.md", "resilience.md", *pages]:
        assert f"]({page})" in index, page


def test_every_test_resilience_md_cites_exists() -> None:
    text = (DOCS / "resilience.md").read_text()
    cited = _CITED_TEST.findall(text)
    assert len(cited) > 50, "resilience.md cites its proofs as `tests/<file>.py::<test>`"
    defined: dict[str, set[str]] = {}
    missing = []
    for path, name in cited:
        if path not in defined:
            source = ROOT / path
            assert source.is_file(), f"resilience.md cites {path}, which does not exist"
            tree = ast.parse(source.read_text())
            defined[path] = {
                node.name
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
        if name not in defined[path]:
            missing.append(f"{path}::{name}")
    assert not missing, f"resilience.md cites tests that do not exist: {missing}"


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[i for i, _ in PYTHON])
def test_python_sample_is_a_script(where: str, code: str) -> None:
    """What a reader pastes into a file runs: no top-level ``await`` (a SyntaxError outside
    a notebook), and a sample that awaits starts its own event loop."""
    try:
        ast.parse(code, where)
    except SyntaxError as exc:
        pytest.fail(f"{where} is not a script: {exc}")
    if re.search(r"\bawait\b|\basync (with|for)\b", code):
        assert "asyncio.run(main())" in code, f"{where} awaits but never starts a loop"


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[i for i, _ in PYTHON])
def test_python_sample_runs(
    where: str, code: str, consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    page, _, rest = where.partition(":")
    script = tmp_path / f"{page.removesuffix('.md')}_{rest.split('#')[0]}.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=agent_env(consul_agent),  # no CONSUL_* of the developer's shell, the agent's address
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{where}\n{result.stdout}\n{result.stderr}"
    assert "Logging error" not in result.stderr, result.stderr


def _kind(sample: Any) -> str | None:
    if not isinstance(sample, dict):
        return None
    if sample.get("status") == "success":
        return "response"
    if "error" in sample and "context" in sample:
        return "error"
    if "operation" in sample and "payload" in sample:
        return "envelope"
    return None


def test_json_samples_are_json() -> None:
    for where, text in JSON:
        try:
            json.loads(text)
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}")


@pytest.mark.parametrize(("where", "text"), JSON, ids=[i for i, _ in JSON])
def test_json_sample_matches_the_models(where: str, text: str) -> None:
    sample = json.loads(text)
    kind = _kind(sample)
    if where.endswith("-refused"):
        assert kind == "envelope", where
        with pytest.raises(ValueError, match="payload"):
            envelope_adapter().validate_python(sample)
    elif kind == "envelope":
        envelope_adapter().validate_python(sample)
    elif kind == "response":
        response_adapter().validate_python(sample)
    elif kind == "error":
        ErrorLine.model_validate(sample)
    else:
        pytest.skip("not an envelope, response or error")
