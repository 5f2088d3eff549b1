"""Retries: the policy (backoff with full jitter, a retry budget, the deadline check) and,
beside it, the loop that runs one envelope's attempts by it.

The policy pieces are pure, so tests drive them with a fake clock and a fixed RNG. The loop,
:class:`Attempts`, is where an envelope meets the breaker, the pool and the one exception
boundary (:func:`handler_consul._translate.translate`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from handler_consul._breaker import CircuitBreaker
from handler_consul._bulkhead import CallSlots
from handler_consul._client import ConsulClient
from handler_consul._clock import Clock, Sleep, monotonic
from handler_consul._errors import (
    ContextFields,
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
    carry_outcome,
    make_context,
)
from handler_consul._log import log_attempt_failure
from handler_consul._operations import Operation, call_operation
from handler_consul._pool import PoolClosed
from handler_consul._settings import RetrySettings
from handler_consul._translate import translate
from handler_consul._transport import InFlight

__all__ = [
    "AttemptObserver",
    "Attempts",
    "RetryBudget",
    "backoff_seconds",
    "shut_down_error",
    "sleep_budget",
]

_UNCOUNTED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


def backoff_seconds(policy: RetrySettings, retry_number: int, rng: Callable[[], float]) -> float:
    """The wait before retry ``retry_number`` (1 = the first retry): AWS's full jitter.

    Uniform over ``[0, min(max_delay, initial * base ** (retry_number - 1)))``, so that
    clients failing together do not retry together. ``rng`` returns floats in ``[0, 1)``.
    """
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    try:
        ceiling = policy.initial_delay_seconds * policy.exponential_base ** (retry_number - 1)
    except OverflowError:
        ceiling = policy.max_delay_seconds
    return rng() * min(policy.max_delay_seconds, ceiling)


class RetryBudget:
    """Keeps retries a small fraction of calls, so an outage is not multiplied by retries.

    Finagle's budget: over a sliding window, retries may reach ``ratio`` times the first
    attempts plus ``min_retries_per_second`` times the window, the floor that lets a quiet
    handler retry at all. The window is ten buckets, so memory is constant and an entry
    leaves it between 0.9 and 1.0 window after it was made.
    """

    _BUCKETS = 10

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries_per_second: float = 1.0,
        window_seconds: float = 10.0,
        clock: Clock = monotonic,
    ) -> None:
        if ratio < 0 or min_retries_per_second < 0:
            raise ValueError("ratio and min_retries_per_second must not be negative")
        if not window_seconds > 0:
            raise ValueError("window_seconds must be positive")
        self._ratio = ratio
        self._reserve = min_retries_per_second * window_seconds
        self._window = window_seconds
        self._width = window_seconds / self._BUCKETS
        self._clock = clock
        self._calls = [0] * self._BUCKETS
        self._retries = [0] * self._BUCKETS
        self._epoch = self._epoch_now()
        self._total_calls = 0
        self._total_retries = 0

    def record_call(self) -> None:
        """A first attempt: it earns ``ratio`` of a retry."""
        slot = self._advance()
        self._calls[slot] += 1
        self._total_calls += 1

    def try_spend(self) -> bool:
        """Withdraw one retry; False when the budget is spent and the caller must not retry."""
        slot = self._advance()
        if self._balance() < 1:
            return False
        self._retries[slot] += 1
        self._total_retries += 1
        return True

    def snapshot(self) -> dict[str, float]:
        self._advance()
        return {
            "ratio": self._ratio,
            "window_seconds": self._window,
            "calls_in_window": self._total_calls,
            "retries_in_window": self._total_retries,
            "balance": self._balance(),
        }

    def peek_balance(self) -> float:
        """The balance now, without sliding the window: it only reads, so a metrics export
        thread may call it while the event loop spends (it may then be one entry off)."""
        calls, retries = self._total_calls, self._total_retries
        stale = min(self._epoch_now() - self._epoch, self._BUCKETS)
        for step in range(1, stale + 1):
            slot = (self._epoch + step) % self._BUCKETS
            calls -= self._calls[slot]
            retries -= self._retries[slot]
        return self._reserve + self._ratio * calls - retries

    def _balance(self) -> float:
        return self._reserve + self._ratio * self._total_calls - self._total_retries

    def _epoch_now(self) -> int:
        return int(self._clock() // self._width)

    def _advance(self) -> int:
        """Empty the buckets the window has slid past; return the current bucket's index."""
        epoch = int(self._clock() // self._width)
        if epoch == self._epoch:
            return epoch % self._BUCKETS  # the usual case: still in the same bucket
        stale = min(epoch - self._epoch, self._BUCKETS)
        for step in range(1, stale + 1):
            slot = (self._epoch + step) % self._BUCKETS
            self._total_calls -= self._calls[slot]
            self._total_retries -= self._retries[slot]
            self._calls[slot] = self._retries[slot] = 0
        self._epoch = max(self._epoch, epoch)
        return self._epoch % self._BUCKETS


def sleep_budget(remaining_seconds: float, delay: float) -> float | None:
    """The backoff to sleep, or None when it would not end before the deadline.

    A sleep that ends exactly at the deadline leaves no time for the attempt after it, so it
    counts as past it.
    """
    delay = max(0.0, delay)
    if delay < remaining_seconds:
        return delay
    return None


class AttemptObserver(Protocol):
    """Told of an envelope's retry decisions (telemetry). Without one, nothing is called."""

    def retrying(
        self, fields: ContextFields, error: InfraError, attempt: int, delay: float
    ) -> None: ...

    def budget_exhausted(self, fields: ContextFields, error: InfraError, attempt: int) -> None: ...


def shut_down_error(started: bool = False) -> PoolClosed:
    """What shutdown posts to unfinished envelopes; translate() adds each one's context."""
    return PoolClosed("shut down before this envelope finished", request_sent=started)


class Attempts:
    """Runs one envelope's attempts: a breaker permit, the call in the pool, translation,
    the retry decision and the backoff, all inside the envelope's deadline.

    One per runtime. ``closing`` and :meth:`fail_sleepers` let shutdown end envelopes that
    are backing off between attempts.
    """

    def __init__(
        self,
        pool: CallSlots,
        client: ConsulClient,
        policy: RetrySettings,
        budget: RetryBudget,
        *,
        token: str | None,
        clock: Clock,
        rng: Callable[[], float],
        sleep: Sleep | None,
        call: Callable[..., Any] = call_operation,
        long_polls: bool = False,
    ) -> None:
        self.pool = pool
        # What the pool runs per attempt: call_operation in a worker thread (io="threads"),
        # or call_operation_async on the loop (io="asyncio"); same arguments.
        self.call = call
        # For blocking queries: one that waits out its ``wait`` is a success by design, never
        # a slow call for the breaker; and a caller that gives up ends its query at once
        # (InFlight), or the query would hold its thread for the rest of its wait.
        self._long_polls = long_polls
        self.client = client
        self.policy = policy
        self.budget = budget
        self.closing = False
        self._token = token
        self._clock = clock
        self._rng = rng
        self._injected_sleep = sleep
        self._sleepers: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"Attempts(max_attempts={self.policy.max_attempts})"

    async def run(
        self,
        breaker: CircuitBreaker,
        operation: Operation,
        payload: Any,
        fields: ContextFields,
        deadline: float,
        observer: AttemptObserver | None = None,
    ) -> tuple[dict[str, Any], int]:
        """The result and the number of attempts, or the translated error of the last one.

        ``observer``, when given, hears of each retry and of each retry the budget refused.
        """
        clock = self._clock
        attempt = 0
        # Whether any attempt so far may have reached Consul, or may have been applied: an
        # envelope that ends on the deadline or on shutdown reports what its attempts did.
        sent = unknown = False
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise InfraTimeoutError(
                    f"{operation.name}: envelope deadline passed after {attempt} attempt(s)",
                    context=make_context(
                        fields,
                        InfraTimeoutError,
                        attempts=attempt,
                        request_sent=sent,
                        outcome_unknown=unknown,
                    ),
                )
            permit = breaker.try_acquire()
            if permit is None:
                await self._wait_out_open_breaker(
                    breaker, operation, fields, attempt, remaining, sent, unknown
                )
                continue
            if attempt == 0:
                # Only envelopes that reach Consul earn retry budget: an outage's fast-failed
                # traffic must not pay for the retries that follow it.
                self.budget.record_call()
            attempt += 1
            call_started = clock()
            try:
                # The worker's requests end by the same instant the caller stops waiting; on
                # the real monotonic clock, whatever clock the loop is driven by.
                request_deadline = time.monotonic() + remaining
                in_flight = InFlight() if self._long_polls else None
                result = await self.pool.run(
                    self.call,
                    self.client,
                    operation,
                    payload,
                    request_deadline,
                    in_flight,
                    timeout=remaining,
                )
            except _UNCOUNTED as exc:
                permit.ignore()
                if in_flight is not None and isinstance(exc, asyncio.CancelledError):
                    in_flight.abort()
                raise
            except BaseException as exc:  # every other failure is translated, here
                error = translate(exc, fields, attempts=attempt, token=self._token)
                sent = sent or error.context.request_sent
                unknown = unknown or error.context.outcome_unknown
                if error.counts_as_failure:
                    permit.failure()
                else:
                    permit.ignore()
            else:
                permit.success(0.0 if self._long_polls else clock() - call_started)
                # Operations build a fresh dict per call (their TypedDicts): no copy needed.
                return result, attempt
            delay = self._retry_delay(
                operation, payload, error, attempt, deadline, fields, observer
            )
            log_attempt_failure(fields, error, attempt, clock() - call_started, delay is not None)
            if delay is not None and observer is not None:
                observer.retrying(fields, error, attempt, delay)
            if delay is None:
                raise carry_outcome(error, sent, unknown)
            await self._sleep(delay, fields, attempt, sent)

    async def _wait_out_open_breaker(
        self,
        breaker: CircuitBreaker,
        operation: Operation,
        fields: ContextFields,
        attempt: int,
        remaining: float,
        sent: bool,
        unknown: bool,
    ) -> None:
        """An open breaker is waited out only on a retry, and only when its wait fits inside
        the deadline; a first attempt fails fast, without touching the pool."""
        retry_after = breaker.retry_after_seconds()
        wait = sleep_budget(remaining, retry_after) if attempt else None
        if wait is None or attempt >= self.policy.max_attempts or not math.isfinite(retry_after):
            raise InfraUnavailableError(
                f"{operation.name}: circuit breaker {breaker.name} is open",
                context=partial(
                    make_context,
                    fields,
                    InfraUnavailableError,
                    attempt,
                    request_sent=sent,
                    outcome_unknown=unknown,
                ),
                retry_after_seconds=retry_after if math.isfinite(retry_after) else None,
            )
        await self._sleep(wait, fields, attempt, sent)

    def _retry_delay(
        self,
        operation: Operation,
        payload: Any,
        error: InfraError,
        attempt: int,
        deadline: float,
        fields: ContextFields,
        observer: AttemptObserver | None,
    ) -> float | None:
        """The backoff before the next attempt, or None when this error ends the envelope."""
        if not error.retryable or attempt >= self.policy.max_attempts:
            return None
        if error.outcome_unknown and not operation.idempotent(payload):
            return None
        delay = backoff_seconds(self.policy, attempt, self._rng)
        wait = sleep_budget(deadline - self._clock(), delay)
        if wait is None:
            return None
        if not self.budget.try_spend():
            if observer is not None:
                observer.budget_exhausted(fields, error, attempt)
            return None
        return wait

    async def _sleep(self, seconds: float, fields: ContextFields, attempt: int, sent: bool) -> None:
        """Back off between attempts; a shutdown ends the wait with this envelope's context
        (and whether an earlier attempt may have reached Consul)."""
        try:
            await self._backoff(seconds)
        except PoolClosed:
            error = translate(shut_down_error(sent), fields, attempts=attempt, token=self._token)
        else:
            return
        raise error

    async def _backoff(self, seconds: float) -> None:
        if self._injected_sleep is not None:
            await self._injected_sleep(seconds)
            return
        if self.closing:
            raise shut_down_error()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _resolve, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            handle.cancel()
            self._sleepers.discard(future)

    def fail_sleepers(self) -> int:
        """End every envelope backing off between attempts with the shut-down error."""
        failed = 0
        for sleeper in list(self._sleepers):
            if not sleeper.done():
                sleeper.set_exception(shut_down_error())
                failed += 1
        return failed


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
