"""``handler-consul run``: JSON Lines in, one line out per envelope, bounded concurrency."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio import CancelScope
from anyio.abc import ObjectReceiveStream

from handler_consul._errors import InfraError
from handler_consul._handler import HandlerConsul
from handler_consul.cli.common import (
    error_line,
    input_error,
    parse_json,
    report_error,
    start_handler,
    stop_handler,
)
from handler_consul.cli.jsonl import MAX_LINE_BYTES, Line, count_lines, read_lines
from handler_consul.cli.output import (
    EXIT_FAILED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    EXIT_STDOUT_CLOSED,
    StdoutClosed,
    UsageError,
    emit,
    is_tty,
    say,
    stdout_closed,
    wants_json,
)
from handler_consul.cli.progress import BAR_REFRESH_SECONDS, Progress

# -- one envelope ----------------------------------------------------------------------------


async def _run_one(handler: HandlerConsul, lineno: int, text: bytes | None) -> dict[str, Any]:
    if text is None:
        error = input_error(f"line is longer than {MAX_LINE_BYTES} bytes")
        return error_line(error, None, lineno)
    envelope, problem = parse_json(text)
    if problem is not None:
        return error_line(problem, None, lineno)
    try:
        response = await handler.execute(envelope)
    except InfraError as error:
        return error_line(error, envelope, lineno)
    data = response.model_dump(mode="json")
    data["line"] = lineno
    return data


def text_line(data: Mapping[str, Any]) -> str:
    """One human line per envelope, for a terminal."""
    if data.get("status") == "success":
        result = json.dumps(data["result"], separators=(",", ":"))
        return f"line {data['line']}: ok {data['operation']} {result}"
    field = data.get("context", {}).get("field")
    where = f" ({field})" if field else ""
    return f"line {data['line']}: error {data['error']}{where}: {data['message']}"


# -- the stream ------------------------------------------------------------------------------


async def _worker(
    handler: HandlerConsul,
    receive: ObjectReceiveStream[Line],
    progress: Progress,
    write: Callable[[dict[str, Any]], None],
    stop: CancelScope,
) -> None:
    async with receive:
        async for lineno, text in receive:
            progress.in_flight += 1
            try:
                data = await _run_one(handler, lineno, text)
            finally:
                progress.in_flight -= 1
            progress.processed += 1
            if data.get("status") == "success":
                progress.ok += 1
            else:
                progress.failed += 1
            try:
                write(data)
            except StdoutClosed:
                # Nobody reads the answers any more: stop taking envelopes. A task group
                # that raised would end in an ExceptionGroup traceback instead.
                stop.cancel()
                return


async def run_stream(
    handler: HandlerConsul,
    fd: int,
    concurrency: int,
    progress: Progress,
    write: Callable[[dict[str, Any]], None],
) -> None:
    """N workers take lines from a stream of capacity N; reading waits when all are busy."""
    send, receive = anyio.create_memory_object_stream[Line](concurrency)
    async with anyio.create_task_group() as tg:
        async with receive:
            for _ in range(concurrency):
                tg.start_soon(_worker, handler, receive.clone(), progress, write, tg.cancel_scope)
        async with send:
            async for item in read_lines(fd):
                await send.send(item)


async def _show_progress(progress: Progress, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        progress.tick()


def _writer(progress: Progress, as_json: bool) -> Callable[[dict[str, Any]], None]:
    shared_terminal = progress.tty and is_tty(sys.stdout)

    def write(data: dict[str, Any]) -> None:
        if shared_terminal:
            progress.clear()  # the bar is redrawn on its next tick, below this line
        if as_json:
            emit(data)
        else:
            say(text_line(data))

    return write


def _open_input(args: argparse.Namespace) -> tuple[int, bool]:
    """The input's file descriptor, and whether it is ours to close."""
    if args.file is None:
        return sys.stdin.fileno(), False
    try:
        return os.open(args.file, os.O_RDONLY), True
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None


async def cmd_run(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    as_json = wants_json(args.format)
    fd, owned = _open_input(args)
    try:
        tty = is_tty(sys.stderr)
        # The total (for percent and ETA) is known when the input is a regular file.
        progress = Progress(sys.stderr, tty=tty, total=count_lines(fd))
        interval: float = args.progress_interval
        if tty and interval > 0:
            interval = BAR_REFRESH_SECONDS  # a bar in place: redraws are cheap and quiet
        try:
            handler = await start_handler(config)
        except InfraError as error:
            report_error(error, as_json=as_json)
            return EXIT_NOT_STARTED
        concurrency = int(args.concurrency or handler.describe()["max_concurrent_operations"])
        try:
            async with anyio.create_task_group() as outer:
                if interval > 0:
                    outer.start_soon(_show_progress, progress, interval)
                await run_stream(handler, fd, concurrency, progress, _writer(progress, as_json))
                outer.cancel_scope.cancel()
        finally:
            await stop_handler(handler)
            progress.finish()
    finally:
        if owned:
            os.close(fd)
    if stdout_closed():
        return EXIT_STDOUT_CLOSED
    return EXIT_FAILED if progress.failed else EXIT_OK
