"""What a closed breaker counts, and what it takes to open it (a bare breaker, fake clock).

One outcome per admitted call; only consecutive failures count, compared with ``>=``; a slow
success can count as a failure; an ignored outcome counts nothing; a burst of failures makes
one transition; an outcome from an earlier generation decides nothing. Also the settings a
breaker refuses and what a disabled breaker does.
"""

from __future__ import annotations

import math

import pydantic
import pytest
from support import CLOSED, HALF_OPEN, OPEN, FakeClock, TransitionLog, acquire, fail, make_breaker

from handler_consul import BreakerSettings
from handler_consul._breaker import BreakerState, CircuitBreaker

# -- consecutive failures, one outcome per call ----------------------------------------------


def test_opens_when_consecutive_failures_reach_the_threshold() -> None:
    log = TransitionLog()
    breaker = make_breaker(FakeClock(), log, failure_threshold=3)
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 2
    fail(breaker, 1)
    assert breaker.state is OPEN
    assert log.events == [("consul.test", "closed", "open")]


def test_below_the_threshold_never_opens_because_a_success_resets_the_count() -> None:
    breaker = make_breaker(FakeClock(), failure_threshold=3)
    for _ in range(100):
        fail(breaker, 2)
        acquire(breaker).success(0.01)
    assert breaker.state is CLOSED
    snap = breaker.snapshot()
    assert (snap["total_failures"], snap["total_successes"], snap["transitions"]) == (200, 100, 0)


def test_a_permit_counts_one_outcome_however_often_it_is_resolved() -> None:
    breaker = make_breaker(FakeClock(), failure_threshold=2)
    permit = acquire(breaker)
    permit.failure()
    permit.failure()
    permit.success(0.0)
    permit.ignore()
    snap = breaker.snapshot()
    assert (snap["total_failures"], snap["total_successes"]) == (1, 0)
    assert breaker.state is CLOSED


def test_ignored_call_while_closed_changes_no_count() -> None:
    breaker = make_breaker(FakeClock(), failure_threshold=2)
    fail(breaker, 1)
    acquire(breaker).ignore()
    assert breaker.snapshot()["consecutive_failures"] == 1
    assert breaker.snapshot()["total_successes"] == 0


def test_burst_of_failures_makes_exactly_one_transition() -> None:
    log = TransitionLog()
    breaker = make_breaker(FakeClock(), log, failure_threshold=5)
    permits = [acquire(breaker) for _ in range(50)]
    for permit in permits:
        permit.failure()
    assert breaker.state is OPEN
    assert log.events == [("consul.test", "closed", "open")]
    snap = breaker.snapshot()
    assert (snap["transitions"], snap["total_failures"]) == (1, 5)


# -- slow calls ------------------------------------------------------------------------------


def test_slow_success_counts_as_failure_when_configured() -> None:
    breaker = make_breaker(FakeClock(), failure_threshold=2, slow_call_duration_seconds=1.0)
    acquire(breaker).success(1.0)  # not slower than the threshold
    assert breaker.snapshot()["consecutive_failures"] == 0
    acquire(breaker).success(1.5)
    acquire(breaker).success(2.0)
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert (snap["total_slow_calls"], snap["total_failures"], snap["total_successes"]) == (2, 2, 1)


def test_slow_calls_are_off_by_default() -> None:
    breaker = make_breaker(FakeClock(), failure_threshold=1)
    acquire(breaker).success(3600.0)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["total_slow_calls"] == 0


# -- late outcomes from an earlier generation decide nothing ---------------------------------


def test_late_success_does_not_close_an_open_breaker() -> None:
    breaker = make_breaker(FakeClock(), failure_threshold=2)
    slow = acquire(breaker)
    fail(breaker, 2)
    assert breaker.state is OPEN
    slow.success(0.01)
    assert breaker.state is OPEN
    assert breaker.snapshot()["total_successes"] == 0


def test_late_failure_does_not_reopen_a_fresh_half_open() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker = make_breaker(clock, log, failure_threshold=2)
    slow = acquire(breaker)
    fail(breaker, 2)
    clock.advance(30.0)
    probe = acquire(breaker)
    assert breaker.state is HALF_OPEN
    slow.failure()
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot()["total_failures"] == 2
    probe.success(0.01)
    assert breaker.state is CLOSED
    assert len(log.events) == 3


# -- settings, a disabled breaker, a broken listener -----------------------------------------


def test_disabled_breaker_admits_everything_and_never_transitions() -> None:
    log = TransitionLog()
    breaker = make_breaker(FakeClock(), log, enabled=False, failure_threshold=1)
    for _ in range(10):
        acquire(breaker).failure()
    breaker.force_open()
    assert breaker.try_acquire() is not None
    assert breaker.state is CLOSED
    assert log.events == []


def test_a_failing_listener_does_not_wedge_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker(
        "consul.test", BreakerSettings(failure_threshold=1), clock=FakeClock(), on_transition=broken
    )
    acquire(breaker).failure()
    assert breaker.state is OPEN
    assert "transition listener failed" in caplog.text


@pytest.mark.parametrize(
    "field",
    [
        {"failure_threshold": 0},
        {"half_open_max_calls": 0},
        {"reset_timeout_seconds": 0.0},
        {"max_reset_timeout_seconds": -1.0},
        {"reset_timeout_multiplier": 0.5},
        {"slow_call_duration_seconds": 0.0},
        {"probe_timeout_seconds": -1.0},
        {"reset_timeout_seconds": math.nan},
    ],
)
def test_config_rejects_values_that_would_break_the_breaker(field: dict[str, object]) -> None:
    build = CircuitBreaker if "probe_timeout_seconds" in field else BreakerSettings
    kwargs = {"name": "consul.test", **field} if build is CircuitBreaker else field
    with pytest.raises(ValueError, match=next(iter(field))):
        build(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        BreakerSettings().failure_threshold = 1  # type: ignore[misc]
