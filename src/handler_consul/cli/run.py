"""``handler-consul run``: JSON Lines in, one JSON line out per envelope, bounded concurrency."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import anyio
from anyio.abc import ObjectReceiveStream

from handler_consul._errors import InfraError
from handler_consul._handler import HandlerConsul
from handler_consul.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    UsageError,
    emit,
    error_line,
    input_error,
    parse_json,
    start_handler,
    stop_handler,
)

# A line longer than this is answered with an error line and skipped, not buffered forever.
MAX_LINE_BYTES = 4 * 1024 * 1024
_READ_CHUNK = 64 * 1024

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
            emit(data)


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
        handler = await start_handler(config)
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
            await stop_handler(handler)
            print(stats.line(), file=sys.stderr, flush=True)
    finally:
        if args.file is not None:
            source.close()
    return EXIT_FAILED if stats.failed else EXIT_OK
