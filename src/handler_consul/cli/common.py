"""What the commands share: error lines, one envelope from validation to response, the
handler's start and stop, and one request with the internal client.

The commands import this module only once they run, so ``--help`` never loads the handler.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import anyio

from handler_consul._client import ConsulClient
from handler_consul._envelope import HandlerResponse
from handler_consul._errors import (
    ContextFields,
    ErrorContext,
    InfraConfigurationError,
    InfraConnectionError,
    InfraError,
    InfraValidationError,
)
from handler_consul._handler import HandlerConsul
from handler_consul._operations import OPERATIONS
from handler_consul._parsing import parse_envelope
from handler_consul._runtime import build_client, read_token
from handler_consul._settings import ConsulSettings, load_settings
from handler_consul._translate import translate
from handler_consul.cli.output import (
    EXIT_FAILED,
    EXIT_NOT_STARTED,
    EXIT_USAGE,
    emit,
    warn,
)

T = TypeVar("T")

logger = logging.getLogger("handler_consul.cli")


# -- error lines -----------------------------------------------------------------------------


def _uuid_or_none(value: Any) -> str | None:
    """Echo an id from the input only when it is a UUID (input may carry anything)."""
    if isinstance(value, str):
        try:
            return str(UUID(value))
        except ValueError:
            return None
    return None


def error_line(error: InfraError, raw: Any = None, line: int | None = None) -> dict[str, Any]:
    """``error.to_dict()`` plus status, operation, correlation_id, envelope_id (and line)."""
    data = error.to_dict()
    data["status"] = "error"
    ctx = error.context
    raw_map: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    operation = ctx.operation
    if operation is None and raw_map.get("operation") in OPERATIONS:
        operation = raw_map["operation"]
    data["operation"] = operation
    data["correlation_id"] = (
        str(ctx.correlation_id)
        if ctx.correlation_id
        else _uuid_or_none(raw_map.get("correlation_id"))
    )
    data["envelope_id"] = _uuid_or_none(raw_map.get("envelope_id"))
    if line is not None:
        data["line"] = line
    return data


def brief(error: InfraError) -> str:
    """One human line: the class, the field when the input was refused, the message."""
    if isinstance(error, InfraValidationError) and error.errors:
        first = error.errors[0]
        return f"{type(error).__name__} ({first['field']}): {first['message']}"
    return f"{type(error).__name__}: {error.message}"


def report_error(error: InfraError, raw: Any = None, *, as_json: bool) -> None:
    """JSON on stdout (where a script reads results), or one line on stderr for a person."""
    if as_json:
        emit(error_line(error, raw))
    else:
        warn(f"Error! {brief(error)}")


def exit_code_for(error: InfraError) -> int:
    """2 when the input was refused (nothing sent), 3 when the handler could not start or
    reach Consul before anything was sent, else 1."""
    if isinstance(error, InfraValidationError):
        return EXIT_USAGE
    if isinstance(error, InfraConfigurationError):
        return EXIT_NOT_STARTED
    return EXIT_FAILED


def input_error(message: str) -> InfraValidationError:
    return InfraValidationError(
        message, context=ErrorContext(category="validation", field="envelope")
    )


def parse_json(text: str | bytes) -> tuple[Any, InfraValidationError | None]:
    try:
        return json.loads(text), None
    except UnicodeDecodeError:
        return None, input_error("input is not UTF-8 text")
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the text itself may hold a secret.
        return None, input_error(f"input is not JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        # json's decoder recurses per nesting level: a line of 100,000 '[' is bad input.
        return None, input_error("input is not JSON this handler reads: nested too deeply")


# -- settings and validation, before anything connects ---------------------------------------


def settings_for(config: Mapping[str, Any]) -> ConsulSettings:
    """The settings ``initialize(config)`` would use; InfraConfigurationError if invalid."""
    return load_settings(None, config)


def check_envelope(envelope: Any, settings: ConsulSettings) -> None:
    """The handler's own parsing and payload validation, with no Consul: InfraValidationError
    naming the field, exactly as ``execute()`` would refuse the envelope.

    The settings give the same check-target rules the configured handler applies (a health
    check may not aim at Consul's own address, so they depend on it) and the error's target.
    """
    parse_envelope(envelope, settings.breaker_name, settings.datacenter, settings.check_policy)


# -- the handler -----------------------------------------------------------------------------


async def start_handler(config: Mapping[str, Any]) -> HandlerConsul:
    """An initialized handler; InfraError when it cannot start."""
    handler = HandlerConsul()
    await handler.initialize(config)
    return handler


async def stop_handler(handler: HandlerConsul) -> None:
    with anyio.CancelScope(shield=True):
        await handler.shutdown()


@dataclass(frozen=True)
class Failure:
    """Why an envelope did not succeed, and the exit status that means."""

    error: InfraError
    exit_code: int

    def report(self, raw: Any = None, *, as_json: bool) -> int:
        report_error(self.error, raw, as_json=as_json)
        return self.exit_code


async def execute_once(config: Mapping[str, Any], envelope: Any) -> HandlerResponse | Failure:
    """Settings, then validation, then initialize, then execute.

    Validation comes before initialize so that a typo (``consul.kv_gte``) is reported as the
    invalid input it is (exit 2), not as "Consul unreachable" when the agent is down.
    """
    try:
        check_envelope(envelope, settings_for(config))
    except InfraError as error:
        return Failure(error, exit_code_for(error))
    try:
        handler = await start_handler(config)
    except InfraError as error:
        return Failure(error, EXIT_NOT_STARTED)
    try:
        return await handler.execute(envelope)
    except InfraError as error:
        return Failure(error, exit_code_for(error))
    finally:
        await stop_handler(handler)


# -- one request with the internal client ----------------------------------------------------


async def call_client(
    config: Mapping[str, Any], operation: str, work: Callable[[ConsulClient], T]
) -> T:
    """Run ``work(client)`` once in a worker thread with the handler's internal client.

    For what has no operation yet (``kv delete``, ``services list``, the demo's cleanup):
    the same transport, address rules and token header as the handler, but one attempt,
    without the handler's pool, breaker or retries. Failures are translated at the package's
    one boundary, so they read like the handler's own errors. The caller validates any input
    that reaches a URL path first, with the operations' rules.
    """
    settings = settings_for(config)
    # Read once (a token file too), so that the translation below can redact it.
    token = read_token(settings)
    client = build_client(settings, token=token)
    failure: InfraError | None = None
    try:
        return await anyio.to_thread.run_sync(work, client)
    except Exception as exc:
        fields = ContextFields(operation, None, settings.breaker_name, settings.datacenter)
        failure = translate(exc, fields, attempts=1, token=token)
    finally:
        client.http.close()
    # Raised here, outside the except block: the translated error carries what it may.
    raise failure


def client_exit_code(error: InfraError) -> int:
    """For a direct request: unreachable counts as "could not start", as for the handler."""
    if isinstance(error, InfraConnectionError) and not error.context.request_sent:
        return EXIT_NOT_STARTED
    return exit_code_for(error)


def stdin_bytes() -> bytes:
    return sys.stdin.buffer.read()
