"""The breaker against RESILIENCE.md items 1-13, with a fake clock and no real sleeps.

Item 12 (KeyboardInterrupt, SystemExit and CancelledError propagate and are never counted)
is the caller's job, tested with the handler (planned: tests/test_handler_resilience.py).
Here only the breaker's part: a permit resolved from ``finally`` counts nothing, never raises.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import sys
import time
import tracemalloc
from typing import Any

import pydantic
import pytest

from handler_consul import BreakerSettings
from handler_consul._breaker import (
    BreakerState,
    CircuitBreaker,
    MixinAsyncCircuitBreaker,
    Permit,
)

from .fakes import FakeClock, TransitionLog

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make(clock: FakeClock, log: TransitionLog | None = None, **config: Any) -> CircuitBreaker:
    probe_timeout = config.pop("probe_timeout_seconds", None)
    return CircuitBreaker(
        "consul.test",
        BreakerSettings(**config),
        probe_timeout_seconds=probe_timeout,
        clock=clock,
        on_transition=log,
    )


def acquire(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_acquire()
    assert permit is not None
    return permit


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        acquire(breaker).failure()


def open_breaker(
    clock: FakeClock, log: TransitionLog | None = None, **config: Any
) -> CircuitBreaker:
    breaker = make(clock, log, failure_threshold=3, reset_timeout_seconds=30.0, **config)
    fail(breaker, 3)
    assert breaker.state is OPEN
    return breaker


def half_open(
    clock: FakeClock, log: TransitionLog | None = None, **config: Any
) -> tuple[CircuitBreaker, Permit]:
    breaker = open_breaker(clock, log, **config)
    clock.advance(breaker.retry_after_seconds())
    return breaker, acquire(breaker)


# -- item 1: one outcome per attempt, consecutive failures, >= compares ---------------------


def test_item_01_opens_when_consecutive_failures_reach_threshold() -> None:
    log = TransitionLog()
    breaker = make(FakeClock(), log, failure_threshold=3)
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 2
    fail(breaker, 1)
    assert breaker.state is OPEN
    assert log.events == [("consul.test", "closed", "open")]


def test_item_01_below_threshold_never_opens_because_success_resets_the_count() -> None:
    breaker = make(FakeClock(), failure_threshold=3)
    for _ in range(100):
        fail(breaker, 2)
        acquire(breaker).success(0.01)
    assert breaker.state is CLOSED
    snap = breaker.snapshot()
    assert (snap["total_failures"], snap["total_successes"], snap["transitions"]) == (200, 100, 0)


def test_item_01_a_permit_counts_one_outcome_however_often_it_is_resolved() -> None:
    breaker = make(FakeClock(), failure_threshold=2)
    permit = acquire(breaker)
    permit.failure()
    permit.failure()
    permit.success(0.0)
    permit.ignore()
    snap = breaker.snapshot()
    assert (snap["total_failures"], snap["total_successes"]) == (1, 0)
    assert breaker.state is CLOSED


# -- item 2: slow calls ---------------------------------------------------------------------


def test_item_02_slow_success_counts_as_failure_when_configured() -> None:
    breaker = make(FakeClock(), failure_threshold=2, slow_call_duration_seconds=1.0)
    acquire(breaker).success(1.0)  # not slower than the threshold
    assert breaker.snapshot()["consecutive_failures"] == 0
    acquire(breaker).success(1.5)
    acquire(breaker).success(2.0)
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert (snap["total_slow_calls"], snap["total_failures"], snap["total_successes"]) == (2, 2, 1)


def test_item_02_slow_calls_are_off_by_default() -> None:
    breaker = make(FakeClock(), failure_threshold=1)
    acquire(breaker).success(3600.0)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["total_slow_calls"] == 0


# -- item 3: fail fast, cheaply, without exceptions -----------------------------------------


def test_item_03_open_rejects_with_remaining_time_and_without_raising() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(10.0)
    assert breaker.try_acquire() is None
    assert breaker.retry_after_seconds() == pytest.approx(20.0)
    assert sys.exc_info() == (None, None, None)  # nothing raised, nothing to chain onto
    assert breaker.snapshot()["total_rejections"] == 1


def test_item_03_rejection_allocates_nothing_that_stays() -> None:
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


def test_item_03_rejection_costs_microseconds() -> None:
    # A loose sanity bound only; the real numbers live in bench/.
    breaker = open_breaker(FakeClock())
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        breaker.try_acquire()
    mean = (time.perf_counter() - start) / n
    assert mean < 20e-6


# -- item 4: the next caller moves OPEN to HALF_OPEN; exactly the configured probes ---------


def test_item_04_state_reports_open_until_a_caller_arrives() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker = open_breaker(clock, log)
    clock.advance(30.0)
    assert breaker.state is OPEN
    assert breaker.retry_after_seconds() == 0.0
    assert breaker.try_acquire() is not None
    assert breaker.state is HALF_OPEN
    assert log.events[-1] == ("consul.test", "open", "half_open")


def test_item_04_still_open_just_before_the_reset_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(29.999)
    assert breaker.try_acquire() is None
    assert breaker.state is OPEN


async def test_item_04_half_open_admits_exactly_configured_probes() -> None:
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


def test_item_04_half_open_admits_configured_number_greater_than_one() -> None:
    breaker, first = half_open(FakeClock(), half_open_max_calls=3)
    permits = [breaker.try_acquire() for _ in range(9)]
    assert sum(p is not None for p in permits) == 2
    assert breaker.snapshot()["half_open_in_flight"] == 3
    assert first is not None


# -- item 5: probe success closes fresh; probe failure reopens with a growing wait ----------


def test_item_05_probe_success_closes_with_fresh_counts() -> None:
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


def test_item_05_all_probes_must_succeed_to_close() -> None:
    breaker, first = half_open(FakeClock(), half_open_max_calls=2)
    second = acquire(breaker)
    first.success(0.01)
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire() is None  # one done, one in flight: no third probe
    second.success(0.01)
    assert breaker.state is CLOSED


def test_item_05_probe_failure_reopens_with_a_new_wait() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker, probe = half_open(clock, log)
    probe.failure()
    assert breaker.state is OPEN
    assert breaker.retry_after_seconds() == 30.0
    assert log.events[-1] == ("consul.test", "half_open", "open")


def test_item_05_reopen_wait_grows_by_multiplier_up_to_cap_and_resets_on_close() -> None:
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


def test_item_05_cap_below_reset_timeout_never_shortens_the_first_wait() -> None:
    breaker = open_breaker(FakeClock(), max_reset_timeout_seconds=10.0)
    assert breaker.retry_after_seconds() == 30.0


# -- item 6: a cancelled or non-counting probe frees its slot and decides nothing -----------


def test_item_06_ignored_probe_frees_its_slot_and_decides_nothing() -> None:
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


def test_item_06_ignored_call_while_closed_changes_no_count() -> None:
    breaker = make(FakeClock(), failure_threshold=2)
    fail(breaker, 1)
    acquire(breaker).ignore()
    assert breaker.snapshot()["consecutive_failures"] == 1
    assert breaker.snapshot()["total_successes"] == 0


# -- item 7: a hung probe counts as a failure ----------------------------------------------


def test_item_07_hung_probe_is_a_failure_on_the_next_try_acquire() -> None:
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


def test_item_07_hung_probe_is_a_failure_on_a_state_read() -> None:
    clock = FakeClock()
    breaker, _probe = half_open(clock, probe_timeout_seconds=5.0)
    clock.advance(5.0)
    assert breaker.state is OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 0


# -- item 8: late outcomes from an earlier generation decide nothing ------------------------


def test_item_08_late_success_does_not_close_an_open_breaker() -> None:
    breaker = make(FakeClock(), failure_threshold=2)
    slow = acquire(breaker)
    fail(breaker, 2)
    assert breaker.state is OPEN
    slow.success(0.01)
    assert breaker.state is OPEN
    assert breaker.snapshot()["total_successes"] == 0


def test_item_08_late_failure_does_not_reopen_a_fresh_half_open() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker = make(clock, log, failure_threshold=2)
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


# -- item 9: a burst makes one transition and one event -----------------------------------


def test_item_09_burst_of_failures_makes_exactly_one_transition() -> None:
    log = TransitionLog()
    breaker = make(FakeClock(), log, failure_threshold=5)
    permits = [acquire(breaker) for _ in range(50)]
    for permit in permits:
        permit.failure()
    assert breaker.state is OPEN
    assert log.events == [("consul.test", "closed", "open")]
    snap = breaker.snapshot()
    assert (snap["transitions"], snap["total_failures"]) == (1, 5)


# -- item 10: only the monotonic clock --------------------------------------------------------


def test_item_10_wall_clock_jumps_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    for jump in (3600.0, -86400.0, 10 * 365 * 86400.0):
        monkeypatch.setattr(time, "time", lambda jump=jump: 1.7e9 + jump)
        assert breaker.try_acquire() is None
        assert breaker.retry_after_seconds() == 30.0
        assert breaker.state is OPEN


def test_item_10_default_clock_is_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = CircuitBreaker("consul.real", BreakerSettings(failure_threshold=1))
    fail(breaker, 1)
    monkeypatch.setattr(time, "time", lambda: time.monotonic() + 10 * 365 * 86400.0)
    assert breaker.try_acquire() is None
    assert 29.0 < breaker.retry_after_seconds() <= 30.0


# -- item 11: manual control, visible state ---------------------------------------------------


def test_item_11_force_open_holds_until_reset() -> None:
    clock = FakeClock()
    log = TransitionLog()
    breaker = make(clock, log)
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


def test_item_11_reset_clears_counts_and_grown_wait() -> None:
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


def test_item_11_reset_while_closed_is_not_a_transition() -> None:
    log = TransitionLog()
    breaker = make(FakeClock(), log, failure_threshold=3)
    fail(breaker, 2)
    breaker.reset()
    assert breaker.snapshot()["consecutive_failures"] == 0
    assert log.events == []


def test_item_11_snapshot_is_json_ready_and_complete() -> None:
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


# -- item 12 (breaker side only; the handler's tests cover propagation) -----------------------


async def test_item_12_permit_ignored_in_finally_counts_nothing_and_never_raises() -> None:
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


# -- item 13: one breaker per datacenter ------------------------------------------------------


class Host(MixinAsyncCircuitBreaker):
    def __init__(self, clock: FakeClock, log: TransitionLog) -> None:
        self._init_circuit_breakers(
            BreakerSettings(failure_threshold=1), clock=clock, on_transition=log
        )


def test_item_13_one_breaker_per_datacenter_named_consul_dc() -> None:
    log = TransitionLog()
    host = Host(FakeClock(), log)
    assert host.circuit_breaker().name == "consul.default"
    assert host.circuit_breaker("") is host.circuit_breaker(None)
    assert host.circuit_breaker("dc1").name == "consul.dc1"
    assert host.circuit_breaker("dc1") is host.circuit_breaker("dc1")
    fail(host.circuit_breaker("dc1"), 1)
    assert host.circuit_breaker("dc1").state is OPEN
    assert host.circuit_breaker("dc2").state is CLOSED
    assert log.events == [("consul.dc1", "closed", "open")]


def test_item_13_mixin_manual_control_and_states() -> None:
    host = Host(FakeClock(), TransitionLog())
    host.force_open_circuit("dc2")
    host.circuit_breaker()
    states = host.circuit_breaker_states()
    assert sorted(states) == ["consul.dc2", "consul.default"]
    assert states["consul.dc2"]["state"] == "open"
    assert states["consul.default"]["state"] == "closed"
    host.reset_circuit("dc2")
    assert host.circuit_breaker_states()["consul.dc2"]["state"] == "closed"


def test_item_13_mixin_keeps_its_attributes_under_cb_prefix() -> None:
    host = Host(FakeClock(), TransitionLog())
    assert all(name.startswith("_cb_") for name in vars(host))


# -- the rest of the contract ---------------------------------------------------------------


def test_disabled_breaker_admits_everything_and_never_transitions() -> None:
    log = TransitionLog()
    breaker = make(FakeClock(), log, enabled=False, failure_threshold=1)
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
