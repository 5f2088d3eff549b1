"""The asyncio mode's bound on calls in flight: a semaphore bulkhead with a bounded wait.

The counterpart of :class:`~handler_consul._pool.BoundedThreadPool`, with the same seam
(``run(fn, *args, timeout=...)``, ``snapshot()``, ``close()``, ``abandon()``) and the same
errors, so the retry loop, shutdown and ``_translate`` treat both modes alike:

- at most ``max_workers`` calls run at once; a slot is held until the call's coroutine
  has really ended (its connection dropped if it was cut short), not merely until its caller
  stopped waiting;
- the wait for a slot is bounded by ``min(max_wait_seconds, timeout)``
  (:class:`PoolSaturated`), and at most ``max_queued`` calls wait;
- waiters get slots in arrival order;
- a call holding a slot is bounded by the transport: every request it makes ends by the
  envelope's deadline (the ``timeout`` here is the same instant), just as a worker thread is
  freed by its HTTP timeout;
- ``abandon()`` (shutdown, past its grace period) fails every waiter and cancels every
  running call, whose caller then gets ``make_error(True)``.

Why not ``asyncio.Semaphore``: it has no bounded queue, no snapshot of who waits, and a
waiter cancelled just as it is woken can lose a slot on older Pythons.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from handler_consul._deadlines import Deadlines
from handler_consul._pool import PoolClosed, PoolSaturated

__all__ = ["AsyncBulkhead", "CallSlots"]

T = TypeVar("T")


class CallSlots(Protocol):
    """What the retry loop, the runtime, shutdown and telemetry use of either mode's bound."""

    max_workers: int

    @property
    def busy(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Awaitable[Any]: ...

    def snapshot(self) -> dict[str, int | float | bool]: ...

    def close(self, reason: Exception | None = None) -> None: ...

    def abandon(self, make_error: Callable[[bool], BaseException]) -> int: ...


class _Running:
    """A call holding a slot: its task, and what to raise if shutdown cancels it."""

    __slots__ = ("abandoned", "cancelling", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.abandoned: BaseException | None = None


class AsyncBulkhead:
    """At most ``max_workers`` coroutine calls at once, on the event loop."""

    def __init__(self, max_workers: int, *, max_wait_seconds: float, max_queued: int) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.max_wait_seconds = max_wait_seconds
        self.max_queued = max_queued
        self.peak_busy = 0
        self._running = 0
        self._queued = 0  # waiters that have not left the queue yet
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._active: set[_Running] = set()
        self._deadlines: Deadlines | None = None  # of the loop in use
        self._closed = False

    # -- introspection ---------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Slots held: calls running, or woken with a slot and about to run."""
        return self._running

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return self._queued

    def snapshot(self) -> dict[str, int | float | bool]:
        return {
            "max_workers": self.max_workers,
            "busy": self.busy,
            "waiting": self.waiting,
            "threads": 0,  # no worker thread in this mode: calls run on the event loop
            "peak_busy": self.peak_busy,
            "max_wait_seconds": self.max_wait_seconds,
            "max_queued": self.max_queued,
            "closed": self._closed,
        }

    def live_threads(self) -> int:
        return 0

    # -- calls -----------------------------------------------------------------------------

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float) -> T:
        """Await ``fn(*args)`` once a slot is free; the slot is held until it returns.

        Cancelling the caller cancels the call (or takes it out of the queue) and frees the
        slot once the call has unwound.
        """
        if self._closed:
            raise PoolClosed("is shut down")
        if self._running < self.max_workers and not self._queued:
            self._running += 1
        else:
            await self._wait_for_slot(min(self.max_wait_seconds, timeout))
        if self._running > self.peak_busy:
            self.peak_busy = self._running
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - run() is always awaited inside a task
            raise RuntimeError("AsyncBulkhead.run() must run inside a task")
        call = _Running(task)
        self._active.add(call)
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            # Cancelled by abandon() (and by nothing else): the caller gets the shutdown error.
            if call.abandoned is not None and task.uncancel() <= call.cancelling:
                raise call.abandoned from None
            raise
        finally:
            self._active.discard(call)
            self._release()

    async def _wait_for_slot(self, wait: float) -> None:
        if self._queued >= self.max_queued:
            raise PoolSaturated(
                f"{self._queued} envelopes already wait for a slot", waited_seconds=0.0
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters
        if len(waiters) > 64 and len(waiters) > 2 * self._queued:
            # Waiters that left (timed out, cancelled) are skipped lazily; drop them in one go
            # when they are the majority, so the queue's memory follows the live waiters.
            self._waiters = waiters = collections.deque(w for w in waiters if not w.done())
        waiters.append(waiter)
        self._queued += 1
        started = loop.time()
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = Deadlines(loop)
        timer = deadlines.schedule(
            started + max(wait, 0.0), partial(_expire, waiter, started, loop)
        )
        try:
            await waiter
        except asyncio.CancelledError:
            # Woken with a slot just as the caller was cancelled: the slot passes on. Not when
            # the waiter was failed (wait expired, shutdown) in the same loop iteration: that
            # waiter never got a slot, and releasing one would admit a call too many.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()
            raise
        finally:
            deadlines.cancel(timer)
            self._queued -= 1

    def _release(self) -> None:
        """Hand the slot to the longest waiter still waiting, or free it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: _running is unchanged
                return
        self._running -= 1

    # -- shutdown --------------------------------------------------------------------------

    def close(self, reason: Exception | None = None) -> None:
        """Refuse new calls and fail waiting ones; running calls finish on their own."""
        if self._closed:
            return
        self._closed = True
        self._fail_waiters(lambda: reason or PoolClosed("is shut down"))

    def abandon(self, make_error: Callable[[bool], BaseException]) -> int:
        """Fail every waiter with ``make_error(False)`` and cancel every running call, whose
        caller gets ``make_error(True)`` once it has unwound (its connection dropped)."""
        failed = self._fail_waiters(lambda: make_error(False))
        for call in list(self._active):
            if call.abandoned is None:
                call.abandoned = make_error(True)
                call.task.cancel()
                failed += 1
        return failed

    def _fail_waiters(self, make: Callable[[], BaseException]) -> int:
        failed = 0
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(make())
                failed += 1
        self._waiters.clear()
        return failed


def _expire(waiter: asyncio.Future[None], started: float, loop: asyncio.AbstractEventLoop) -> None:
    if not waiter.done():
        waited = loop.time() - started
        waiter.set_exception(
            PoolSaturated(f"no slot free within {waited:.3g}s", waited_seconds=waited)
        )
