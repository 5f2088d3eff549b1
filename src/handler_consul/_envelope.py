"""The envelope an orchestrator hands in and the response it gets back."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_ENVELOPE_TIMEOUT_SECONDS", "Envelope", "HandlerResponse"]

# An envelope may ask for a shorter or longer deadline than the default, but not one that
# would let a single envelope pin a worker for hours.
MAX_ENVELOPE_TIMEOUT_SECONDS = 3600.0


class Envelope(BaseModel):
    """One operation request. ``payload`` is checked against the operation's own model.

    Strict: ``"5"`` is not a timeout and ``1`` is not an operation. The IDs alone accept
    their text form, since that is how UUIDs travel in JSON.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    operation: str = Field(min_length=1, max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict)
    correlation_id: UUID | None = Field(None, strict=False)
    envelope_id: UUID | None = Field(None, strict=False)
    timeout_seconds: float | None = Field(None, gt=0, le=MAX_ENVELOPE_TIMEOUT_SECONDS)


class HandlerResponse(BaseModel):
    """A successful outcome; failures are raised as InfraError subclasses instead."""

    model_config = ConfigDict(frozen=True)

    status: Literal["success"] = "success"
    operation: str
    correlation_id: UUID
    envelope_id: UUID | None = None
    result: dict[str, Any]
    attempts: int
    duration_ms: float

    @classmethod
    def trusted(
        cls,
        operation: str,
        correlation_id: UUID,
        envelope_id: UUID | None,
        result: dict[str, Any],
        attempts: int,
        duration_ms: float,
    ) -> HandlerResponse:
        """Build from values the handler produced itself, without validation.

        What ``model_construct`` does, minus its per-field loop over defaults and aliases
        (~3 µs per envelope on the event loop in bench profiles). tests/test_envelope.py
        checks that the result equals ``model_construct``'s, so a pydantic upgrade that
        changes the model's internals fails a test rather than misbehaving.
        """
        response = _new(cls)
        _set(
            response,
            "__dict__",
            {
                "status": "success",
                "operation": operation,
                "correlation_id": correlation_id,
                "envelope_id": envelope_id,
                "result": result,
                "attempts": attempts,
                "duration_ms": duration_ms,
            },
        )
        _set(response, "__pydantic_fields_set__", set(_ALL_RESPONSE_FIELDS))
        _set(response, "__pydantic_extra__", None)
        _set(response, "__pydantic_private__", None)
        return response


_new = object.__new__
_set = object.__setattr__
_ALL_RESPONSE_FIELDS = frozenset(HandlerResponse.model_fields)
