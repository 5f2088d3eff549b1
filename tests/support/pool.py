"""Driving a BoundedThreadPool from a test: workers held on gates the test releases.

Workers wait on ``threading.Event`` gates, as anyio's ``test_run_in_custom_limiter`` does, so
nothing sleeps to "give a thread time": the test decides when each call returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from handler_consul._pool import BoundedThreadPool

# The factory the ``make_pool`` fixture hands out (tests/conftest.py).
MakePool = Callable[..., BoundedThreadPool]

EVENT_BOUND = 10.0  # no gate is ever held longer than this, even if a test fails


class Gates:
    """Events the workers wait on; every one is released when the test ends."""

    def __init__(self) -> None:
        self._events: list[threading.Event] = []

    def new(self) -> threading.Event:
        event = threading.Event()
        self._events.append(event)
        return event

    def release_all(self) -> None:
        for event in self._events:
            event.set()


class Concurrency:
    """Counts calls inside ``fn`` at once, from the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.entered = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.entered += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def held(gate: threading.Event, value: object, counter: Concurrency | None = None) -> object:
    """A call that returns ``value`` once ``gate`` is set (counted by ``counter`` meanwhile)."""
    if counter is not None:
        counter.enter()
    try:
        if not gate.wait(EVENT_BOUND):
            raise AssertionError("gate never released")
        return value
    finally:
        if counter is not None:
            counter.leave()
