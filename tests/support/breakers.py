"""Building a bare CircuitBreaker on a fake clock, and driving it into each state."""

from __future__ import annotations

from typing import Any

from handler_consul import BreakerSettings
from handler_consul._breaker import BreakerState, CircuitBreaker, Permit

from .fakes import FakeClock, TransitionLog

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make_breaker(
    clock: FakeClock, log: TransitionLog | None = None, **config: Any
) -> CircuitBreaker:
    """A breaker named ``consul.test``; ``config`` is BreakerSettings plus
    ``probe_timeout_seconds``."""
    probe_timeout = config.pop("probe_timeout_seconds", None)
    return CircuitBreaker(
        "consul.test",
        BreakerSettings(**config),
        probe_timeout_seconds=probe_timeout,
        clock=clock,
        on_transition=log,
    )


def acquire(breaker: CircuitBreaker) -> Permit:
    """A permit the breaker must grant."""
    permit = breaker.try_acquire()
    assert permit is not None
    return permit


def fail(breaker: CircuitBreaker, times: int) -> None:
    """``times`` admitted calls that each fail."""
    for _ in range(times):
        acquire(breaker).failure()


def open_breaker(
    clock: FakeClock, log: TransitionLog | None = None, **config: Any
) -> CircuitBreaker:
    """An OPEN breaker (threshold 3, reset timeout 30 s) that has just seen three failures."""
    breaker = make_breaker(clock, log, failure_threshold=3, reset_timeout_seconds=30.0, **config)
    fail(breaker, 3)
    assert breaker.state is OPEN
    return breaker


def half_open(
    clock: FakeClock, log: TransitionLog | None = None, **config: Any
) -> tuple[CircuitBreaker, Permit]:
    """A HALF_OPEN breaker and the permit of its first probe (still outstanding)."""
    breaker = open_breaker(clock, log, **config)
    clock.advance(breaker.retry_after_seconds())
    return breaker, acquire(breaker)
