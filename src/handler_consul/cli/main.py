"""``handler-consul``: run envelopes from a shell or a pipeline.

    handler-consul exec '{"operation": "consul.kv_get", "payload": {"key": "a"}}'
    handler-consul run --file envelopes.jsonl --concurrency 20 > results.jsonl
    handler-consul describe | health | schema [--kind ...] | demo

Connection options (``--host --port --scheme --timeout --datacenter``) override the
environment through ``initialize()``'s mapping. The token comes only from ``CONSUL_TOKEN`` /
``CONSUL_HTTP_TOKEN`` or ``--token-file``: an argument would show in ``ps``.

Exit status: 0 success; 1 an envelope failed (or ``health`` is unhealthy, or a ``demo``
step went wrong); 2 usage error or input that is not JSON; 3 the handler could not start
(bad settings, Consul unreachable); 130 interrupted. Results and errors go to stdout as
JSON, logs and progress to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import anyio

from handler_consul._errors import InfraError
from handler_consul._handler import HandlerConsul
from handler_consul._schema import KINDS, schema
from handler_consul._settings import load_settings
from handler_consul._version import __version__
from handler_consul.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    emit,
    error_line,
    parse_json,
    start_handler,
    stop_handler,
)
from handler_consul.cli.demo import cmd_demo
from handler_consul.cli.logs import configure_logging
from handler_consul.cli.run import cmd_run

# -- arguments -------------------------------------------------------------------------------


class _RefuseToken(argparse.Action):
    """``--token`` exists only to refuse it without echoing the value."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "there is no --token option (a token on the command line shows in ps): "
            "set CONSUL_TOKEN or CONSUL_HTTP_TOKEN, or use --token-file"
        )


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The same options on the main parser and on every subcommand, so they go anywhere.

    On subcommands the defaults are SUPPRESS so a value given before the subcommand is not
    reset by the subparser's default.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection (override the environment)")
    group.add_argument("--host", default=default(None), help="Consul host (CONSUL_HOST)")
    group.add_argument("--port", type=int, default=default(None), help="HTTP port (CONSUL_PORT)")
    group.add_argument(
        "--scheme", choices=("http", "https"), default=default(None), help="(CONSUL_SCHEME)"
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="per request and default envelope deadline (CONSUL_TIMEOUT)",
    )
    group.add_argument("--datacenter", default=default(None), help="(CONSUL_DATACENTER)")
    group.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="read the ACL token from this file; otherwise CONSUL_TOKEN / CONSUL_HTTP_TOKEN. "
        "There is no --token: it would show in ps.",
    )
    group.add_argument("--token", action=_RefuseToken, nargs="?", help=argparse.SUPPRESS)
    logs = parser.add_argument_group("logging (to stderr)")
    logs.add_argument(
        "--log-level",
        default=default("WARNING"),
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    logs.add_argument("--log-format", default=default("text"), choices=("text", "json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handler-consul",
        # No prefix matching: `--token SECRET` must be an error, not `--token-file SECRET`.
        allow_abbrev=False,
        description="Run HandlerConsul envelopes against Consul from the command line.",
        epilog="Exit status: 0 ok, 1 an envelope failed / unhealthy, 2 usage or input not "
        "JSON, 3 the handler could not start, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"handler-consul {__version__}")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        _add_global_options(p, suppress=True)
        return p

    p = command("exec", "run one envelope; print the response or the error as JSON")
    p.add_argument("envelope", nargs="?", help="the envelope as JSON, or - for stdin")
    p.add_argument("--file", type=Path, help="read the envelope from this file")

    p = command(
        "run",
        "run JSON Lines envelopes; one JSON line out per envelope, in completion order, "
        "each with its input line number",
    )
    p.add_argument("--file", type=Path, help="read envelopes from this file (default: stdin)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="envelopes in flight at once (default: max_concurrent_operations)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="progress line on stderr this often, and always at the end (0: only at the end)",
    )

    p = command("describe", "print describe() as JSON")
    p.add_argument(
        "--no-connect", action="store_true", help="do not initialize (no request to Consul)"
    )

    command("health", "print health_check() as JSON; exit 1 when unhealthy")

    p = command("schema", "print the JSON Schema of envelopes, results and errors")
    p.add_argument("--kind", choices=KINDS, default="all")

    command(
        "demo",
        "register, kv_put, kv_get, a refused key, deregister; against the configured Consul, "
        "or a throwaway local agent when none is configured",
    )
    return parser


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # Neither the content nor the path: a token pasted in place of the path stays unseen.
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read the --token-file: {reason}") from None


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``initialize()`` mapping from the command line (only what was given)."""
    config: dict[str, Any] = {}
    for option, key in (
        ("host", "host"),
        ("port", "port"),
        ("scheme", "scheme"),
        ("timeout", "timeout_seconds"),
        ("datacenter", "datacenter"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            config[key] = value
    if args.token_file is not None:
        config["token"] = _read_token(args.token_file)
    return config


# -- exec ------------------------------------------------------------------------------------


def _read_envelope(args: argparse.Namespace) -> str:
    if args.file is not None and args.envelope is not None:
        raise UsageError("give the envelope as an argument or with --file, not both")
    if args.file is not None:
        try:
            return str(args.file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {args.file}: {exc}") from None
    if args.envelope is None:
        raise UsageError("exec needs an envelope: JSON argument, - for stdin, or --file")
    if args.envelope == "-":
        return sys.stdin.read()
    return str(args.envelope)


async def cmd_exec(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    envelope, problem = parse_json(_read_envelope(args))
    if problem is not None:
        emit(error_line(problem))
        return EXIT_USAGE
    handler = await start_handler(config)
    if handler is None:
        return EXIT_NOT_STARTED
    try:
        response = await handler.execute(envelope)
    except InfraError as error:
        emit(error_line(error, envelope))
        return EXIT_FAILED
    finally:
        await stop_handler(handler)
    emit(response.model_dump(mode="json"))
    return EXIT_OK


# -- describe, health, schema ----------------------------------------------------------------


async def cmd_describe(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    if args.no_connect:
        try:
            settings = load_settings(None, config)
        except InfraError as error:
            emit(error_line(error))
            return EXIT_NOT_STARTED
        emit(HandlerConsul(settings=settings).describe(), pretty=True)
        return EXIT_OK
    handler = await start_handler(config)
    if handler is None:
        return EXIT_NOT_STARTED
    try:
        emit(handler.describe(), pretty=True)
    finally:
        await stop_handler(handler)
    return EXIT_OK


async def cmd_health(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    handler = HandlerConsul()
    started = time.monotonic()
    try:
        await handler.initialize(config)
    except InfraError as error:
        emit(
            {
                "healthy": False,
                "initialized": False,
                "latency_ms": round((time.monotonic() - started) * 1000.0, 3),
                "leader": None,
                "breaker": None,
                "error": error.message,
                "error_type": type(error).__name__,
            },
            pretty=True,
        )
        return EXIT_FAILED
    try:
        report = await handler.health_check()
    finally:
        await stop_handler(handler)
    emit(report, pretty=True)
    return EXIT_OK if report.get("healthy") else EXIT_FAILED


# -- main ------------------------------------------------------------------------------------

_ASYNC_COMMANDS = {
    "exec": cmd_exec,
    "run": cmd_run,
    "describe": cmd_describe,
    "health": cmd_health,
}


def _on_sigterm(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # So `finally` blocks run (the demo agent is stopped) when we are terminated.
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "schema":
            emit(schema(args.kind), pretty=True)
            return EXIT_OK
        config = overrides(args)
        if args.command == "demo":
            return cmd_demo(args, config)
        return anyio.run(_ASYNC_COMMANDS[args.command], args, config)
    except UsageError as exc:
        print(f"handler-consul: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("handler-consul: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
