"""JSON Schema of what goes in and what comes out, derived from the models themselves.

Everything here is built from the dispatch table, so a new operation shows up without an
edit: its envelope from ``Operation.payload_model``, its result from the return annotation
of ``Operation.run`` (the TypedDicts in :mod:`handler_consul._results`).

- ``envelope``: a discriminated union on ``operation``, one variant per operation, whose
  ``payload`` is that operation's strict payload model.
- ``result``: the success response (:class:`HandlerResponse`) as a discriminated union on
  ``operation``, whose ``result`` is that operation's result type.
- ``error``: what ``InfraError.to_dict()`` gives, plus the fields the CLI adds to an error
  line (``status``, ``operation``, ``correlation_id``, ``envelope_id``, ``line``).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

from handler_consul._envelope import Envelope, HandlerResponse
from handler_consul._errors import ErrorContext
from handler_consul._operations import OPERATIONS, Operation

__all__ = ["KINDS", "ErrorLine", "envelope_adapter", "response_adapter", "result_type", "schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("envelope", "result", "error", "all")

ErrorName = Literal[
    "InfraError",
    "InfraValidationError",
    "InfraConfigurationError",
    "InfraConnectionError",
    "InfraTimeoutError",
    "InfraAuthenticationError",
    "InfraUnavailableError",
    "InfraConsulError",
    "InfraConflictError",
    "InfraLockTimeoutError",
]


class ErrorDetail(BaseModel):
    """One pydantic complaint about an envelope (``InfraValidationError.errors``)."""

    field: str
    type: str
    message: str


class ErrorLine(BaseModel):
    """``InfraError.to_dict()`` and the fields the CLI adds to it (all but the first three
    are optional: ``errors`` comes with validation errors, ``retry_after_seconds`` with
    unavailable ones, ``line`` with ``run``)."""

    error: ErrorName
    message: str
    context: ErrorContext
    errors: list[ErrorDetail] | None = None
    retry_after_seconds: float | None = None
    status: Literal["error"] = "error"
    operation: str | None = None
    correlation_id: str | None = None
    envelope_id: str | None = None
    line: int | None = None


def _suffix(name: str) -> str:
    """``consul.kv_get`` -> ``KvGet``: a readable model name for the $defs."""
    return "".join(part.capitalize() for part in name.split(".")[-1].split("_"))


def result_type(operation: Operation) -> Any:
    """The operation's result type: its function's return annotation (TypedDicts from
    :mod:`handler_consul._results`, which pydantic takes as they are)."""
    run: Callable[..., Any] = operation.run
    try:
        hints = typing.get_type_hints(run)
    except (NameError, TypeError):
        return dict[str, Any]
    return hints.get("return", dict[str, Any])


def _const(name: str) -> Any:
    return Literal[name]


def _tagged(variants: list[Any]) -> TypeAdapter[Any]:
    """A TypeAdapter for a union of models told apart by their ``operation`` constant."""
    union: Any = Annotated[_union(variants), Field(discriminator="operation")]
    return TypeAdapter(union)


def _union(members: list[Any]) -> Any:
    return members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007


def envelope_adapter() -> TypeAdapter[Any]:
    """A TypeAdapter for the envelope as a discriminated union over ``operation``."""
    variants = [
        create_model(
            f"{_suffix(op.name)}Envelope",
            __doc__=f"An envelope for {op.name}.",
            __base__=Envelope,
            operation=(_const(op.name), ...),
            payload=(op.payload_model, ...),
        )
        for op in sorted(OPERATIONS.values(), key=lambda o: o.name)
    ]
    return _tagged(variants)


def response_adapter() -> TypeAdapter[Any]:
    """A TypeAdapter for the success response with each operation's typed result."""
    variants = [
        create_model(
            f"{_suffix(op.name)}Response",
            __doc__=f"A successful {op.name}.",
            __base__=HandlerResponse,
            operation=(_const(op.name), ...),
            result=(result_type(op), ...),
        )
        for op in sorted(OPERATIONS.values(), key=lambda o: o.name)
    ]
    return _tagged(variants)


def _document(
    adapter: TypeAdapter[Any], title: str, mode: Literal["validation", "serialization"]
) -> dict[str, Any]:
    body = adapter.json_schema(mode=mode)
    return {"$schema": JSON_SCHEMA_DIALECT, **body, "title": title}


def schema(kind: str = "all") -> dict[str, Any]:
    """The JSON Schema document for ``kind``; ``all`` maps each kind to its own document."""
    if kind == "envelope":
        return _document(envelope_adapter(), "handler-consul envelope", "validation")
    if kind == "result":
        return _document(response_adapter(), "handler-consul success response", "serialization")
    if kind == "error":
        return _document(TypeAdapter(ErrorLine), "handler-consul error", "serialization")
    if kind == "all":
        return {k: schema(k) for k in KINDS if k != "all"}
    raise ValueError(f"unknown schema kind {kind!r}; choose from {', '.join(KINDS)}")
