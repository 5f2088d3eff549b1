"""What tests watch while a handler works: event-loop lag, live worker threads, breaker
transitions and log records; and how they wait for something without sleeping blindly.

Every loop here is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

WORKER_PREFIX = "handler-consul"

# A blocking call on the loop shows as one wake-up late by the whole call (a second and more
# in the tests that use these); the bounds leave room for a loaded two-CPU CI machine.
LAG_P99_MS = 50.0
LAG_MAX_MS = 250.0


# -- waiting ------------------------------------------------------------------------------------


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking harness call (kill, restart, toxiproxy API) off the event loop."""
    return await asyncio.to_thread(fn, *args)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.01
) -> bool:
    """Poll ``predicate`` on the loop until it holds or ``timeout`` passes; return its value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() >= end:
            return predicate()
        await asyncio.sleep(interval)
    return True


# -- event-loop lag -----------------------------------------------------------------------------


class LagTicker:
    """A task that wakes every ``interval`` seconds and records how late each wake-up was.

    A blocking call on the loop shows up as one wake-up late by the whole call. ``on_tick``
    (optional) runs on every tick, on the loop: used to sample ``handler.describe()``.
    """

    def __init__(self, interval: float = 0.005, on_tick: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.on_tick = on_tick
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + self.interval
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.lags.append(max(0.0, now - expected))
            if self.on_tick is not None:
                self.on_tick()
            expected = now + self.interval

    def start(self) -> LagTicker:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lag-ticker")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> LagTicker:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ticks(self) -> int:
        return len(self.lags)

    @property
    def max_ms(self) -> float:
        return max(self.lags, default=0.0) * 1000.0

    @property
    def max_gap_seconds(self) -> float:
        """The longest time between two wake-ups (the interval plus the lag)."""
        return max((lag + self.interval for lag in self.lags), default=0.0)

    @property
    def p99_ms(self) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000.0

    def describe(self) -> str:
        return f"{self.ticks} ticks, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"


def assert_loop_kept_ticking(ticker: LagTicker, *, min_ticks: int) -> None:
    """At least ``min_ticks`` wake-ups, p99 lag under LAG_P99_MS and the worst under LAG_MAX_MS."""
    assert ticker.ticks >= min_ticks, ticker.describe()
    assert ticker.p99_ms < LAG_P99_MS, ticker.describe()
    assert ticker.max_ms < LAG_MAX_MS, ticker.describe()


# -- worker threads -----------------------------------------------------------------------------


def worker_threads(exclude: Collection[threading.Thread] = ()) -> list[threading.Thread]:
    """Live handler worker threads (named ``handler-consul-N``) not in ``exclude``.

    Threads are compared as objects, not by ident: an ident is reused once a thread exits.
    """
    excluded = {id(t) for t in exclude}
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(WORKER_PREFIX) and t.is_alive() and id(t) not in excluded
    ]


class ThreadSampler:
    """A plain thread that counts live worker threads every ``interval`` seconds.

    It runs off the event loop, so it keeps sampling even if the loop were blocked. Threads
    alive when it was created (other tests' abandoned workers) are not counted.
    """

    def __init__(self, interval: float = 0.005, max_seconds: float = 240.0) -> None:
        self.interval = interval
        self.max_seconds = max_seconds
        self.baseline = tuple(worker_threads())
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-thread-sampler", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.peak = max(self.peak, len(worker_threads(self.baseline)))
            self.samples += 1
            self._stop.wait(self.interval)

    def now(self) -> int:
        return len(worker_threads(self.baseline))

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- breaker transitions ------------------------------------------------------------------------


class TransitionRecorder(logging.Handler):
    """Collects the handler's ``circuit breaker X: a -> b`` log records, in order."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.events: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        old = getattr(record, "breaker_from", None)
        new = getattr(record, "breaker_to", None)
        if old is not None and new is not None:
            self.events.append((time.monotonic(), str(old), str(new)))

    @property
    def path(self) -> list[str]:
        """Target states in order, e.g. ``["open", "half_open", "closed"]``."""
        return [new for _, _, new in self.events]

    @contextlib.contextmanager
    def installed(self) -> Iterator[TransitionRecorder]:
        logger = logging.getLogger("handler_consul.handler")
        old_level = logger.level
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(old_level)


# -- log records ----------------------------------------------------------------------------------


class LogCollector:
    """Collects every record that reaches the root logger while installed."""

    def __init__(self) -> None:
        collector = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                collector.records.append(record)

        self.records: list[logging.LogRecord] = []
        self.handler = _Handler(logging.DEBUG)

    def named(self, prefix: str) -> list[Any]:
        return [r for r in self.records if r.name == prefix or r.name.startswith(prefix + ".")]

    def for_correlation(self, correlation_id: Any) -> list[Any]:
        cid = str(correlation_id)
        return [r for r in self.records if getattr(r, "correlation_id", None) == cid]


def install_log_collector(level: int) -> tuple[LogCollector, Callable[[], None]]:
    """Install a collector on the root logger (at DEBUG) with ``handler_consul`` at ``level``.

    Returns the collector and a function that undoes everything.
    """
    collector = LogCollector()
    root = logging.getLogger()
    ours = logging.getLogger("handler_consul")
    saved = (root.level, ours.level)
    root.addHandler(collector.handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(level)

    def undo() -> None:
        root.removeHandler(collector.handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])

    return collector, undo
