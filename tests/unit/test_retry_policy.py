"""The retry policy on its own (fake clock and RNG, nothing sleeps for real): full-jitter
exponential backoff, the rule that no backoff sleep may end past the deadline, and the retry
budget. What is retried, and the retry loop in the handler, are in tests/test_retries.py,
tests/test_deadline.py and tests/test_cancellation.py.
"""

from __future__ import annotations

import random

import pydantic
import pytest
from support import FakeClock, FixedRng

from handler_consul import RetrySettings
from handler_consul._retry import RetryBudget, backoff_seconds, sleep_budget

# -- exponential backoff with full jitter, capped; injectable RNG and sleep -------------------


def test_backoff_ceiling_grows_exponentially_and_is_capped() -> None:
    policy = RetrySettings(initial_delay_seconds=0.1, max_delay_seconds=1.0, exponential_base=2.0)
    almost_one = FixedRng([0.999999])
    ceilings = [backoff_seconds(policy, n, almost_one) for n in range(1, 8)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0], rel=1e-5)


def test_full_jitter_scales_the_ceiling_by_the_rng() -> None:
    policy = RetrySettings(initial_delay_seconds=0.5, max_delay_seconds=5.0)
    assert backoff_seconds(policy, 3, FixedRng([0.0])) == 0.0
    assert backoff_seconds(policy, 3, FixedRng([0.25])) == 0.5
    assert backoff_seconds(policy, 3, FixedRng([0.5])) == 1.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetrySettings(initial_delay_seconds=1.0, max_delay_seconds=1.0)
    rng = random.Random(20).random
    delays = [backoff_seconds(policy, 1, rng) for _ in range(2000)]
    assert all(0.0 <= d < 1.0 for d in delays)
    assert min(delays) < 0.05
    assert max(delays) > 0.95


def test_huge_retry_number_stays_at_the_cap() -> None:
    policy = RetrySettings(exponential_base=10.0, max_delay_seconds=5.0)
    assert backoff_seconds(policy, 10_000, FixedRng([0.5])) == 2.5


async def test_sleep_is_injectable_and_sleeps_nothing_real() -> None:
    clock = FakeClock()
    policy = RetrySettings(max_attempts=4)
    rng = FixedRng([0.5])
    for retry in range(1, policy.max_attempts):
        await clock.sleep(backoff_seconds(policy, retry, rng))
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.2])
    assert clock.now == pytest.approx(1000.35)


@pytest.mark.parametrize(
    "field",
    [
        {"max_attempts": 0},
        {"max_attempts": 11},
        {"initial_delay_seconds": -0.1},
        {"max_delay_seconds": -1.0},
        {"exponential_base": 0.5},
    ],
)
def test_policy_rejects_out_of_range_values(field: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        RetrySettings(**field)  # type: ignore[arg-type]


def test_retry_number_starts_at_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_seconds(RetrySettings(), 0, FixedRng([0.5]))


def test_policy_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        RetrySettings().max_attempts = 5  # type: ignore[misc]


# -- no backoff sleep ends past the deadline ------------------------------------------------


def test_sleep_that_fits_before_the_deadline_is_kept() -> None:
    assert sleep_budget(remaining_seconds=1.0, delay=0.4) == 0.4
    assert sleep_budget(remaining_seconds=1.0, delay=0.0) == 0.0


def test_sleep_that_would_end_at_or_past_the_deadline_is_refused() -> None:
    assert sleep_budget(remaining_seconds=1.0, delay=1.0) is None
    assert sleep_budget(remaining_seconds=1.0, delay=1.5) is None
    assert sleep_budget(remaining_seconds=0.0, delay=0.0) is None
    assert sleep_budget(remaining_seconds=-0.5, delay=0.1) is None


def test_negative_delay_is_no_delay() -> None:
    assert sleep_budget(remaining_seconds=1.0, delay=-0.2) == 0.0


# -- the retry budget ------------------------------------------------------------------------


def test_retries_stay_a_small_fraction_under_a_persistent_outage() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, window_seconds=10.0, clock=clock)
    policy = RetrySettings(max_attempts=3)
    calls = retries = 0
    for _ in range(6000):  # 100 calls a second for a minute, every attempt failing
        budget.record_call()
        calls += 1
        for _ in range(policy.max_attempts - 1):
            if not budget.try_spend():
                break
            retries += 1
        clock.advance(0.01)
    # 20 % of calls plus the floor of 1 a second, never the 200 % that 3 attempts would make.
    assert retries <= 0.2 * calls + 1.0 * 60 + 10
    assert retries >= 0.2 * calls
    assert retries / calls < 0.25


def test_the_floor_lets_a_quiet_handler_retry() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, window_seconds=10.0, clock=clock)
    budget.record_call()
    assert [budget.try_spend() for _ in range(11)] == [True] * 10 + [False]


def test_spent_budget_comes_back_as_the_window_slides() -> None:
    clock = FakeClock(start=0.0)
    budget = RetryBudget(ratio=0.0, min_retries_per_second=1.0, window_seconds=10.0, clock=clock)
    for _ in range(10):
        assert budget.try_spend()
    assert not budget.try_spend()
    clock.advance(5.0)
    assert not budget.try_spend()  # the withdrawals are still inside the window
    clock.advance(5.0)
    assert budget.try_spend()  # and now they have left it


def test_refused_retries_are_not_withdrawn() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=clock)
    for _ in range(4):
        budget.record_call()
    assert [budget.try_spend() for _ in range(4)] == [True, True, False, False]
    budget.record_call()
    budget.record_call()
    assert budget.try_spend()
    snap = budget.snapshot()
    assert snap == {
        "ratio": 0.5,
        "window_seconds": 10.0,
        "calls_in_window": 6,
        "retries_in_window": 3,
        "balance": 0.0,
    }


def test_a_long_idle_gap_empties_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window_seconds=10.0, clock=clock)
    for _ in range(50):
        budget.record_call()
    clock.advance(3600.0)
    assert budget.snapshot()["calls_in_window"] == 0
    assert not budget.try_spend()


def test_budget_rejects_a_window_of_zero() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        RetryBudget(window_seconds=0.0)
