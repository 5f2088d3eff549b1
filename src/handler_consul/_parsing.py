"""Envelope in: the dict or Envelope an orchestrator hands over, checked against the
operation's own strict payload model before anything else happens.

A refusal is an InfraValidationError whose ``context.field`` names the offending field
(``operation``, ``payload.key``, ``timeout_seconds`` ...). Input values are never echoed:
a misplaced token must not end up in an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError

from handler_consul._check_policy import DEFAULT_CHECK_POLICY, CheckPolicy
from handler_consul._envelope import Envelope
from handler_consul._errors import ContextFields, InfraValidationError, make_context
from handler_consul._operations import OPERATIONS, Operation

__all__ = ["parse_envelope", "parse_options"]

M = TypeVar("M", bound=BaseModel)

# Type tags pydantic puts in an error location for union members; not part of a field name.
_LOC_TAGS = frozenset({"str", "bytes", "int", "float", "bool", "dict", "list", "none"})


def parse_envelope(
    envelope: Envelope | Mapping[str, Any],
    target: str,
    datacenter: str | None,
    policy: CheckPolicy = DEFAULT_CHECK_POLICY,
) -> tuple[Operation, Any, Envelope]:
    """The operation, its validated payload and the envelope, or InfraValidationError.

    ``policy`` (from the settings) is what a registered health check may target.
    """
    problem: InfraValidationError | None = None
    try:
        env = envelope if isinstance(envelope, Envelope) else Envelope.model_validate(envelope)
    except ValidationError as exc:
        problem = _validation_error(exc, "", None, envelope, target, datacenter)
    if problem is not None:
        raise problem
    operation = OPERATIONS.get(env.operation)
    if operation is None:
        raise InfraValidationError(
            f"unknown operation {env.operation!r}; supported: {', '.join(sorted(OPERATIONS))}",
            context=make_context(
                ContextFields(env.operation, env.correlation_id, target, datacenter),
                InfraValidationError,
                attempts=0,
                field="operation",
            ),
        )
    try:
        payload = operation.payload_model.model_validate(env.payload, context=policy)
    except ValidationError as exc:
        problem = _validation_error(exc, "payload", operation.name, env, target, datacenter)
    if problem is not None:
        raise problem
    return operation, payload, env


def parse_options(
    model: type[M],
    data: Mapping[str, Any],
    operation: str,
    target: str,
    datacenter: str | None,
) -> M:
    """Keyword options of a Python-only method (``lease()``), validated like a payload: a
    refusal is an InfraValidationError naming the keyword."""
    problem: InfraValidationError | None = None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problem = _validation_error(exc, "", operation, None, target, datacenter)
    raise problem


def _field_name(loc: tuple[int | str, ...], prefix: str) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _LOC_TAGS or "[" in p))]
    return ".".join([prefix, *parts] if prefix else parts) or (prefix or "envelope")


def _validation_error(
    exc: ValidationError,
    prefix: str,
    operation: str | None,
    envelope: Any,
    target: str,
    datacenter: str | None,
) -> InfraValidationError:
    """Name the first offending field; never echo input values (they may be secrets)."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    field = _field_name(errors[0]["loc"], prefix)
    details = [
        {"field": _field_name(e["loc"], prefix), "type": e["type"], "message": e["msg"]}
        for e in errors
    ]
    correlation_id: UUID | None = None
    if isinstance(envelope, Envelope):
        correlation_id = envelope.correlation_id
    elif isinstance(envelope, Mapping):
        raw = envelope.get("correlation_id")
        if isinstance(raw, UUID):
            correlation_id = raw
        elif isinstance(raw, str):
            try:
                correlation_id = UUID(raw)
            except ValueError:
                correlation_id = None
    if envelope is not None and not isinstance(envelope, Envelope | Mapping):
        field, message = "envelope", "envelope must be a mapping or an Envelope"
    else:
        message = f"invalid envelope: {field}: {errors[0]['msg']}"
    return InfraValidationError(
        message,
        context=make_context(
            ContextFields(operation, correlation_id, target, datacenter),
            InfraValidationError,
            attempts=0,
            field=field,
        ),
        errors=details,
    )
