"""Helpers for the resilience and fault tests: a lag ticker, a thread sampler, a load
generator, a breaker-transition recorder and the one-line fault summary.

Nothing here talks to Consul by itself; the tests hand it a real ``HandlerConsul``.
Every loop is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from typing import Any

import pytest

from handler_consul import HandlerConsul, InfraError, InfraUnavailableError

WORKER_PREFIX = "handler-consul"


# -- event-loop lag ---------------------------------------------------------------------------


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
    def p99_ms(self) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000.0

    def describe(self) -> str:
        return f"{self.ticks} ticks, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"


# -- worker threads ---------------------------------------------------------------------------


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


# -- breaker transitions ----------------------------------------------------------------------


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


# -- load --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    index: int
    operation: str
    payload: dict[str, Any]
    deadline: float  # seconds allowed for this envelope
    started: float  # loop time
    elapsed: float = math.nan
    result: dict[str, Any] | None = None
    attempts: int | None = None
    error: BaseException | None = None

    @property
    def kind(self) -> str:
        """``ok``, or the error class (breaker rejections as ``InfraUnavailableError(breaker)``)."""
        if self.error is None:
            return "ok"
        name = type(self.error).__name__
        if is_breaker_rejection(self.error):
            return f"{name}(breaker)"
        return name


def is_breaker_rejection(error: BaseException) -> bool:
    return isinstance(error, InfraUnavailableError) and "circuit breaker" in str(error)


async def run_envelope(handler: HandlerConsul, outcome: Outcome) -> Outcome:
    loop = asyncio.get_running_loop()
    outcome.started = loop.time()
    try:
        response = await handler.execute(
            {
                "operation": outcome.operation,
                "payload": outcome.payload,
                "timeout_seconds": outcome.deadline,
            }
        )
    except InfraError as exc:
        outcome.error = exc
    else:
        outcome.result = dict(response.result)
        outcome.attempts = response.attempts
    finally:
        outcome.elapsed = loop.time() - outcome.started
    return outcome


class Load:
    """A steady stream of envelopes: one every ``1 / rate`` seconds until ``stop()``.

    ``make(i)`` returns ``(operation, payload)`` for envelope ``i``. At most ``max_envelopes``
    are sent. ``finish(hard_bound)`` waits for every envelope with a hard bound and returns
    the ones that did not finish (the test asserts there are none).
    """

    def __init__(
        self,
        handler: HandlerConsul,
        make: Callable[[int], tuple[str, dict[str, Any]]],
        *,
        rate: float,
        deadline: float,
        max_envelopes: int = 5000,
    ) -> None:
        self.handler = handler
        self.make = make
        self.rate = rate
        self.deadline = deadline
        self.max_envelopes = max_envelopes
        self.outcomes: list[Outcome] = []
        self.tasks: list[asyncio.Task[Outcome]] = []
        self._stopped = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        next_at = loop.time()
        for i in range(self.max_envelopes):
            if self._stopped.is_set():
                return
            operation, payload = self.make(i)
            outcome = Outcome(i, operation, payload, self.deadline, loop.time())
            self.outcomes.append(outcome)
            self.tasks.append(loop.create_task(run_envelope(self.handler, outcome)))
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), max(0.0, next_at - loop.time()))

    def start(self) -> Load:
        self._driver = asyncio.get_running_loop().create_task(self._drive(), name="load")
        return self

    async def run_for(self, seconds: float) -> None:
        """Let the load run ``seconds`` more (the test's own clock, not the handler's)."""
        await asyncio.sleep(seconds)

    async def finish(self, hard_bound: float) -> set[asyncio.Task[Outcome]]:
        self._stopped.set()
        if self._driver is not None:
            await asyncio.wait_for(self._driver, 5.0)
        if not self.tasks:
            return set()
        _, pending = await asyncio.wait(self.tasks, timeout=hard_bound)
        for task in pending:
            task.cancel()
        return pending

    # -- reading the results ---------------------------------------------------------------

    def since(self, started_at: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= started_at]

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(o.kind for o in self.outcomes)

    def overruns(self, epsilon: float) -> list[Outcome]:
        """Envelopes that took longer than their deadline plus ``epsilon``."""
        return [o for o in self.outcomes if not o.elapsed <= o.deadline + epsilon]

    def untyped(self) -> list[Outcome]:
        """Envelopes that ended with neither a result nor an InfraError."""
        return [
            o for o in self.outcomes if o.result is None and not isinstance(o.error, InfraError)
        ]


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


async def call_with_bound(awaitable: Awaitable[Any], bound: float) -> Any:
    return await asyncio.wait_for(awaitable, bound)


# -- the summary line --------------------------------------------------------------------------


@dataclasses.dataclass
class FaultSummary:
    name: str
    sent: int
    succeeded: int
    failed: Mapping[str, int]
    acked_writes: int
    acked_lost: int
    peak_threads: int
    thread_bound: int
    max_lag_ms: float
    p99_lag_ms: float
    breaker_path: list[str]
    max_overrun_ms: float

    def line(self) -> str:
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "none"
        path = "->".join(["closed", *self.breaker_path]) if self.breaker_path else "closed"
        return (
            f"FAULT-SUMMARY {self.name}: sent={self.sent} succeeded={self.succeeded} "
            f"failed[{failed}] acked_writes={self.acked_writes} "
            f"acked_writes_lost={self.acked_lost} "
            f"peak_threads={self.peak_threads}/{self.thread_bound} "
            f"max_loop_lag_ms={self.max_lag_ms:.1f} p99_loop_lag_ms={self.p99_lag_ms:.1f} "
            f"max_overrun_ms={self.max_overrun_ms:.1f} breaker={path}"
        )


def summarize(
    name: str,
    load: Load,
    *,
    ticker: LagTicker,
    sampler: ThreadSampler,
    thread_bound: int,
    transitions: TransitionRecorder,
    acked_writes: int = 0,
    acked_lost: int = 0,
) -> FaultSummary:
    counts = load.counts()
    succeeded = counts.pop("ok", 0)
    overrun = max((o.elapsed - o.deadline for o in load.outcomes), default=0.0)
    return FaultSummary(
        name=name,
        sent=len(load.outcomes),
        succeeded=succeeded,
        failed=dict(counts),
        acked_writes=acked_writes,
        acked_lost=acked_lost,
        peak_threads=sampler.peak,
        thread_bound=thread_bound,
        max_lag_ms=ticker.max_ms,
        p99_lag_ms=ticker.p99_ms,
        breaker_path=transitions.path,
        max_overrun_ms=max(0.0, overrun) * 1000.0,
    )


def emit(summary: FaultSummary, capsys: pytest.CaptureFixture[str]) -> str:
    """Print the line past pytest's capture, and append it to ``$FAULT_SUMMARY_FILE``."""
    line = summary.line()
    with capsys.disabled():
        print(f"\n{line}")
    path = os.environ.get("FAULT_SUMMARY_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return line
