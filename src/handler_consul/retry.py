"""The pieces of retry policy: backoff with full jitter, a retry budget, the deadline check.

They are pure, so the async loop that uses them (in the handler) stays short, and tests drive
them with a fake clock and a fixed RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .clock import Clock, monotonic

__all__ = ["RetryBudget", "RetryPolicy", "sleep_budget"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them."""

    max_attempts: int = 3  # total, the first one included
    initial_delay_seconds: float = 0.1
    max_delay_seconds: float = 5.0
    exponential_base: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 10:
            raise ValueError("max_attempts must be between 1 and 10")
        if self.initial_delay_seconds < 0 or self.max_delay_seconds < 0:
            raise ValueError("delays must not be negative")
        if self.exponential_base < 1:
            raise ValueError("exponential_base must be at least 1")

    def backoff_seconds(self, retry_number: int, rng: Callable[[], float]) -> float:
        """The wait before retry ``retry_number`` (1 = the first retry): AWS's full jitter.

        Uniform over ``[0, min(max_delay, initial * base ** (retry_number - 1)))``, so that
        clients failing together do not retry together. ``rng`` returns floats in ``[0, 1)``.
        """
        if retry_number < 1:
            raise ValueError("retry_number starts at 1")
        try:
            ceiling = self.initial_delay_seconds * self.exponential_base ** (retry_number - 1)
        except OverflowError:
            ceiling = self.max_delay_seconds
        return rng() * min(self.max_delay_seconds, ceiling)


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

    def _balance(self) -> float:
        return self._reserve + self._ratio * self._total_calls - self._total_retries

    def _epoch_now(self) -> int:
        return int(self._clock() // self._width)

    def _advance(self) -> int:
        """Empty the buckets the window has slid past; return the current bucket's index."""
        epoch = self._epoch_now()
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
