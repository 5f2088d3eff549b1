"""The import rules that keep the envelope's path going down (docs/patterns/architecture.md).

Every module of the package has a layer. A module imports only from lower layers, so nothing
imports upward and there can be no cycle; a cycle check runs anyway, over the real graph, so
that a mistake in the table below cannot hide one. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import handler_consul

PACKAGE = Path(handler_consul.__file__).resolve().parent

# Lower number = lower layer. Read bottom-up, this is the envelope's path:
# handler -> lifecycle -> runtime -> retry (attempts) -> translate / breaker / pool
# -> operations -> client -> transport.
LAYERS: dict[str, int] = {
    "_version": 0,
    "_consul": 0,
    "_clock": 0,
    "_errors": 0,
    "_validation": 0,
    "_check_policy": 0,
    "_results": 0,
    "_deadlines": 0,  # many deadlines on one loop timer (the asyncio mode)
    "_balance": 1,  # the endpoint strategies: pure logic over _results' instances
    "_settings_env": 1,
    "_settings_parts": 1,
    "_settings": 2,
    "_envelope": 1,
    "_log": 1,
    "_transport.errors": 1,
    "_transport.response": 2,
    "_transport.connections": 1,
    "_transport.inflight": 2,
    "_transport.base": 2,  # what both transports share: targets, answers, masking
    "_transport.blocking": 3,
    "_transport.aioconn": 3,  # io="asyncio": one connection, answers read by httptools
    "_transport.aio": 4,  # imported by its path (not re-exported by _transport)
    "_transport": 4,
    "_client": 5,
    "_pool": 5,
    "_breaker": 5,
    "_bulkhead": 6,  # the asyncio mode's bound; shares the pool's errors
    "_operations.settle": 0,
    "_operations.health": 1,  # the health read and the instance shape, discovery's and watch's
    "_operations.values": 5,
    "_operations.effects": 1,
    "_longpoll": 6,
    "_cache": 7,
    "_operations.kv": 6,
    "_operations.service": 6,
    "_operations.discovery": 6,
    "_operations.session": 6,
    "_operations.txn": 6,
    "_operations.watch": 6,
    "_operations": 7,
    "_translate": 8,
    "_parsing": 8,
    "_schema": 8,
    "_retry": 9,
    "_runtime": 10,
    "_maintain": 10,  # maintained registrations: the runtime's attempts, never the runtime
    "_coordination": 10,  # needs only a runtime's shape, not its module
    "_lifecycle": 11,
    "_locks": 11,
    "_effects": 11,
    "_services": 11,
    "_telemetry": 11,  # imported by _handler only when a provider is handed in
    "_handler": 12,
    "": 13,  # handler_consul/__init__.py: the public API
    "cli.devagent": 14,
    "cli.logs": 14,
    "cli.output": 14,  # exit codes and stdout; light, for --help
    "cli.jsonl": 14,
    "cli.progress": 14,
    "cli.safeparser": 15,  # argparse that hides what may be a secret
    "cli.parser": 16,  # argparse only, for --help
    "cli.common": 15,
    "cli.run": 16,
    "cli.demo": 16,
    "cli.validate": 16,
    "cli.kv": 16,
    "cli.services": 16,
    "cli.exec_cmd": 16,
    "cli.info": 16,
    "cli.main": 17,
    "cli": 18,
    "cli.__main__": 19,
    "__main__": 19,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The package's own modules that ``name`` imports (relative imports resolved)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if name else []
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, node.module] if node.module else base)
                targets = [f"handler_consul.{module}".rstrip(".")]
            else:
                targets = [node.module or ""]
            # `from handler_consul._transport import blocking` imports a submodule.
            targets += [f"{targets[0]}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "handler_consul" or target.startswith("handler_consul."):
                found.add(target.removeprefix("handler_consul").lstrip("."))
    known = _modules()
    return {t for t in found if t in known and t != name}


def test_every_module_has_a_layer():
    assert sorted(set(_modules()) - set(LAYERS)) == []
    assert sorted(set(LAYERS) - set(_modules())) == []


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_no_module_imports_upward(name: str):
    path = _modules()[name]
    upward = sorted(t for t in _imports(name, path) if LAYERS[t] >= LAYERS[name])
    assert upward == [], f"{name} (layer {LAYERS[name]}) imports {upward}"


def test_the_import_graph_has_no_cycle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*trail[trail.index(target) :], target] if target in trail else [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if state.get(target) is None:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_internals_are_private():
    """Only the package itself and its CLI are public; every other module starts with '_'."""
    public = sorted(
        name
        for name in _modules()
        if name and not name.startswith("cli") and not name.split(".")[0].startswith("_")
    )
    assert public == []


def test_no_module_is_longer_than_about_400_lines():
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 420
    }
    assert long == {}
