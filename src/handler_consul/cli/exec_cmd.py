"""``handler-consul exec``: one envelope from an argument, a file or stdin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from handler_consul.cli.common import Failure, execute_once, parse_json
from handler_consul.cli.output import EXIT_OK, EXIT_USAGE, UsageError, emit, is_tty, wants_json

_HOW = "a JSON argument, --file PATH, or JSON on stdin (echo '{...}' | handler-consul exec)"


def read_envelope(args: argparse.Namespace) -> str:
    """The argument, else the file, else stdin when it is not a terminal (a pipe, a file)."""
    if args.file is not None and args.envelope is not None:
        raise UsageError("give the envelope as an argument or with --file, not both")
    if args.file is not None:
        try:
            return str(args.file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read {args.file}: {reason}") from None
    if args.envelope is not None and args.envelope != "-":
        return str(args.envelope)
    if args.envelope is None and is_tty(sys.stdin):
        # Waiting for a person to type JSON would look like a hang.
        raise UsageError(f"exec needs an envelope: {_HOW}")
    text = sys.stdin.read()
    if not text.strip():
        raise UsageError(f"exec needs an envelope: stdin was empty; give {_HOW}")
    return text


async def cmd_exec(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    as_json = wants_json(args.format)
    envelope, problem = parse_json(read_envelope(args))
    if problem is not None:
        return Failure(problem, EXIT_USAGE).report(as_json=as_json)
    outcome = await execute_once(config, envelope)
    if isinstance(outcome, Failure):
        return outcome.report(envelope, as_json=as_json)
    # Indented on a terminal; one line (JSON Lines) for a pipe or a file.
    emit(outcome.model_dump(mode="json"), pretty=not as_json)
    return EXIT_OK
