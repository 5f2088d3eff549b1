"""``run``'s progress on stderr: one bar redrawn in place on a terminal, a periodic line
elsewhere (a log file, CI), and a summary line at the end either way."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import IO

BAR_REFRESH_SECONDS = 0.1
_CLEAR_LINE = "\r\x1b[K"


def _duration(seconds: float) -> str:
    seconds = max(int(seconds + 0.5), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Progress:
    """Counts and their rendering. ``total`` is known when the input is a regular file."""

    stream: IO[str]
    tty: bool
    total: int | None = None
    started: float = field(default_factory=time.monotonic)
    processed: int = 0
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    _drawn: bool = False

    def _elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def _eta(self, rate: float) -> str | None:
        if self.total is None or rate <= 0 or self.processed >= self.total:
            return None
        return _duration((self.total - self.processed) / rate)

    def line(self) -> str:
        """The line printed off a terminal; the counts first, a stable prefix for grep."""
        elapsed = self._elapsed()
        rate = self.processed / elapsed
        text = (
            f"handler-consul run: {self.processed} processed, {self.ok} ok, "
            f"{self.failed} failed, {self.in_flight} in flight, {rate:.1f}/s, {elapsed:.1f}s"
        )
        if self.total:
            percent = min(100.0, 100.0 * self.processed / self.total)
            text += f", {percent:.0f}% of {self.total}"
            eta = self._eta(rate)
            if eta is not None:
                text += f", ETA {eta}"
        return text

    def bar(self, width: int) -> str:
        """``[=====>    ]  45% 450/1000 312.4/s ETA 0:02 ok 440 failed 10``, fit to width."""
        rate = self.processed / self._elapsed()
        counts = f"ok {self.ok} failed {self.failed}"
        if not self.total:
            return f"{self.processed} processed {rate:.1f}/s {counts}"[: width - 1]
        fraction = min(1.0, self.processed / self.total)
        eta = self._eta(rate)
        tail = (
            f" {fraction * 100:3.0f}% {self.processed}/{self.total} {rate:.1f}/s"
            f"{f' ETA {eta}' if eta else ''} {counts}"
        )
        room = width - 1 - len(tail) - 2
        if room < 10:
            return tail.strip()[: width - 1]
        filled = int(room * fraction)
        arrow = ">" if 0 < filled < room else ""
        inside = ("=" * filled + arrow).ljust(room)[:room]
        return f"[{inside}]{tail}"

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or 80  # a pseudo-terminal may report 0 columns

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone: progress is not worth failing the run for

    def tick(self) -> None:
        """Periodically: redraw the bar in place, or print one progress line."""
        if self.tty:
            self._write(_CLEAR_LINE + self.bar(self._width()))
            self._drawn = True
        else:
            self._write(self.line() + "\n")

    def clear(self) -> None:
        """Erase the bar before something else writes to the same terminal."""
        if self._drawn:
            self._write(_CLEAR_LINE)
            self._drawn = False

    def finish(self) -> None:
        """The summary line, always; on a terminal it replaces the bar."""
        self.clear()
        self._write(self.line() + "\n")
