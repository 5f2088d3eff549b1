"""Envelopes in, errors out: envelope builders, unique names, and the exact error a test expects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any


def uniq(prefix: str = "t") -> str:
    """A name no other test uses (the session agent is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_key(prefix: str = "resilience") -> str:
    """A KV key no other test uses: ``<prefix>/<32 hex digits>``."""
    return f"{prefix}/{uuid.uuid4().hex}"


def envelope(operation: str, **payload: Any) -> dict[str, Any]:
    """``{"operation": "consul.<operation>", "payload": payload}``."""
    return {"operation": f"consul.{operation}", "payload": payload}


def kv_put(key: str, value: Any = "v", **payload: Any) -> dict[str, Any]:
    """A ``consul.kv_put`` envelope; extra keywords go into the payload (``cas=0``, ...)."""
    return envelope("kv_put", key=key, value=value, **payload)


def kv_get(key: str, **payload: Any) -> dict[str, Any]:
    """A ``consul.kv_get`` envelope; extra keywords go into the payload (``recurse=True``, ...)."""
    return envelope("kv_get", key=key, **payload)


def with_deadline(env: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``env`` with its own deadline (the envelope's ``timeout_seconds``)."""
    return {**env, "timeout_seconds": seconds}


def with_correlation_id(env: dict[str, Any]) -> dict[str, Any]:
    """``env`` with a fresh ``correlation_id`` (a string, as a caller sends it)."""
    return {**env, "correlation_id": str(uuid.uuid4())}


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)


def expected_context(
    *,
    operation: str | None,
    category: str,
    retryable: bool,
    attempts: int,
    correlation_id: Any = None,
    target: str | None = "consul.default",
    datacenter: str | None = None,
    status_code: int | None = None,
    field: str | None = None,
    request_sent: bool | None = None,
    outcome_unknown: bool | None = None,
) -> dict[str, Any]:
    """The exact ``error.context.model_dump(mode="json")`` a test expects.

    Unless given, ``request_sent`` is whether Consul answered with a status (it got the
    request), and ``outcome_unknown`` whether that status was a 5xx (it may have applied it).
    """
    if request_sent is None:
        request_sent = status_code is not None
    if outcome_unknown is None:
        outcome_unknown = status_code is not None and status_code >= 500
    return {
        "transport": "consul",
        "operation": operation,
        "target": target,
        "correlation_id": None if correlation_id is None else str(correlation_id),
        "datacenter": datacenter,
        "attempts": attempts,
        "retryable": retryable,
        "category": category,
        "status_code": status_code,
        "field": field,
        "request_sent": request_sent,
        "outcome_unknown": outcome_unknown,
    }


def assert_json_ready(error: Any) -> dict[str, Any]:
    """``error.to_dict()`` survives JSON unchanged and agrees with the error; returns it."""
    data: dict[str, Any] = error.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["error"] == type(error).__name__
    assert data["message"] == str(error)
    assert data["context"] == error.context.model_dump(mode="json")
    return data
