"""Fault-test machinery: a steady load of envelopes and what became of each, the watch kept
while a fault runs (loop lag, worker threads, pool figures, breaker transitions), reading
acknowledged writes back, and the one-line ``FAULT-SUMMARY`` each fault test prints.

Nothing here talks to Consul by itself; the tests hand it a real ``HandlerConsul``.
Every loop is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest

from handler_consul import HandlerConsul, InfraError, InfraUnavailableError

from .observe import LagTicker, ThreadSampler, TransitionRecorder

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


# -- the watch kept while a fault runs ------------------------------------------------------------


@dataclasses.dataclass
class Watch:
    """Everything sampled while a fault test runs."""

    handler: HandlerConsul
    ticker: LagTicker
    sampler: ThreadSampler
    transitions: TransitionRecorder
    pool_threads_peak: int = 0
    pool_busy_peak: int = 0
    states: list[str] = dataclasses.field(default_factory=list)

    def tick(self) -> None:
        pool = self.handler.describe()["pool"]
        if pool is not None:
            self.pool_threads_peak = max(self.pool_threads_peak, pool["threads"])
            self.pool_busy_peak = max(self.pool_busy_peak, pool["busy"])

    def breaker_state(self) -> str:
        return str(self.handler.circuit_breaker(None).state.value)


@contextlib.asynccontextmanager
async def watching(handler: HandlerConsul, config: dict[str, Any]) -> AsyncIterator[Watch]:
    """Start the samplers, then initialize ``handler`` (so its first thread is counted too)."""
    recorder = TransitionRecorder()
    with ThreadSampler() as sampler, recorder.installed():
        watch = Watch(handler, LagTicker(), sampler, recorder)
        watch.ticker.on_tick = watch.tick
        watch.ticker.start()
        try:
            await handler.initialize(config)
            yield watch
        finally:
            await watch.ticker.stop()


# -- what the load sends ------------------------------------------------------------------------


@contextlib.contextmanager
def unique_prefix(name: str) -> Iterator[str]:
    yield f"faults/{name}/{uuid.uuid4().hex[:10]}"


def kv_mix(prefix: str) -> Callable[[int], tuple[str, dict[str, Any]]]:
    """Alternate plain puts and reads of the key just written."""

    def make(i: int) -> tuple[str, dict[str, Any]]:
        key = f"{prefix}/{i // 2}"
        if i % 2 == 0:
            return "consul.kv_put", {"key": key, "value": f"v{i // 2}"}
        return "consul.kv_get", {"key": key}

    return make


def puts(prefix: str) -> Callable[[int], tuple[str, dict[str, Any]]]:
    def make(i: int) -> tuple[str, dict[str, Any]]:
        return "consul.kv_put", {"key": f"{prefix}/{i}", "value": f"value-{i}"}

    return make


def fast_rejections(load: Load) -> list[Outcome]:
    """Breaker rejections of a first attempt: nothing but the breaker was consulted."""
    return [
        o
        for o in load.outcomes
        if o.error is not None
        and is_breaker_rejection(o.error)
        and isinstance(o.error, InfraError)
        and o.error.context.attempts == 0
    ]


async def read_back(
    handler: HandlerConsul, load: Load, *, bound: float = 30.0
) -> tuple[int, list[str]]:
    """Every acknowledged write (applied: true), read with consistency "consistent".

    Returns (acknowledged, keys whose value is missing or different).
    """
    acked = [o for o in load.outcomes if o.result is not None and o.result["applied"] is True]

    async def check(o: Outcome) -> str | None:
        response = await handler.execute(
            {
                "operation": "consul.kv_get",
                "payload": {"key": o.payload["key"], "consistency": "consistent"},
                "timeout_seconds": 10.0,
            }
        )
        ok = response.result["found"] and response.result["value"] == o.payload["value"]
        return None if ok else o.payload["key"]

    results = await asyncio.wait_for(asyncio.gather(*(check(o) for o in acked)), bound)
    return len(acked), [k for k in results if k is not None]


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
    watch: Watch,
    *,
    thread_bound: int,
    acked_writes: int = 0,
    acked_lost: int = 0,
) -> FaultSummary:
    """The summary of a finished fault run, from its load and the watch kept over it."""
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
        peak_threads=watch.sampler.peak,
        thread_bound=thread_bound,
        max_lag_ms=watch.ticker.max_ms,
        p99_lag_ms=watch.ticker.p99_ms,
        breaker_path=watch.transitions.path,
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
