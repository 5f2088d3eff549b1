"""The error tree, split by what the caller can do about it.

    InfraError
    ├── InfraValidationError        fix the envelope; nothing reached Consul
    ├── InfraConfigurationError     fix the settings; the handler did not start
    ├── InfraConnectionError        transient: Consul unreachable, 5xx, 429 (retryable)
    │   └── InfraTimeoutError       a request or the envelope deadline ran out
    ├── InfraAuthenticationError    the token was refused (401/403); retrying will not help
    ├── InfraUnavailableError       the handler refused work: breaker open, pool full,
    │                               not initialized, shut down (may carry retry_after_seconds)
    └── InfraConsulError            Consul rejected the request (400, 413, ...)
        └── InfraConflictError      others kept winning: a CAS update ran out of attempts
            └── InfraLockTimeoutError   a lock stayed held by someone else past ``wait``

Each class carries ``retryable`` and ``counts_as_failure`` as class attributes so the retry
loop and the breaker read them instead of re-deriving a classification (aiokafka's idea).
Every instance carries a frozen :class:`ErrorContext`; messages are written by this package
and never interpolate the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, ClassVar, Literal
from urllib.parse import quote
from uuid import UUID

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ContextFields",
    "ErrorCategory",
    "ErrorContext",
    "InfraAuthenticationError",
    "InfraConfigurationError",
    "InfraConflictError",
    "InfraConnectionError",
    "InfraConsulError",
    "InfraError",
    "InfraLockTimeoutError",
    "InfraTimeoutError",
    "InfraUnavailableError",
    "InfraValidationError",
    "carry_outcome",
    "make_context",
    "redact",
]

ErrorCategory = Literal[
    "validation",
    "configuration",
    "connection",
    "timeout",
    "authentication",
    "unavailable",
    "consul",
    "conflict",
]


class ErrorContext(BaseModel):
    """Where and how a failure happened; safe to log and to ship to another process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transport: Literal["consul"] = "consul"
    operation: str | None = None
    target: str | None = None
    correlation_id: UUID | None = None
    datacenter: str | None = None
    attempts: int = 0
    retryable: bool = False
    category: ErrorCategory = "consul"
    status_code: int | None = None
    field: str | None = None
    # Whether the request may have reached Consul. False is a promise: nothing was sent.
    request_sent: bool = False
    # Whether Consul may have applied it (sent, then no answer, or a 5xx). A caller that
    # sees this on a write which is not idempotent reads the state back before deciding.
    outcome_unknown: bool = False


ContextSource = ErrorContext | Callable[[], ErrorContext]


