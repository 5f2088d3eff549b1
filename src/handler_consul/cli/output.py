"""Exit codes, where output goes and in which form, and a stdout the reader closed early.

Nothing here imports the handler: ``--help`` and argument errors must stay fast.

A reader that stops early (``handler-consul run ... | head -1``) closes the pipe; the next
write fails with EPIPE (Python ignores SIGPIPE, so it is an exception, not a signal). The CLI
then treats stdout as gone: it points file descriptor 1 at /dev/null, so that neither its own
later writes nor the interpreter's flush at exit fail again (which would print "Exception
ignored ... BrokenPipeError"), stops the command through its normal cleanup (the handler is
shut down, a demo agent stopped) and exits 141 without a traceback. 141 is what the shell
reports for ``cat`` or ``seq`` ended by SIGPIPE (128 + 13), so ``set -o pipefail`` treats
this command like the standard tools.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_STARTED = 3
EXIT_INTERRUPTED = 130
EXIT_STDOUT_CLOSED = 141

EXIT_STATUS_HELP = """\
exit status:
  0    ok
  1    an operation failed, a key is missing, a CAS write was not applied, or unhealthy
  2    usage error or invalid input (nothing was sent)
  3    the handler could not start (bad settings, Consul unreachable)
  130  interrupted
  141  stdout was closed early (`... | head`), as for a tool ended by SIGPIPE"""


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 2 with the message on stderr."""


class StdoutClosed(Exception):
    """The reader of stdout went away; the command stops and exits 141."""


_closed = False


def stdout_closed() -> bool:
    return _closed


def _close_stdout() -> StdoutClosed:
    """Point fd 1 at /dev/null (see the module docstring) and say so."""
    global _closed
    if not _closed:
        _closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):
            pass  # stdout has no descriptor (replaced by a test): nothing left to protect
    return StdoutClosed()


def _write_all(data: bytes) -> None:
    buffer = sys.stdout.buffer
    view = memoryview(data)
    while view:
        written = buffer.write(view)
        if written is None:  # a non-blocking stdout took it all into its buffer
            break
        # A large write comes back short, without an error, when the reader leaves mid-way
        # (the kernel returns the partial count); the next write raises BrokenPipeError.
        view = view[written:]
    buffer.flush()


def write_bytes(data: bytes) -> None:
    """Raw bytes (a KV value that is not UTF-8 is printed as stored), flushed."""
    if _closed:
        return
    try:
        sys.stdout.flush()  # whatever text went before, first
        _write_all(data)
    except BrokenPipeError:
        raise _close_stdout() from None


def write_text(text: str) -> None:
    """Write and flush, so each record reaches a pipe as it is produced."""
    if _closed:
        return
    stream = sys.stdout
    if getattr(stream, "buffer", None) is None:  # a text-only stand-in (tests)
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            raise _close_stdout() from None
        return
    # Through the bytes path: TextIOWrapper ignores a short write of its buffer, so a reader
    # leaving during a large document would go unnoticed (exit 0 instead of 141).
    write_bytes(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))


def flush_stdout() -> None:
    """The last flush, done here rather than by the interpreter at exit."""
    if _closed:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise _close_stdout() from None
    except (OSError, ValueError):
        pass


def emit(data: Any, *, pretty: bool = False) -> None:
    """One JSON document: compact on one line (JSON Lines), or indented when ``pretty``."""
    text = json.dumps(data, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
    write_text(text + "\n")


def say(text: str) -> None:
    """A line of human-readable output."""
    write_text(text + "\n")


def warn(text: str) -> None:
    """A line on stderr (messages, progress); a closed stderr is not worth failing for."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def wants_json(fmt: str | None) -> bool:
    """``--format json``, or no ``--format`` and stdout is not a terminal (a pipe, a file)."""
    if fmt is not None:
        return fmt == "json"
    return not is_tty(sys.stdout)
