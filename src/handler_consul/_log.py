"""Log records with the fields orchestrators filter on, built in one place.

Per-envelope records go to ``handler_consul.envelope`` at DEBUG and are built only when that
level is enabled; lifecycle and breaker records go to ``handler_consul.handler``.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from handler_consul._errors import ContextFields, InfraError

__all__ = [
    "envelope_log",
    "handler_log",
    "log_attempt_failure",
    "log_envelope_failure",
    "log_envelope_success",
]

handler_log = logging.getLogger("handler_consul.handler")
envelope_log = logging.getLogger("handler_consul.envelope")


def _extra(
    correlation_id: UUID | None,
    operation: str | None,
    attempt: int,
    seconds: float,
    outcome: str,
    **more: Any,
) -> dict[str, Any]:
    return {
        "correlation_id": str(correlation_id) if correlation_id else None,
        "operation": operation,
        "attempt": attempt,
        "duration_ms": round(seconds * 1000.0, 3),
        "outcome": outcome,
        **more,
    }


def log_envelope_success(
    operation: str, correlation_id: UUID, attempts: int, seconds: float
) -> None:
    if envelope_log.isEnabledFor(logging.DEBUG):
        envelope_log.debug(
            "%s succeeded",
            operation,
            extra=_extra(correlation_id, operation, attempts, seconds, "success"),
        )


def log_envelope_failure(error: InfraError, seconds: float) -> None:
    if envelope_log.isEnabledFor(logging.DEBUG):
        context = error.context
        outcome = type(error).__name__
        envelope_log.debug(
            "%s failed: %s",
            context.operation or "envelope",
            outcome,
            extra=_extra(
                context.correlation_id,
                context.operation,
                context.attempts,
                seconds,
                outcome,
                field=context.field,
            ),
        )


def log_attempt_failure(
    fields: ContextFields, error: InfraError, attempt: int, seconds: float, retrying: bool
) -> None:
    if envelope_log.isEnabledFor(logging.DEBUG):
        outcome = type(error).__name__
        envelope_log.debug(
            "%s attempt %d failed: %s%s",
            fields.operation,
            attempt,
            outcome,
            " (retrying)" if retrying else "",
            extra=_extra(
                fields.correlation_id,
                fields.operation,
                attempt,
                seconds,
                outcome,
                retrying=retrying,
            ),
        )
