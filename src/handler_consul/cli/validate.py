"""``handler-consul validate`` (and ``run --dry-run``): check JSON Lines envelopes with the
handler's own parsing and payload rules, without contacting Consul."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from handler_consul._errors import InfraError, InfraValidationError
from handler_consul._settings import ConsulSettings
from handler_consul.cli.common import (
    check_envelope,
    error_line,
    input_error,
    parse_json,
    report_error,
    settings_for,
)
from handler_consul.cli.jsonl import MAX_LINE_BYTES, lines_of
from handler_consul.cli.output import (
    EXIT_NOT_STARTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    emit,
    say,
    wants_json,
    warn,
)


def _problem(text: bytes | None, settings: ConsulSettings) -> tuple[Any, InfraError | None]:
    """The parsed envelope (when it is JSON) and what is wrong with it, if anything."""
    if text is None:
        return None, input_error(f"line is longer than {MAX_LINE_BYTES} bytes")
    envelope, problem = parse_json(text)
    if problem is not None:
        return None, problem
    try:
        check_envelope(envelope, settings)
    except InfraValidationError as error:
        return envelope, error
    return envelope, None


def describe_problem(error: InfraError) -> tuple[str, str]:
    """The field and the reason, as a person reads them."""
    if isinstance(error, InfraValidationError) and error.errors:
        first = error.errors[0]
        return str(first["field"]), str(first["message"])
    return error.context.field or "envelope", error.message


def cmd_validate(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    """Exit 0 when every envelope is valid, 2 when any is not (each reported with its line
    number and field). No event loop, no handler, no connection."""
    as_json = wants_json(args.format)
    try:
        # The settings shape validation (a health check may not aim at Consul's own
        # address); they are read from the environment and the options, nothing connects.
        settings = settings_for(config)
    except InfraError as problem:
        report_error(problem, as_json=as_json)
        return EXIT_NOT_STARTED
    if args.path == "-":
        fd, owned = sys.stdin.fileno(), False
    else:
        try:
            fd, owned = os.open(args.path, os.O_RDONLY), True
        except OSError as exc:
            raise UsageError(f"cannot read {args.path}: {exc.strerror}") from None
    checked = invalid = 0
    try:
        for lineno, text in lines_of(fd):
            checked += 1
            envelope, error = _problem(text, settings)
            if error is None:
                continue
            invalid += 1
            if as_json:
                emit(error_line(error, envelope, lineno))
            else:
                field, reason = describe_problem(error)
                say(f"line {lineno}: {field}: {reason}")
    finally:
        if owned:
            os.close(fd)
    warn(
        f"handler-consul validate: {checked} envelope{'' if checked == 1 else 's'}, "
        f"{checked - invalid} valid, "
        f"{invalid} invalid"
    )
    return EXIT_USAGE if invalid else EXIT_OK
