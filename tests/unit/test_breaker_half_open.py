"""A half-open breaker: exactly the configured number of probes, what their outcomes decide,
a probe that decides nothing, and a hung probe (a bare breaker on a fake clock).
"""

from __future__ import annotations

import asyncio

import pytest
from support import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    FakeClock,
    TransitionLog,
    acquire,
    fail,
    half_open,
    open_breaker,
)

# -- exactly the configured number of probes -------------------------------------------------


async def test_half_open_admits_exactly_configured_probes() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30.0)
    release = asyncio.Event()
    reached_consul = 0

    async def caller() -> bool:
        nonlocal reached_consul
        permit = breaker.try_acquire()
        if permit is None:
            return False
        reached_consul += 1
        await release.wait()  # the probe is in flight while the others arrive
        permit.success(0.01)
        return True

    tasks = [asyncio.create_task(caller()) for _ in range(10)]
    await asyncio.sleep(0)
    assert reached_consul == 1
    assert breaker.snapshot()["half_open_in_flight"] == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count(True) == 1
    assert results.count(False) == 9
    assert breaker.state is CLOSED


def test_half_open_admits_configured_number_greater_than_one() -> None:
    breaker, first = half_open(FakeClock(), half_open_max_calls=3)
    permits = [breaker.try_acquire() for _ in range(9)]
    assert sum(p is not None for p in permits) == 2
    assert breaker.snapshot()["half_open_in_flight"] == 3
    assert first is not None


# -- probe success closes with fresh counts; probe failure reopens with a growing wait -------


def test_probe_success_closes_with_fresh_counts() -> None:
    log = TransitionLog()
    breaker, probe = half_open(FakeClock(), log)
    probe.success(0.01)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 0
    fail(breaker, 2)  # threshold is 3: the failures before the open are gone
    assert breaker.state is CLOSED
    assert [e[1:] for e in log.events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_all_probes_must_succeed_to_close() -> None:
    breaker, first = half_open(FakeClock(), half_open_max_calls=2)
    second = acquire(breaker)
    first.success(0.01)
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire() is None  # one done, one in flight: no third probe
    second.success(0.01)
    assert breaker.state is CLOSED


def test_probe_failure_reopens_with_a_new_wait() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker, probe = half_open(clock, log)
    probe.failure()
    assert breaker.state is OPEN
    assert breaker.retry_after_seconds() == 30.0
    assert log.events[-1] == ("consul.test", "half_open", "open")


def test_reopen_wait_grows_by_multiplier_up_to_cap_and_resets_on_close() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, reset_timeout_multiplier=2.0, max_reset_timeout_seconds=100.0)
    waits = [breaker.retry_after_seconds()]
    for _ in range(4):
        clock.advance(breaker.retry_after_seconds())
        acquire(breaker).failure()
        waits.append(breaker.retry_after_seconds())
    assert waits == [30.0, 60.0, 100.0, 100.0, 100.0]
    clock.advance(100.0)
    acquire(breaker).success(0.01)
    fail(breaker, 3)
    assert breaker.retry_after_seconds() == 30.0


def test_cap_below_reset_timeout_never_shortens_the_first_wait() -> None:
    breaker = open_breaker(FakeClock(), max_reset_timeout_seconds=10.0)
    assert breaker.retry_after_seconds() == 30.0


# -- a cancelled or non-counting probe frees its slot and decides nothing --------------------


def test_ignored_probe_frees_its_slot_and_decides_nothing() -> None:
    log = TransitionLog()
    breaker, probe = half_open(FakeClock(), log)
    assert breaker.try_acquire() is None
    probe.ignore()  # cancelled, or a 403 / validation error / not-found
    assert breaker.state is HALF_OPEN
    assert len(log.events) == 2
    next_probe = breaker.try_acquire()
    assert next_probe is not None
    next_probe.success(0.01)
    assert breaker.state is CLOSED


async def test_permit_ignored_in_finally_counts_nothing_and_never_raises() -> None:
    breaker, probe = half_open(FakeClock())

    async def call() -> None:
        try:
            raise asyncio.CancelledError
        finally:
            probe.ignore()

    with pytest.raises(asyncio.CancelledError):
        await call()
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot()["total_failures"] == 3
    assert breaker.try_acquire() is not None


# -- a hung probe counts as a failure --------------------------------------------------------


def test_hung_probe_is_a_failure_on_the_next_try_acquire() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker, probe = half_open(clock, log, probe_timeout_seconds=5.0)
    clock.advance(4.9)
    assert breaker.try_acquire() is None
    assert breaker.state is HALF_OPEN
    clock.advance(0.1)
    assert breaker.try_acquire() is None
    assert breaker.state is OPEN
    assert breaker.retry_after_seconds() == 30.0
    assert log.events[-1] == ("consul.test", "half_open", "open")
    failures = breaker.snapshot()["total_failures"]
    probe.success(0.01)  # it finally returns: too late to count
    assert breaker.state is OPEN
    assert breaker.snapshot()["total_failures"] == failures


def test_hung_probe_is_a_failure_on_a_state_read() -> None:
    clock = FakeClock()
    breaker, _probe = half_open(clock, probe_timeout_seconds=5.0)
    clock.advance(5.0)
    assert breaker.state is OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 0
