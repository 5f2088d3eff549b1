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
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn
from uuid import UUID

import anyio
from anyio.abc import ObjectReceiveStream

from handler_consul._version import __version__
from handler_consul.client import build_client
from handler_consul.devagent import DevAgent, DevAgentError
from handler_consul.errors import ErrorContext, InfraError, InfraValidationError
from handler_consul.handler import HandlerConsul
from handler_consul.operations import OPERATIONS
from handler_consul.schema import KINDS, schema
from handler_consul.settings import load_settings

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_STARTED = 3
EXIT_INTERRUPTED = 130
# A line longer than this is answered with an error line and skipped, not buffered forever.
MAX_LINE_BYTES = 4 * 1024 * 1024
_READ_CHUNK = 64 * 1024
_CONFIGURED_ENV = ("CONSUL_HOST", "CONSUL_PORT", "CONSUL_HTTP_ADDR")

logger = logging.getLogger("handler_consul.cli")


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 2 with the message on stderr."""


# -- logging ---------------------------------------------------------------------------------

_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_FIRST_FIELDS = ("correlation_id", "operation", "attempt", "duration_ms", "outcome")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (its ``extra=``), the envelope ones first."""
    extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    first = {k: extra.pop(k) for k in _FIRST_FIELDS if k in extra}
    return {**first, **extra}


class FieldsFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` with the record's structured fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        return text + " " + " ".join(f"{k}={v}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Send the ``handler_consul`` logger tree to stderr; leave the root logger alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else FieldsFormatter())
    root = logging.getLogger("handler_consul")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


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


# -- output ----------------------------------------------------------------------------------


def _emit(data: Any, *, pretty: bool = False) -> None:
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


def _input_error(message: str) -> InfraValidationError:
    return InfraValidationError(
        message, context=ErrorContext(category="validation", field="envelope")
    )


def _parse_json(text: str | bytes) -> tuple[Any, InfraValidationError | None]:
    try:
        return json.loads(text), None
    except UnicodeDecodeError:
        return None, _input_error("input is not UTF-8 text")
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the text itself may hold a secret.
        return None, _input_error(f"input is not JSON: {exc.msg} at column {exc.colno}")


# -- the handler -----------------------------------------------------------------------------


async def _start(config: Mapping[str, Any]) -> HandlerConsul | None:
    """An initialized handler, or None after printing why it could not start."""
    handler = HandlerConsul()
    try:
        await handler.initialize(config)
    except InfraError as error:
        _emit(error_line(error))
        return None
    return handler


async def _stop(handler: HandlerConsul) -> None:
    with anyio.CancelScope(shield=True):
        await handler.shutdown()


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
    envelope, problem = _parse_json(_read_envelope(args))
    if problem is not None:
        _emit(error_line(problem))
        return EXIT_USAGE
    handler = await _start(config)
    if handler is None:
        return EXIT_NOT_STARTED
    try:
        response = await handler.execute(envelope)
    except InfraError as error:
        _emit(error_line(error, envelope))
        return EXIT_FAILED
    finally:
        await _stop(handler)
    _emit(response.model_dump(mode="json"))
    return EXIT_OK


# -- run -------------------------------------------------------------------------------------


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    processed: int = 0
    ok: int = 0
    failed: int = 0
    in_flight: int = 0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"handler-consul run: {self.processed} processed, {self.ok} ok, "
            f"{self.failed} failed, {self.in_flight} in flight, "
            f"{self.processed / elapsed:.1f}/s, {elapsed:.1f}s"
        )


async def _lines(stream: IO[bytes]) -> AsyncIterator[tuple[int, bytes | None]]:
    """(line number, bytes) per non-blank line; None for a line over MAX_LINE_BYTES.

    Reads with ``read1`` in a worker thread so a pipe that trickles is answered as it
    arrives rather than when a whole buffer fills.
    """
    read1: Callable[[int], bytes] = getattr(stream, "read1", stream.read)
    buffer = b""
    lineno = 0
    oversized = False
    while True:
        chunk = await anyio.to_thread.run_sync(read1, _READ_CHUNK)
        eof = not chunk
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            text, buffer = buffer[:newline], buffer[newline + 1 :]
            lineno += 1
            if oversized:
                oversized = False
                yield lineno, None
            elif text.strip():
                yield lineno, text
        if len(buffer) > MAX_LINE_BYTES:
            oversized, buffer = True, b""
        if eof:
            if oversized or buffer.strip():
                lineno += 1
                yield lineno, None if oversized else buffer
            return


async def _run_one(handler: HandlerConsul, lineno: int, text: bytes | None) -> dict[str, Any]:
    if text is None:
        error = _input_error(f"line is longer than {MAX_LINE_BYTES} bytes")
        return error_line(error, None, lineno)
    envelope, problem = _parse_json(text)
    if problem is not None:
        return error_line(problem, None, lineno)
    try:
        response = await handler.execute(envelope)
    except InfraError as error:
        return error_line(error, envelope, lineno)
    data = response.model_dump(mode="json")
    data["line"] = lineno
    return data


async def _worker(
    handler: HandlerConsul,
    receive: ObjectReceiveStream[tuple[int, bytes | None]],
    stats: RunStats,
) -> None:
    async with receive:
        async for lineno, text in receive:
            stats.in_flight += 1
            try:
                data = await _run_one(handler, lineno, text)
            finally:
                stats.in_flight -= 1
            stats.processed += 1
            if data.get("status") == "success":
                stats.ok += 1
            else:
                stats.failed += 1
            _emit(data)


async def _progress(stats: RunStats, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        print(stats.line(), file=sys.stderr, flush=True)


async def run_stream(
    handler: HandlerConsul, source: IO[bytes], concurrency: int, stats: RunStats
) -> None:
    """N workers take lines from a stream of capacity N; reading waits when all are busy."""
    send, receive = anyio.create_memory_object_stream[tuple[int, bytes | None]](concurrency)
    async with anyio.create_task_group() as tg:
        async with receive:
            for _ in range(concurrency):
                tg.start_soon(_worker, handler, receive.clone(), stats)
        async with send:
            async for item in _lines(source):
                await send.send(item)


async def cmd_run(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    try:
        source: IO[bytes] = args.file.open("rb") if args.file is not None else sys.stdin.buffer
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    stats = RunStats()
    try:
        handler = await _start(config)
        if handler is None:
            return EXIT_NOT_STARTED
        concurrency = args.concurrency or handler.describe()["max_concurrent_operations"]
        try:
            async with anyio.create_task_group() as outer:
                if args.progress_interval > 0:
                    outer.start_soon(_progress, stats, args.progress_interval)
                await run_stream(handler, source, int(concurrency), stats)
                outer.cancel_scope.cancel()
        finally:
            await _stop(handler)
            print(stats.line(), file=sys.stderr, flush=True)
    finally:
        if args.file is not None:
            source.close()
    return EXIT_FAILED if stats.failed else EXIT_OK


# -- describe, health, schema ----------------------------------------------------------------


async def cmd_describe(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    if args.no_connect:
        try:
            settings = load_settings(None, config)
        except InfraError as error:
            _emit(error_line(error))
            return EXIT_NOT_STARTED
        _emit(HandlerConsul(settings=settings).describe(), pretty=True)
        return EXIT_OK
    handler = await _start(config)
    if handler is None:
        return EXIT_NOT_STARTED
    try:
        _emit(handler.describe(), pretty=True)
    finally:
        await _stop(handler)
    return EXIT_OK


async def cmd_health(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    handler = HandlerConsul()
    started = time.monotonic()
    try:
        await handler.initialize(config)
    except InfraError as error:
        _emit(
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
        await _stop(handler)
    _emit(report, pretty=True)
    return EXIT_OK if report.get("healthy") else EXIT_FAILED


# -- demo ------------------------------------------------------------------------------------


def consul_configured(args: argparse.Namespace) -> bool:
    """True when the user named a Consul: --host/--port or CONSUL_HOST/PORT/HTTP_ADDR."""
    if getattr(args, "host", None) is not None or getattr(args, "port", None) is not None:
        return True
    return any(os.environ.get(name, "").strip() for name in _CONFIGURED_ENV)


def _say(text: str) -> None:
    print(text, flush=True)


async def _demo_step(
    handler: HandlerConsul, number: int, envelope: dict[str, Any]
) -> tuple[dict[str, Any] | None, InfraError | None, str]:
    started = time.perf_counter()
    result: dict[str, Any] | None = None
    error: InfraError | None = None
    try:
        result = (await handler.execute(envelope)).result
    except InfraError as exc:
        error = exc
    ms = (time.perf_counter() - started) * 1000.0
    status = "ok" if error is None else "refused" if error.context.attempts == 0 else "failed"
    head = f"  {number}. {envelope['operation']:<18} {status:<8} {ms:8.1f} ms  "
    return result, error, head


async def run_demo(config: Mapping[str, Any], where: str) -> int:
    """register -> kv_put -> kv_get -> a refused traversal key -> deregister, then clean up."""
    handler = await _start(config)
    if handler is None:
        return EXIT_NOT_STARTED
    suffix = uuid.uuid4().hex[:8]
    service_id = f"handler-consul-demo-{suffix}"
    key = f"handler-consul-demo/{suffix}/greeting"
    traversal = f"../agent/service/deregister/{service_id}"
    value = "hello from handler-consul"
    good = True
    registered = False
    _say(f"handler-consul demo against {where}")
    try:
        result, error, head = await _demo_step(
            handler,
            1,
            {
                "operation": "consul.register",
                "payload": {
                    "service_id": service_id,
                    "name": "handler-consul-demo",
                    "address": "127.0.0.1",
                    "port": 8080,
                    "tags": ["demo"],
                    "check": {"ttl": "30s", "deregister_critical_service_after": "1m"},
                },
            },
        )
        registered = error is None
        good &= error is None
        _say(head + (f"service {service_id} registered" if error is None else _brief(error)))

        result, error, head = await _demo_step(
            handler, 2, {"operation": "consul.kv_put", "payload": {"key": key, "value": value}}
        )
        good &= error is None and result is not None and result["applied"] is True
        _say(head + (f"{key} applied={result['applied']}" if result else _brief(error)))

        result, error, head = await _demo_step(
            handler, 3, {"operation": "consul.kv_get", "payload": {"key": key}}
        )
        good &= result is not None and result.get("value") == value
        _say(
            head
            + (
                f"{key} = {result['value']!r} (modify_index {result['modify_index']})"
                if result
                else _brief(error)
            )
        )

        result, error, head = await _demo_step(
            handler, 4, {"operation": "consul.kv_put", "payload": {"key": traversal, "value": "x"}}
        )
        refused = isinstance(error, InfraValidationError)
        good &= refused
        _say(
            head
            + (
                f"key {traversal!r}: {_brief(error)}; nothing sent"
                if refused and error is not None
                else "the traversal key was NOT refused"
            )
        )

        result, error, head = await _demo_step(
            handler, 5, {"operation": "consul.deregister", "payload": {"service_id": service_id}}
        )
        good &= result is not None and result["deregistered"] is True
        registered = registered and result is None
        _say(
            head
            + (
                f"service {service_id} deregistered={result['deregistered']}"
                if result
                else _brief(error)
            )
        )
    finally:
        with anyio.CancelScope(shield=True):
            await _demo_cleanup(handler, config, key, service_id if registered else None)
            await _stop(handler)
    _say(f"handler-consul demo: {'all steps as expected' if good else 'SOME STEPS FAILED'}")
    return EXIT_OK if good else EXIT_FAILED


def _brief(error: InfraError | None) -> str:
    if error is None:
        return "no result"
    if isinstance(error, InfraValidationError) and error.errors:
        first = error.errors[0]
        return f"{type(error).__name__} ({first['field']}): {first['message']}"
    return f"{type(error).__name__}: {error.message}"


async def _demo_cleanup(
    handler: HandlerConsul, config: Mapping[str, Any], key: str, service_id: str | None
) -> None:
    """Remove the demo key (there is no kv_delete operation yet) and a leftover service."""
    if service_id is not None:
        try:
            await handler.execute(
                {"operation": "consul.deregister", "payload": {"service_id": service_id}}
            )
        except InfraError as error:
            _say(f"  cleanup: could not deregister {service_id}: {_brief(error)}")
    client = build_client(load_settings(None, config))
    try:
        await anyio.to_thread.run_sync(client.kv.delete, key)
    except Exception as exc:
        _say(f"  cleanup: could not delete {key}: {type(exc).__name__}")
    finally:
        client.http.close()


def cmd_demo(args: argparse.Namespace, config: dict[str, Any]) -> int:
    """Outside the event loop: the throwaway agent is started and always stopped here."""
    if consul_configured(args):
        settings_host = config.get("host") or os.environ.get("CONSUL_HOST") or "configured Consul"
        return anyio.run(run_demo, config, f"{settings_host} (configured)")
    try:
        agent = DevAgent()
    except DevAgentError as exc:
        print(f"handler-consul demo: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    _say(f"handler-consul demo: no Consul configured; starting {agent.version()} locally")
    try:
        agent.start()
        # Not the user's token, datacenter or TLS: this agent is ours and plain HTTP.
        local = {
            **config,
            "host": agent.host,
            "port": agent.port,
            "scheme": "http",
            "token": None,
            "datacenter": None,
        }
        return anyio.run(run_demo, local, f"{agent.url} (throwaway agent, pid {agent.pid})")
    except DevAgentError as exc:
        print(f"handler-consul demo: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    finally:
        agent.stop()
        _say("handler-consul demo: stopped the throwaway agent")


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
            _emit(schema(args.kind), pretty=True)
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


if __name__ == "__main__":
    sys.exit(main())
