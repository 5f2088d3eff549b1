"""The one place where python-consul2's, the transport's and the pool's exceptions become ours.

Every raise of an InfraError for a failed attempt goes through :func:`translate`, which also
builds the error's context. The original exception is kept as ``__cause__`` for debugging
unless its text contains the token (it never should: Consul's messages name the token's
AccessorID, not its secret); the message is ours, with Consul's body shortened.
"""

from __future__ import annotations

import re
from uuid import UUID

import consul.base

from handler_consul.errors import (
    ErrorContext,
    InfraAuthenticationError,
    InfraConnectionError,
    InfraConsulError,
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
)
from handler_consul.pool import PoolClosed, PoolSaturated, PoolTimeout
from handler_consul.transport import TransportError

__all__ = ["ContextFields", "make_context", "translate"]

_STATUS = re.compile(r"^(\d{3})\s?(.*)$", re.DOTALL)
# Consul answers some of the caller's mistakes with a 500 ("raft apply failed: invalid
# session ..."). They are rejections, not outages:
# retrying cannot help, and counting them would let one caller's bad input open the breaker
# for everyone.
_CALLER_ERRORS_500 = ("invalid session", "path traversal is not allowed")
_MAX_BODY = 200


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
) -> ErrorContext:
    """The single context factory: every InfraError the handler raises is built with it."""
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
    )


def _status_and_body(exc: BaseException) -> tuple[int | None, str]:
    text = str(exc)
    match = _STATUS.match(text)
    if match:
        return int(match.group(1)), match.group(2)
    return None, text


def _short(body: str) -> str:
    body = " ".join(body.split())
    return body if len(body) <= _MAX_BODY else body[: _MAX_BODY - 3] + "..."


def translate(
    exc: BaseException, fields: ContextFields, *, attempts: int, token: str | None
) -> InfraError:
    """Map one failed attempt to the error class the contract names for it.

    ``outcome_unknown`` is set on the result when the request may have been applied by
    Consul (sent and then timed out, or answered with a 5xx), which is what stops a
    non-idempotent write from being re-sent.
    """
    if isinstance(exc, InfraError):
        return exc

    error_class: type[InfraError]
    status: int | None = None
    outcome_unknown = False
    retry_after: float | None = None
    op = fields.operation or "request"

    if isinstance(exc, TransportError):
        error_class = InfraTimeoutError if exc.kind == "timeout" else InfraConnectionError
        message = f"{op}: {exc}"
        outcome_unknown = exc.request_sent
    elif isinstance(exc, PoolTimeout):
        error_class = InfraTimeoutError
        message = f"{op}: envelope deadline passed before Consul answered"
        outcome_unknown = True
    elif isinstance(exc, PoolSaturated):
        error_class = InfraUnavailableError
        message = f"{op}: all Consul workers busy ({exc})"
    elif isinstance(exc, PoolClosed):
        error_class = InfraUnavailableError
        message = f"{op}: HandlerConsul {exc}"
    elif isinstance(exc, consul.base.ACLPermissionDenied):
        error_class, status = InfraAuthenticationError, 403
        message = f"{op}: Consul ACL denied the request (403): {_short(str(exc))}"
    elif isinstance(exc, consul.base.ACLDisabled):
        error_class, status = InfraAuthenticationError, 401
        message = f"{op}: Consul refused the credentials (401): {_short(str(exc))}"
    elif isinstance(exc, consul.base.BadRequest):
        status, body = _status_and_body(exc)
        error_class = InfraConsulError
        message = f"{op}: Consul rejected the request ({status or 400}): {_short(body)}"
    elif isinstance(exc, consul.base.NotFound):
        error_class, status = InfraConsulError, 404
        message = f"{op}: Consul answered 404: {_short(str(exc))}"
    elif isinstance(exc, consul.base.ConsulException):
        # ClientError (other 4xx) and plain ConsulException (5xx) carry "<code> <body>".
        status, body = _status_and_body(exc)
        if status == 500 and any(phrase in body.lower() for phrase in _CALLER_ERRORS_500):
            error_class = InfraConsulError
            message = f"{op}: Consul rejected the request ({status}): {_short(body)}"
        elif status is not None and (status >= 500 or status == 429):
            error_class = InfraConnectionError
            outcome_unknown = status >= 500
            message = f"{op}: Consul answered {status}: {_short(body)}"
        else:
            error_class = InfraConsulError
            message = f"{op}: Consul rejected the request ({status}): {_short(body)}"
    else:
        # A response python-consul2 could not parse, or a bug: not retried, not an outage.
        error_class = InfraConsulError
        message = f"{op}: unexpected failure handling Consul's answer ({type(exc).__name__})"

    if token and token in message:
        message = message.replace(token, "[REDACTED]")
    context = make_context(fields, error_class, attempts=attempts, status_code=status)
    error: InfraError
    if error_class is InfraUnavailableError:
        error = InfraUnavailableError(message, context=context, retry_after_seconds=retry_after)
    else:
        error = error_class(message, context=context)
    error.outcome_unknown = outcome_unknown
    if not (token and _mentions(exc, token)):
        error.__cause__ = exc
    error.__suppress_context__ = True
    return error


def _mentions(exc: BaseException, token: str) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if token in str(current) or any(token in repr(arg) for arg in current.args):
            return True
        current = current.__cause__ or current.__context__
    return False
