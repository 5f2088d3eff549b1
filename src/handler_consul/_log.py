"""Log records with the fields orchestrators filter on, built in one place.

Per-envelope records go to ``handler_consul.envelope`` at DEBUG and are built only when that
level is enabled; lifecycle and breaker records go to ``handler_consul.handler`` at INFO, or
WARNING when something failed (an initialize that failed, a breaker that opened, envelopes
failed at the end of a shutdown's grace period).

For whoever formats the records: :class:`CorrelationIdFilter` makes ``%(correlation_id)s``
safe in any format string, and :func:`record_fields` gives a record's structured fields (its
``extra=``) for a JSON formatter.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: importing _log (record_fields, the filter) stays light
    from uuid import UUID

    from handler_consul._errors import ContextFields, InfraError

__all__ = [
    "ENVELOPE_FIELDS",
    "NO_CORRELATION_ID",
    "CorrelationIdFilter",
    "envelope_log",
    "handler_log",
    "log_attempt_failure",
    "log_envelope_failure",
    "log_envelope_success",
    "record_fields",
]

handler_log = logging.getLogger("handler_consul.handler")
envelope_log = logging.getLogger("handler_consul.envelope")

# What a record that belongs to no envelope shows for ``%(correlation_id)s``.
NO_CORRELATION_ID = "-"
# The fields every per-envelope record carries, in the order a formatter should show them.
ENVELOPE_FIELDS = ("correlation_id", "operation", "attempt", "duration_ms", "outcome")
# The attributes every LogRecord has; anything else on a record came from ``extra=`` or a filter.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class CorrelationIdFilter(logging.Filter):
    """Gives every record a ``correlation_id``, so ``%(correlation_id)s`` works in any format.

    The handler's per-envelope records carry the envelope's correlation ID; every other
    record (the handler's lifecycle, other libraries, the application) gets ``"-"``, as does
    a record whose ID is ``None``. Add it to the *handler* that formats the records: a
    logger's filters see only records logged on that very logger, not its children's::

        logging.basicConfig(format="%(levelname)s %(correlation_id)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(CorrelationIdFilter())

    It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = NO_CORRELATION_ID
        return True


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's structured fields (its ``extra=`` and what filters added), the envelope's
    first (:data:`ENVELOPE_FIELDS`): what a JSON formatter adds to time, level and message.

    The placeholder :class:`CorrelationIdFilter` puts on records of no envelope is left
    out, so JSON never carries it; other values are as logged (``json.dumps(default=str)``).
    """
    extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    if extra.get("correlation_id") == NO_CORRELATION_ID:
        del extra["correlation_id"]
    first = {k: extra.pop(k) for k in ENVELOPE_FIELDS if k in extra}
    return {**first, **extra}


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
