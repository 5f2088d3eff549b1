"""Property-based tests of consul.txn against a real agent, with a model of Consul's KV.

For generated transactions (1 to 12 operations: set, cas from 0, get, get-tree, delete,
delete-tree, check-not-exists) over a handful of keys that overlap as prefixes (``a``,
``a/x``, ``ab``, ``b``) under a fresh prefix, with text, empty and binary values:

- when the model says every operation succeeds, Consul applies the transaction, and the
  results are exactly the model's, entry for entry: the key, the value for get and get-tree
  (``""`` for an empty value) and None for every other verb, which is how the handler tells
  which operation each of Consul's entries came from; every written entry carries the
  transaction's one Raft index;
- when the model says some fail, Consul rolls back, the errors name exactly those
  operations, and nothing is applied (the prefix is still empty).

Bad operation fields are covered by tests/test_refusals_coordination.py; this file's
property is about the shapes Consul returns. ``HYPOTHESIS_PROFILE=long`` and
``PROPERTY_EXAMPLES`` as for tests/test_properties.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ConsulAgent
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from handler_consul import BreakerSettings, ConsulSettings, HandlerConsul, RetrySettings

pytestmark = pytest.mark.usefixtures("clean_consul_env")

_HEALTH = (HealthCheck.function_scoped_fixture, HealthCheck.too_slow)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "2000")) if PROFILE == "long" else 150
SETTINGS = settings(
    deadline=None,
    derandomize=PROFILE != "long",
    database=None,
    suppress_health_check=_HEALTH,
    max_examples=EXAMPLES,
    print_blob=PROFILE == "long",
)

NAMES = ["a", "a/x", "ab", "b"]
PREFIXES = ["", "a", "a/", "b"]
VALUES = st.one_of(
    st.text(max_size=12).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)),
    st.binary(max_size=12).map(lambda b: b"\xff" + b),  # never UTF-8: travels as base64
)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, str, bytes | str | None]]:
    count = draw(st.integers(1, 12))
    ops = []
    for _ in range(count):
        verb = draw(
            st.sampled_from(
                ["set", "cas0", "get", "get-tree", "delete", "delete-tree", "check-not-exists"]
            )
        )
        if verb in ("get-tree", "delete-tree"):
            name = draw(st.sampled_from(PREFIXES[1:] if verb == "delete-tree" else PREFIXES))
        else:
            name = draw(st.sampled_from(NAMES))
        value = draw(VALUES) if verb in ("set", "cas0") else None
        ops.append((verb, name, value))
    return ops


def as_payload(prefix: str, ops: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    out = []
    for verb, name, value in ops:
        op: dict[str, Any] = {"verb": "cas" if verb == "cas0" else verb, "key": prefix + name}
        if verb == "cas0":
            op["index"] = 0
        if isinstance(value, bytes):
            op.update(value=base64.b64encode(value).decode(), encoding="base64")
        elif value is not None:
            op["value"] = value
        out.append(op)
    return out


def shown(value: bytes | str) -> tuple[str, str]:
    """How the handler gives a stored value back: text when UTF-8, else base64."""
    data = value.encode() if isinstance(value, str) else value
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


def model(ops: list[tuple[str, str, Any]]) -> tuple[list[int], list[tuple[str, Any]]]:
    """Consul's transaction on an empty prefix, as documented: (failing operation indexes,
    expected results as (name, shown value or None))."""
    state: dict[str, bytes | str] = {}
    failing: list[int] = []
    results: list[tuple[str, Any]] = []
    for i, (verb, name, value) in enumerate(ops):
        if verb == "set":
            state[name] = value
            results.append((name, None))
        elif verb == "cas0":
            if name in state:
                failing.append(i)
            else:
                state[name] = value
                results.append((name, None))
        elif verb == "get":
            if name not in state:
                failing.append(i)
            else:
                results.append((name, shown(state[name])))
        elif verb == "get-tree":
            results += [(k, shown(state[k])) for k in sorted(state) if k.startswith(name)]
        elif verb == "delete":
            state.pop(name, None)
        elif verb == "delete-tree":
            for k in [k for k in state if k.startswith(name)]:
                del state[k]
        elif verb == "check-not-exists" and name in state:
            failing.append(i)
    return failing, results


class Live:
    """One handler on its own event loop, for every example of the test."""

    def __init__(self, agent: ConsulAgent) -> None:
        self.agent = agent
        self.runner = asyncio.Runner()
        self.handler = HandlerConsul(
            settings=ConsulSettings(
                host=agent.host,
                port=agent.port,
                retry=RetrySettings(max_attempts=1),
                breaker=BreakerSettings(enabled=False),
            )
        )
        self.runner.run(self.handler.initialize())

    def txn(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        envelope = {"operation": "consul.txn", "payload": {"operations": operations}}
        return dict(self.runner.run(self.handler.execute(envelope)).result)

    def close(self) -> None:
        try:
            self.runner.run(self.handler.shutdown())
        finally:
            self.runner.close()

    def __repr__(self) -> str:
        return "<Live handler>"


@pytest.fixture(scope="module")
def live(consul_agent: ConsulAgent) -> Iterator[Live]:
    handler = Live(consul_agent)
    yield handler
    handler.close()


@SETTINGS
@given(ops=operations())
def test_a_transaction_applies_as_the_model_says_and_its_results_map_back(
    live: Live, ops: list[tuple[str, str, Any]]
) -> None:
    prefix = f"prop-txn/{uuid.uuid4().hex}/"
    failing, expected = model(ops)
    note(f"model: failing {failing}, results {expected}")
    result = live.txn(as_payload(prefix, ops))
    if failing:
        assert result["applied"] is False, result
        assert [e["op_index"] for e in result["errors"]] == failing
        stored = live.agent.request("GET", f"/v1/kv/{prefix}?keys")
        assert stored.status == 404, stored.text  # nothing applied
        return
    assert result["applied"] is True, result
    got = [
        (e["key"][len(prefix) :], None if e["value"] is None else (e["value"], e["encoding"]))
        for e in result["results"]
    ]
    assert got == expected
    writes = [e for e, (verb, _, _) in zip(result["results"], _producers(ops), strict=True) if verb]
    assert {e["modify_index"] for e in writes} <= {result["index"]}


def _producers(ops: list[tuple[str, str, Any]]) -> list[tuple[bool, str, Any]]:
    """For each expected result, whether a write produced it (a set or cas from 0)."""
    out: list[tuple[bool, str, Any]] = []
    state: set[str] = set()
    for verb, name, value in ops:
        if verb in ("set", "cas0"):
            state.add(name)
            out.append((True, name, value))
        elif verb == "get" and name in state:
            out.append((False, name, None))
        elif verb == "get-tree":
            out += [(False, k, None) for k in sorted(state) if k.startswith(name)]
        elif verb == "delete":
            state.discard(name)
        elif verb == "delete-tree":
            state = {k for k in state if not k.startswith(name)}
    return out
