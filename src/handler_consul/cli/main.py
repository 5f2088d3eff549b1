"""``handler-consul``: Consul operations from a shell or a pipeline.

    handler-consul kv put config/app/timeout 30
    handler-consul kv get config/app/timeout
    handler-consul services register --name web --port 8080
    echo '{"operation": "consul.kv_get", "payload": {"key": "a"}}' | handler-consul exec
    handler-consul validate envelopes.jsonl && handler-consul run --file envelopes.jsonl

The parser (``cli.parser``) and this dispatcher import nothing heavy; each command's module,
and with it pydantic, python-consul2 and requests, is imported only when that command runs,
so ``--help`` and usage errors answer in tens of milliseconds.

Exit status: see ``cli.output`` (0 ok, 1 failed, 2 invalid input, 3 could not start,
130 interrupted, 141 stdout closed early).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from handler_consul.cli.logs import configure_logging
from handler_consul.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_STDOUT_CLOSED,
    EXIT_USAGE,
    StdoutClosed,
    UsageError,
    flush_stdout,
    warn,
)
from handler_consul.cli.parser import build_parser, overrides

AsyncCommand = Callable[[argparse.Namespace, Mapping[str, Any]], Awaitable[int]]


def _async_command(args: argparse.Namespace) -> AsyncCommand:
    """The coroutine function for a command that runs on the event loop, imported now."""
    command = args.command
    if command == "kv":
        from handler_consul.cli.kv import cmd_kv_delete, cmd_kv_get, cmd_kv_put

        return {"get": cmd_kv_get, "put": cmd_kv_put, "delete": cmd_kv_delete}[args.kv_command]
    if command == "services":
        from handler_consul.cli.services import (
            cmd_services_deregister,
            cmd_services_list,
            cmd_services_register,
        )

        return {
            "register": cmd_services_register,
            "deregister": cmd_services_deregister,
            "list": cmd_services_list,
        }[args.services_command]
    if command == "exec":
        from handler_consul.cli.exec_cmd import cmd_exec

        return cmd_exec
    if command == "run":
        from handler_consul.cli.run import cmd_run

        return cmd_run
    from handler_consul.cli.info import cmd_describe, cmd_health

    return {"describe": cmd_describe, "health": cmd_health}[command]


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from handler_consul.cli.info import cmd_schema

        return cmd_schema(args)
    config = overrides(args)
    if args.command == "validate" or (args.command == "run" and args.dry_run):
        from handler_consul.cli.validate import cmd_validate

        if args.command == "run":  # the alias: run's input, validate's checks
            args.path = "-" if args.file is None else str(args.file)
        return cmd_validate(args, config)
    if args.command == "demo":
        from handler_consul.cli.demo import cmd_demo

        return cmd_demo(args, config)
    import anyio

    return anyio.run(_async_command(args), args, config)


def _only_stdout_closed(group: BaseExceptionGroup[BaseException]) -> bool:
    """True when a task group ended only because stdout was closed."""
    _, rest = group.split(StdoutClosed)
    return rest is None


def _on_sigterm(signum: int, frame: Any) -> None:
    # Delivered as a SIGINT, which asyncio's runner turns into a clean cancellation of the
    # main task; a KeyboardInterrupt raised here, at an arbitrary bytecode, escaped it.
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except StdoutClosed:  # --help or --version into a pipe already closed
        return EXIT_STDOUT_CLOSED
    except SystemExit:  # --help, --version, a usage error: flushed here too, not at exit
        try:
            flush_stdout()
        except StdoutClosed:
            return EXIT_STDOUT_CLOSED
        raise
    configure_logging(args.log_level, args.log_format)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # So `finally` blocks run (the demo agent is stopped) when we are terminated.
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _dispatch(args)
    except UsageError as exc:
        warn(f"handler-consul: {exc}")
        code = EXIT_USAGE
    except KeyboardInterrupt:
        warn("handler-consul: interrupted")
        code = EXIT_INTERRUPTED
    except StdoutClosed:
        code = EXIT_STDOUT_CLOSED
    except BaseExceptionGroup as group:
        if not _only_stdout_closed(group):
            raise
        code = EXIT_STDOUT_CLOSED
    try:
        flush_stdout()  # here, not at interpreter exit, where a failure is only printed
    except StdoutClosed:
        code = EXIT_STDOUT_CLOSED
    return code
