"""The one boundary where a failed attempt becomes an InfraError.

Below it, the transport raises its own typed errors (status, bounded body, whether the request
was sent) and the pool its own; above it, the retry loop and the breaker read only
``retryable``, ``counts_as_failure`` and ``outcome_unknown``. The mapping is two tables, one
over exception types and one over HTTP statuses, in the spirit of httpx's map of httpcore's
exceptions: the most specific entry wins, and nothing parses message text.
"""

from __future__ import annotations

from collections.abc import Callable

from handler_consul._consul import consul_base
from handler_consul._errors import (
    ContextFields,
    InfraAuthenticationError,
    InfraConnectionError,
    InfraConsulError,
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
    make_context,
    redact,
)
from handler_consul._pool import PoolClosed, PoolSaturated, PoolTimeout
from handler_consul._transport import (
    HTTPStatusError,
    ResponseTooLarge,
    TransportConnectionError,
    TransportTimeout,
)

__all__ = ["translate"]

# Consul answers some of the caller's mistakes with a 500 ("raft apply failed: invalid
# session ..."). They are rejections, not outages: retrying cannot help, and counting them
# would let one caller's bad input open the breaker for everyone.
_CALLER_ERRORS_500 = ("invalid session", "path traversal is not allowed")
_MAX_BODY = 200

# What an exception type means: the error class, a message template (given the operation and
# the exception), whether the request may have reached Consul, and whether it may have applied.
_Rule = Callable[[BaseException], bool]
_Entry = tuple[type[InfraError], str, _Rule, _Rule]


def _sent(exc: BaseException) -> bool:
    return bool(getattr(exc, "request_sent", False))


def _yes(_: BaseException) -> bool:
    return True


def _no(_: BaseException) -> bool:
    return False


# Exception type -> what it means. Checked in order: subclasses before their bases.
_BY_TYPE: tuple[tuple[type[BaseException], _Entry], ...] = (
    (TransportTimeout, (InfraTimeoutError, "{op}: {exc}", _sent, _sent)),
    (TransportConnectionError, (InfraConnectionError, "{op}: {exc}", _sent, _sent)),
    # The answer came back, too big to read: not an outage, and the same next time.
    (ResponseTooLarge, (InfraConsulError, "{op}: {exc}", _yes, _yes)),
    (
        PoolTimeout,
        (InfraTimeoutError, "{op}: envelope deadline passed before Consul answered", _yes, _yes),
    ),
    (PoolSaturated, (InfraUnavailableError, "{op}: all Consul workers busy ({exc})", _no, _no)),
    (PoolClosed, (InfraUnavailableError, "{op}: HandlerConsul {exc}", _sent, _sent)),
    # python-consul2 raises NotFound for endpoints that refuse a 404 answer, and the client
    # for a check the agent does not know: the message says what was not found.
    (consul_base.NotFound, (InfraConsulError, "{op}: {exc} (Consul answered 404)", _yes, _no)),
)


def _entry_for(exc: BaseException) -> _Entry | None:
    for exc_type, entry in _BY_TYPE:
        if isinstance(exc, exc_type):
            return entry
    return None


def _status_entry(status: int, body: str) -> tuple[type[InfraError], bool]:
    """HTTP status -> (error class, outcome unknown)."""
    if status in (401, 403):
        return InfraAuthenticationError, False
    if status == 429:
        return InfraConnectionError, False  # refused before it was applied: safe to re-send
    if status >= 500:
        if any(phrase in body.lower() for phrase in _CALLER_ERRORS_500):
            return InfraConsulError, False
        return InfraConnectionError, True
    return InfraConsulError, False


def _short(body: str) -> str:
    body = " ".join(body.split())
    return body if len(body) <= _MAX_BODY else body[: _MAX_BODY - 3] + "..."


def _status_message(
    op: str, exc: HTTPStatusError, error_class: type[InfraError], token: str | None
) -> str:
    # Redacted before it is shortened: a token cut in two by the shortening would not match.
    status, body = exc.status, _short(redact(exc.body, token))
    if error_class is InfraAuthenticationError:
        what = "ACL denied the request" if status == 403 else "refused the credentials"
        return f"{op}: Consul {what} ({status}): {body}"
    if error_class is InfraConnectionError:
        return f"{op}: Consul answered {status}: {body}"
    return f"{op}: Consul rejected the request ({status}): {body}"


def translate(
    exc: BaseException, fields: ContextFields, *, attempts: int, token: str | None
) -> InfraError:
    """Map one failed attempt to the error class the contract names for it.

    ``outcome_unknown`` is set when the request may have been applied by Consul (sent and
    then no answer, or answered 5xx): it is what stops a non-idempotent write from being
    re-sent, and callers read it in ``context.outcome_unknown``.
    """
    if isinstance(exc, InfraError):
        return exc
    op = fields.operation or "request"
    status: int | None = None
    if isinstance(exc, HTTPStatusError):
        status = exc.status
        error_class, unknown = _status_entry(status, exc.body)
        message, sent = _status_message(op, exc, error_class, token), True
    else:
        entry = _entry_for(exc)
        if entry is None:
            # A response python-consul2 could not parse, or a bug: not retried, not an outage.
            error_class, sent, unknown = InfraConsulError, True, True
            message = f"{op}: unexpected failure handling Consul's answer ({type(exc).__name__})"
        else:
            error_class, template, sent_rule, unknown_rule = entry
            message = template.format(op=op, exc=exc)
            sent, unknown = sent_rule(exc), unknown_rule(exc)
            if isinstance(exc, consul_base.NotFound):
                status = 404

    message = redact(message, token)
    context = make_context(
        fields,
        error_class,
        attempts=attempts,
        status_code=status,
        request_sent=sent,
        outcome_unknown=unknown,
    )
    error: InfraError
    if error_class is InfraUnavailableError:
        error = InfraUnavailableError(message, context=context)
    else:
        error = error_class(message, context=context)
    if not (token and _mentions(exc, token)):
        error.__cause__ = exc
    error.__suppress_context__ = True
    return error


def _mentions(exc: BaseException, token: str) -> bool:
    """Whether the token, in any spelling a server may echo, is in an exception of the chain:
    its text, its args or its attributes (an error body, say)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = [str(current), *map(repr, current.args), *map(repr, vars(current).values())]
        if any(redact(text, token) != text for text in texts):
            return True
        current = current.__cause__ or current.__context__
    return False
