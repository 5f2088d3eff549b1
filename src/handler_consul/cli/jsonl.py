"""JSON Lines input for ``run`` and ``validate``: numbered lines, bounded in length, read
without holding up the event loop or the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator

# A line longer than this is answered with an error line and skipped, not buffered forever.
MAX_LINE_BYTES = 4 * 1024 * 1024
READ_CHUNK = 64 * 1024

Line = tuple[int, bytes | None]


class LineSplitter:
    """Chunks in, ``(line number, bytes)`` out for each non-blank line; ``None`` in place of
    the bytes for a line over ``max_line`` (it is dropped as it arrives, never buffered)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buffer = b""
        self._lineno = 0
        self._oversized = False

    def _line(self, text: bytes) -> Line | None:
        self._lineno += 1
        if self._oversized or len(text) > self._max:
            self._oversized = False
            return self._lineno, None
        return (self._lineno, text) if text.strip() else None

    def feed(self, chunk: bytes) -> list[Line]:
        *complete, rest = (self._buffer + chunk).split(b"\n")
        lines = [line for text in complete if (line := self._line(text)) is not None]
        if len(rest) > self._max:
            self._oversized, rest = True, b""
        self._buffer = rest
        return lines

    def finish(self) -> list[Line]:
        """The last line when the input does not end with a newline."""
        if self._oversized or self._buffer.strip():
            line = self._line(self._buffer)
            self._buffer = b""
            return [line] if line is not None else []
        return []


def lines_of(fd: int) -> Iterator[Line]:
    """The lines of a file descriptor, read in the calling thread (``validate``)."""
    splitter = LineSplitter()
    while chunk := os.read(fd, READ_CHUNK):
        yield from splitter.feed(chunk)
    yield from splitter.finish()


def count_lines(fd: int) -> int | None:
    """How many lines ``run`` will answer, when ``fd`` is a regular file (a known total for
    the progress bar); None for a pipe or a terminal. Reads with pread, so the position the
    run starts from is left where it was."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None
    splitter = LineSplitter()
    count = 0
    while chunk := os.pread(fd, 1024 * 1024, offset):
        offset += len(chunk)
        count += len(splitter.feed(chunk))
    return count + len(splitter.finish())


def _resolve(future: asyncio.Future[bytes], chunk: bytes | OSError) -> None:
    if future.done():  # the run was cancelled while the read was pending
        return
    if isinstance(chunk, OSError):
        future.set_exception(chunk)
    else:
        future.set_result(chunk)


async def _read(fd: int) -> bytes:
    """One ``os.read`` in a daemon thread of its own.

    Not ``anyio.to_thread``: its worker threads are joined at exit, so a read blocked on a
    terminal or a pipe nobody writes to would keep the process alive after a Ctrl-C or a
    closed stdout. And ``os.read`` rather than ``sys.stdin.buffer``: a daemon thread still
    holding the buffer's lock at exit makes the interpreter abort ("could not acquire lock").
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    def work() -> None:
        result: bytes | OSError
        try:
            result = os.read(fd, READ_CHUNK)
        except OSError as exc:
            result = exc
        # RuntimeError: the event loop is gone, so nobody waits for this chunk any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future, result)

    threading.Thread(target=work, name="handler-consul input", daemon=True).start()
    return await future


async def read_lines(fd: int) -> AsyncIterator[Line]:
    """The lines of ``fd`` as they arrive: a pipe that trickles is answered line by line."""
    splitter = LineSplitter()
    while chunk := await _read(fd):
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.finish():
        yield line
