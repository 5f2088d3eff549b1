"""Exit codes, JSON output and error lines, and starting/stopping the handler for a command."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import anyio

from handler_consul._errors import ErrorContext, InfraError, InfraValidationError
from handler_consul._handler import HandlerConsul
from handler_consul._operations import OPERATIONS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_STARTED = 3
EXIT_INTERRUPTED = 130

logger = logging.getLogger("handler_consul.cli")


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 2 with the message on stderr."""


# -- output ----------------------------------------------------------------------------------


def emit(data: Any, *, pretty: bool = False) -> None:
    text = json.dumps(data, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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


# -- the handler -----------------------------------------------------------------------------


async def start_handler(config: Mapping[str, Any]) -> HandlerConsul | None:
    """An initialized handler, or None after printing why it could not start."""
    handler = HandlerConsul()
    try:
        await handler.initialize(config)
    except InfraError as error:
        emit(error_line(error))
        return None
    return handler


async def stop_handler(handler: HandlerConsul) -> None:
    with anyio.CancelScope(shield=True):
        await handler.shutdown()
