"""A clock, a sleep and an RNG that tests control, so nothing waits for real."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import cycle


class FakeClock:
    """A monotonic clock that moves only when told; ``sleep`` advances it and returns."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


class FixedRng:
    """Returns the given values in turn, forever: a deterministic ``random.random``."""

    def __init__(self, values: Iterable[float]) -> None:
        self._values = cycle(values)

    def __call__(self) -> float:
        return next(self._values)


class TransitionLog:
    """Records ``on_transition`` calls as ``(name, old, new)`` tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, name: str, old: str, new: str) -> None:
        self.events.append((name, str(old), str(new)))
