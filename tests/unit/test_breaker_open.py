"""An open breaker: it fails fast and cheaply, waits its reset timeout on the monotonic clock
only, can be forced open and reset by hand, and shows all of it in its snapshot (a bare
breaker on a fake clock; the handler's side is in tests/test_circuit_breaker.py).
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
import tracemalloc

import pytest
from support import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    FakeClock,
    TransitionLog,
    acquire,
    fail,
    make_breaker,
    open_breaker,
)

from handler_consul import BreakerSettings
from handler_consul._breaker import CircuitBreaker

# -- fail fast, cheaply, without exceptions --------------------------------------------------


def test_open_rejects_with_remaining_time_and_without_raising() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(10.0)
    assert breaker.try_acquire() is None
    assert breaker.retry_after_seconds() == pytest.approx(20.0)
    assert sys.exc_info() == (None, None, None)  # nothing raised, nothing to chain onto
    assert breaker.snapshot()["total_rejections"] == 1


def test_rejection_allocates_nothing_that_stays() -> None:
    breaker = open_breaker(FakeClock())
    for _ in range(1000):  # warm up caches and freelists
        breaker.try_acquire()
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):
            breaker.try_acquire()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024  # nothing per rejection: a leak would be megabytes


def test_rejection_costs_microseconds() -> None:
    # A loose sanity bound only; the real numbers live in bench/.
    breaker = open_breaker(FakeClock())
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        breaker.try_acquire()
    mean = (time.perf_counter() - start) / n
    assert mean < 20e-6


# -- the reset timeout: the next caller moves OPEN to HALF_OPEN ------------------------------


def test_state_reports_open_until_a_caller_arrives() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker = open_breaker(clock, log)
    clock.advance(30.0)
    assert breaker.state is OPEN
    assert breaker.retry_after_seconds() == 0.0
    assert breaker.try_acquire() is not None
    assert breaker.state is HALF_OPEN
    assert log.events[-1] == ("consul.test", "open", "half_open")


def test_still_open_just_before_the_reset_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(29.999)
    assert breaker.try_acquire() is None
    assert breaker.state is OPEN


# -- only the monotonic clock ----------------------------------------------------------------


def test_wall_clock_jumps_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    for jump in (3600.0, -86400.0, 10 * 365 * 86400.0):
        monkeypatch.setattr(time, "time", lambda jump=jump: 1.7e9 + jump)
        assert breaker.try_acquire() is None
        assert breaker.retry_after_seconds() == 30.0
        assert breaker.state is OPEN


def test_default_clock_is_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = CircuitBreaker("consul.real", BreakerSettings(failure_threshold=1))
    fail(breaker, 1)
    monkeypatch.setattr(time, "time", lambda: time.monotonic() + 10 * 365 * 86400.0)
    assert breaker.try_acquire() is None
    assert 29.0 < breaker.retry_after_seconds() <= 30.0


# -- manual control, visible state -----------------------------------------------------------


def test_force_open_holds_until_reset() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker = make_breaker(clock, log)
    in_flight = acquire(breaker)
    breaker.force_open()
    assert breaker.state is OPEN
    assert breaker.retry_after_seconds() == math.inf
    clock.advance(10 * 86400.0)
    assert breaker.try_acquire() is None
    in_flight.success(0.01)
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert (snap["forced_open"], snap["retry_after_seconds"]) == (True, None)
    breaker.reset()
    assert breaker.state is CLOSED
    assert log.events == [("consul.test", "closed", "open"), ("consul.test", "open", "closed")]


def test_reset_clears_counts_and_grown_wait() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, reset_timeout_multiplier=3.0)
    clock.advance(30.0)
    acquire(breaker).failure()
    assert breaker.retry_after_seconds() == 90.0
    breaker.reset()
    fail(breaker, 2)
    assert breaker.state is CLOSED
    fail(breaker, 1)
    assert breaker.retry_after_seconds() == 30.0


def test_reset_while_closed_is_not_a_transition() -> None:
    log = TransitionLog()
    breaker = make_breaker(FakeClock(), log, failure_threshold=3)
    fail(breaker, 2)
    breaker.reset()
    assert breaker.snapshot()["consecutive_failures"] == 0
    assert log.events == []


def test_snapshot_is_json_ready_and_complete() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    breaker.try_acquire()
    clock.advance(12.5)
    snap = breaker.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap == {
        "name": "consul.test",
        "state": "open",
        "enabled": True,
        "forced_open": False,
        "consecutive_failures": 0,
        "failure_threshold": 3,
        "retry_after_seconds": 17.5,
        "reset_timeout_seconds": 30.0,
        "half_open_in_flight": 0,
        "total_successes": 0,
        "total_failures": 3,
        "total_slow_calls": 0,
        "total_rejections": 1,
        "transitions": 1,
    }