class InfraError(Exception):
    """Base of every error the handler raises."""

    category: ClassVar[ErrorCategory] = "consul"
    retryable: ClassVar[bool] = False
    counts_as_failure: ClassVar[bool] = False

    def __init__(self, message: str, *, context: ContextSource | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A factory is accepted so that the open-breaker fast path does not pay for a model
        # its caller may never read; it is resolved once, on first access.
        self._context: ContextSource | None = context

    @property
    def context(self) -> ErrorContext:
        """Where and how it failed (frozen)."""
        context = self._context
        if not isinstance(context, ErrorContext):
            context = context() if context is not None else ErrorContext(category=self.category)
            self._context = context
        return context

    @property
    def outcome_unknown(self) -> bool:
        """Consul may have applied the request: a write is re-sent only if idempotent."""
        return self.context.outcome_unknown

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the class name, the message and the context."""
        data: dict[str, Any] = {
            "error": type(self).__name__,
            "message": self.message,
            "context": self.context.model_dump(mode="json"),
        }
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, context={self.context!r})"


class InfraValidationError(InfraError):
    """The envelope or payload is malformed; ``context.field`` names the offending field."""

    category: ClassVar[ErrorCategory] = "validation"

    def __init__(
        self,
        message: str,
        *,
        context: ContextSource | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.errors: list[dict[str, Any]] = errors or []

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["errors"] = self.errors
        return data


class InfraConfigurationError(InfraError):
    """The settings are invalid; ``context.field`` names the offending setting."""

    category: ClassVar[ErrorCategory] = "configuration"


class InfraConnectionError(InfraError):
    """Consul could not be reached or answered with a transient failure (5xx, 429)."""

    category: ClassVar[ErrorCategory] = "connection"
    retryable = True
    counts_as_failure = True


class InfraTimeoutError(InfraConnectionError):
    """A request timed out or the envelope's deadline passed.

    A timed-out write may or may not have been applied, so the retry loop re-sends it only
    when the operation is idempotent.
    """

    category: ClassVar[ErrorCategory] = "timeout"


class InfraAuthenticationError(InfraError):
    """Consul refused the token (401/403). Not retried and not an outage."""

    category: ClassVar[ErrorCategory] = "authentication"


class InfraUnavailableError(InfraError):
    """The handler refused or gave up on the envelope: breaker open, pool saturated, not
    initialized, shut down. Usually nothing was sent; an envelope failed by ``shutdown()``
    while its request was running says so in ``context.request_sent``."""

    category: ClassVar[ErrorCategory] = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        context: ContextSource | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.retry_after_seconds = retry_after_seconds

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["retry_after_seconds"] = self.retry_after_seconds
        return data


class InfraConsulError(InfraError):
    """Consul answered and rejected the request (400, 413, other 4xx)."""

    category: ClassVar[ErrorCategory] = "consul"


class InfraConflictError(InfraConsulError):
    """Consul answered every request, but other writers kept winning: a CAS update
    (``kv_update``) ran out of attempts. Nothing of this caller's was applied. Retrying later
    may succeed; the handler has already retried."""

    category: ClassVar[ErrorCategory] = "conflict"


class InfraLockTimeoutError(InfraConflictError):
    """``lock()`` waited ``wait`` seconds and the key stayed held by another session. The
    session created for the attempt was destroyed; nothing is held."""


class ContextFields:
    """The per-envelope facts every error context repeats, gathered once."""

    __slots__ = ("correlation_id", "datacenter", "operation", "target")

    def __init__(
        self,
        operation: str | None,
        correlation_id: UUID | None,
        target: str,
        datacenter: str | None,
    ) -> None:
        self.operation = operation
        self.correlation_id = correlation_id
        self.target = target
        self.datacenter = datacenter


def make_context(
    fields: ContextFields,
    error_class: type[InfraError],
    attempts: int,
    *,
    status_code: int | None = None,
    field: str | None = None,
    request_sent: bool = False,
    outcome_unknown: bool = False,
) -> ErrorContext:
    """The context factory for every error about an envelope or a call (configuration errors,
    which precede both, carry a bare ErrorContext naming the setting)."""
    return ErrorContext.model_construct(
        transport="consul",
        operation=fields.operation,
        target=fields.target,
        correlation_id=fields.correlation_id,
        datacenter=fields.datacenter,
        attempts=attempts,
        retryable=error_class.retryable,
        category=error_class.category,
        status_code=status_code,
        field=field,
        request_sent=request_sent,
        outcome_unknown=outcome_unknown,
    )


def redact(text: str, token: str | None) -> str:
    """``text`` with the token replaced, as sent and in the forms a server may echo it in
    (percent-encoded, JSON-escaped, in another case)."""
    if not token:
        return text
    for form in {token, quote(token, safe=""), json.dumps(token)[1:-1]}:
        if form.lower() in text.lower():
            text = re.sub(re.escape(form), "[REDACTED]", text, flags=re.IGNORECASE)
    return text


def carry_outcome(error: InfraError, request_sent: bool, outcome_unknown: bool) -> InfraError:
    """``error`` with the history of the envelope's earlier attempts folded into its context.

    The last attempt may have been refused outright (a 400, an open breaker) after an earlier
    one reached Consul and lost its answer: the caller must still learn that the write may
    have been applied.
    """
    context = error.context
    if (request_sent and not context.request_sent) or (
        outcome_unknown and not context.outcome_unknown
    ):
        error._context = context.model_copy(
            update={
                "request_sent": context.request_sent or request_sent,
                "outcome_unknown": context.outcome_unknown or outcome_unknown,
            }
        )
    return error
