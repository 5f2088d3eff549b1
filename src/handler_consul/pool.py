"""A bounded pool of worker threads with a bounded wait for a slot.

Why not ``loop.run_in_executor`` or ``anyio.to_thread``: both release their limit when the
awaiting coroutine gives up, while the thread keeps running. Under a hung Consul that lets
abandoned calls pile up until every thread is stuck. Here a slot is a real OS thread: it is
taken when a call is handed to a worker and given back only when that worker returns. The
HTTP timeout guarantees that it does return.

All slot bookkeeping happens on the event-loop thread (workers report back with
``call_soon_threadsafe``), so there are no locks on the asyncio side and nothing here blocks
the loop: starting a thread and putting on a ``SimpleQueue`` do not block.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import math
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["BoundedThreadPool", "PoolClosed", "PoolSaturated", "PoolTimeout"]

T = TypeVar("T")

_STOP = object()


class PoolSaturated(Exception):
    """No slot freed up within the allowed wait, or too many envelopes are already waiting."""

    def __init__(self, message: str, *, waited_seconds: float) -> None:
        super().__init__(message)
        self.waited_seconds = waited_seconds


class PoolTimeout(Exception):
    """The call was handed to a worker but did not finish before the deadline."""


class PoolClosed(Exception):
    """The pool is shut down or was closed while the call waited."""


class _Job(Generic[T]):
    __slots__ = ("args", "fn", "future", "loop", "pool")

    def __init__(
        self,
        pool: BoundedThreadPool,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
        fn: Callable[..., T],
        args: tuple[Any, ...],
    ) -> None:
        self.pool = pool
        self.loop = loop
        self.future = future
        self.fn = fn
        self.args = args


class BoundedThreadPool:
    """At most ``max_workers`` calls run at once, each in its own long-lived thread."""

    def __init__(
        self,
        max_workers: int,
        *,
        max_wait_seconds: float,
        max_queued: int,
        name: str = "handler-consul",
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.max_wait_seconds = max_wait_seconds
        self.max_queued = max_queued
        self._name = name
        self._free = max_workers
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle_threads = 0
        self._closed = False
        self._pending: set[asyncio.Future[Any]] = set()
        # Finished calls waiting to be settled on the loop. Workers append and wake the loop
        # only when no drain is already scheduled: one wakeup serves a burst of completions,
        # which matters because every wakeup makes the loop thread re-acquire the GIL.
        self._completed: collections.deque[tuple[_Job[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self._drain_scheduled = False
        # Deadlines of waiters and running calls, swept by ONE loop timer for the whole pool
        # instead of a TimerHandle per call (which cost ~20% of the loop's work per envelope
        # in bench profiles). Plain tuples compare in C.
        self._deadlines: list[tuple[float, int, asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self.peak_busy = 0

    # -- introspection -------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Slots held: calls handed to a worker that has not returned yet."""
        return self.max_workers - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def threads(self) -> int:
        """Worker threads started (never more than max_workers)."""
        return len(self._threads)

    def snapshot(self) -> dict[str, int | float | bool]:
        return {
            "max_workers": self.max_workers,
            "busy": self.busy,
            "waiting": self.waiting,
            "threads": self.threads,
            "peak_busy": self.peak_busy,
            "max_wait_seconds": self.max_wait_seconds,
            "max_queued": self.max_queued,
            "closed": self._closed,
        }

    # -- slots ---------------------------------------------------------------------------

    async def _acquire(self, wait_seconds: float) -> None:
        if self._closed:
            raise PoolClosed("is shut down")
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        if len(self._waiters) >= self.max_queued:
            raise PoolSaturated(
                f"{len(self._waiters)} envelopes already wait for a worker", waited_seconds=0.0
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        start = loop.time()
        self._expire_at(loop, start + max(wait_seconds, 0.0), waiter)
        try:
            granted: Any = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                if waiter.result() is not _TIMED_OUT:
                    # Granted a slot in the same instant we were cancelled: hand it on.
                    self._release()
            else:
                _discard(self._waiters, waiter)
            raise
        if granted is _TIMED_OUT:
            _discard(self._waiters, waiter)
            raise PoolSaturated(
                f"no worker free within {wait_seconds:g}s", waited_seconds=loop.time() - start
            )

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    # -- calls ---------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """Run ``fn(*args)`` in a worker; wait for a slot and then for the result.

        The wait for a slot is bounded by ``min(max_wait_seconds, timeout)`` and the wait for
        the result by what is left of ``timeout``. Past it, :class:`PoolTimeout` is raised and
        the worker keeps its slot until ``fn`` returns. A result that arrived is delivered
        even if the deadline passes in the same loop iteration.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._acquire(min(self.max_wait_seconds, timeout))
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(self, loop, future, fn, args)
        try:
            self._dispatch(job)
        except BaseException:
            self._release()
            raise
        self._expire_at(loop, start + timeout, future)
        self._pending.add(future)
        try:
            result = await future
        finally:
            self._pending.discard(future)
        if result is _TIMED_OUT:
            raise PoolTimeout(f"no result within {timeout:g}s")
        return result

    # -- deadlines -----------------------------------------------------------------------

    def _expire_at(
        self, loop: asyncio.AbstractEventLoop, when: float, future: asyncio.Future[Any]
    ) -> None:
        """Resolve ``future`` with the timed-out marker at ``when`` unless it is done by then."""
        deadlines = self._deadlines
        heapq.heappush(deadlines, (when, next(self._seq), future))
        if len(deadlines) > 64 and len(deadlines) > 2 * (len(self._pending) + len(self._waiters)):
            # Most entries belong to calls that finished: drop them (and the results they
            # keep alive) rather than wait for their deadlines. Amortised O(1) per call.
            self._deadlines = deadlines = [d for d in deadlines if not d[2].done()]
            heapq.heapify(deadlines)
        if when < self._sweep_at:
            if self._sweep_handle is not None:
                self._sweep_handle.cancel()
            self._sweep_at = when
            self._sweep_handle = loop.call_at(when, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_handle = None
        self._sweep_at = math.inf
        deadlines = self._deadlines
        now = loop.time()
        while deadlines and (deadlines[0][0] <= now or deadlines[0][2].done()):
            _expire(heapq.heappop(deadlines)[2])
        if deadlines:
            self._sweep_at = deadlines[0][0]
            self._sweep_handle = loop.call_at(self._sweep_at, self._sweep, loop)

    def _dispatch(self, job: _Job[Any]) -> None:
        busy = self.max_workers - self._free
        self.peak_busy = max(self.peak_busy, busy)
        # Threads are started lazily; one is started only when no started thread is idle.
        if self._idle_threads == 0 and len(self._threads) < self.max_workers:
            thread = threading.Thread(
                target=self._worker, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        else:
            self._idle_threads -= 1
        self._jobs.put(job)

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            try:
                result = job.fn(*job.args)
            except BaseException as exc:  # delivered to the caller, whatever it is
                self._post(job, None, exc)
            else:
                self._post(job, result, None)

    def _post(self, job: _Job[Any], result: Any, exc: BaseException | None) -> None:
        self._completed.append((job, result, exc))
        if self._drain_scheduled:
            return
        self._drain_scheduled = True
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Reset before popping: a worker that appends after this line schedules a new drain.
        self._drain_scheduled = False
        completed = self._completed
        while completed:
            self._finish(*completed.popleft())

    def _finish(self, job: _Job[Any], result: Any, exc: BaseException | None) -> None:
        self._idle_threads += 1
        self._release()
        future = job.future
        if not future.done():
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    # -- shutdown ------------------------------------------------------------------------

    def close(self, reason: Exception | None = None) -> None:
        """Refuse new calls, fail waiters, and let workers exit once their call returns.

        Never joins a thread: a worker stuck in a request returns when its timeout fires.
        """
        if self._closed:
            return
        self._closed = True
        if self._sweep_handle is not None and not self._pending:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(reason or PoolClosed("is shut down"))
        for _ in self._threads:
            self._jobs.put(_STOP)

    def abandon(self, make_error: Callable[[], BaseException]) -> int:
        """Fail every caller still waiting for a result; their workers keep their slots.

        Used by shutdown once the grace period is over. Returns how many were failed.
        """
        failed = 0
        for future in list(self._pending):
            if not future.done():
                future.set_exception(make_error())
                failed += 1
        return failed

    def live_threads(self) -> int:
        """Worker threads still alive (abandoned calls included)."""
        return sum(1 for thread in self._threads if thread.is_alive())


class _TimedOut:
    __slots__ = ()


_TIMED_OUT: Any = _TimedOut()


def _discard(waiters: collections.deque[asyncio.Future[Any]], waiter: asyncio.Future[Any]) -> None:
    with contextlib.suppress(ValueError):
        waiters.remove(waiter)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(_TIMED_OUT)
