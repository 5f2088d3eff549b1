"""A bounded pool of worker threads with a bounded wait for a slot.

Why not ``loop.run_in_executor`` or ``anyio.to_thread``: both release their limit when the
awaiting coroutine gives up, while the thread keeps running. Under a hung Consul that lets
abandoned calls pile up until every thread is stuck. Here a slot is a real OS thread: there
are at most ``max_workers`` of them, a call holds one from the moment a worker takes it until
that worker returns, and the HTTP timeout guarantees that it does return.

Workers take queued calls straight from a queue, like an executor's, so a worker that
finishes starts the next call at once instead of waiting for the event loop to hand it one
(under load the loop thread competes for the GIL with every worker; making workers wait on it
cost a fifth of the throughput in the bench). A queued call's state (queued, running,
abandoned, done) changes under one small lock, which is what lets the loop give up on a
queued call (its wait for a slot ran out, its caller was cancelled) without a worker
starting it at the same moment. Nothing here blocks the loop: that lock is held for a few
attribute updates, and putting on a ``SimpleQueue`` never blocks.
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
# Job states; changed only under BoundedThreadPool._lock.
_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)
# Deadline kinds.
_SLOT, _RESULT = 0, 1


class PoolSaturated(Exception):
    """No slot freed up within the allowed wait, or too many envelopes are already waiting."""

    def __init__(self, message: str, *, waited_seconds: float) -> None:
        super().__init__(message)
        self.waited_seconds = waited_seconds


class PoolTimeout(Exception):
    """The call was handed to a worker but did not finish before the deadline."""


class PoolClosed(Exception):
    """The pool is shut down or was closed while the call waited.

    ``request_sent`` is True when a worker had already started the call: its request may
    have reached Consul.
    """

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class _Job(Generic[T]):
    __slots__ = ("args", "fn", "future", "loop", "queued_at", "state")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
        fn: Callable[..., T],
        args: tuple[Any, ...],
        queued_at: float,
    ) -> None:
        self.loop = loop
        self.future = future
        self.fn = fn
        self.args = args
        self.queued_at = queued_at
        self.state = _QUEUED


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
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Under _lock: calls waiting in the queue, calls running, workers blocked on the queue,
        # and abandoned calls still in the queue (a worker skips them). Stale entries count
        # against max_queued, so the queue's memory is bounded even while workers hang.
        self._queued = 0
        self._running = 0
        self._idle = 0
        self._stale = 0
        self.peak_busy = 0
        self._closed = False
        self._pending: set[_Job[Any]] = set()
        # Finished calls waiting to be settled on the loop. Workers append and wake the loop
        # only when no drain is already scheduled: one wakeup serves a burst of completions,
        # which matters because every wakeup makes the loop thread re-acquire the GIL.
        self._completed: collections.deque[tuple[_Job[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self._drain_scheduled = False
        # Deadlines (a queued call's wait for a slot, a call's result), swept by ONE loop
        # timer for the whole pool instead of a TimerHandle per call (which cost ~20% of the
        # loop's work per envelope in bench profiles). Plain tuples compare in C.
        self._deadlines: list[tuple[float, int, int, _Job[Any]]] = []
        self._seq = itertools.count()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf

    # -- introspection -------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Slots held: calls a worker has taken and not returned from yet."""
        return self._running

    @property
    def waiting(self) -> int:
        """Calls queued for a slot that no worker has taken yet."""
        return self._queued

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

    def live_threads(self) -> int:
        """Worker threads still alive (abandoned calls included)."""
        return sum(1 for thread in self._threads if thread.is_alive())

    # -- calls ---------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """Run ``fn(*args)`` in a worker; wait for a slot and then for the result.

        The wait for a slot is bounded by ``min(max_wait_seconds, timeout)``
        (:class:`PoolSaturated`) and the whole call by ``timeout`` (:class:`PoolTimeout`);
        past either the caller stops waiting, and a worker that already took the call keeps
        its slot until ``fn`` returns. A call that completed is delivered, never turned into
        a timeout. Cancelling the caller takes a still-queued call out of the queue.
        """
        if self._closed:
            raise PoolClosed("is shut down")
        loop = asyncio.get_running_loop()
        now = loop.time()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(loop, future, fn, args, now)
        start_thread = False
        with self._lock:
            if self._queued + self._stale - self._idle >= self.max_queued:
                waiting = self._queued + self._stale - self._idle
                refused = True
            else:
                refused = False
                self._queued += 1
                if self._queued > self._idle and len(self._threads) < self.max_workers:
                    start_thread = True
                    thread = threading.Thread(
                        target=self._worker, name=f"{self._name}-{len(self._threads)}", daemon=True
                    )
                    self._threads.append(thread)
        if refused:
            raise PoolSaturated(
                f"{waiting} envelopes already wait for a worker", waited_seconds=0.0
            )
        if start_thread:
            thread.start()
        self._jobs.put(job)
        self._pending.add(job)
        slot_deadline = now + max(min(self.max_wait_seconds, timeout), 0.0)
        result_deadline = now + max(timeout, 0.0)
        if slot_deadline < result_deadline:
            self._expire_at(loop, slot_deadline, _SLOT, job)
        self._expire_at(loop, result_deadline, _RESULT, job)
        try:
            return await future
        except asyncio.CancelledError:
            self._give_up(job)
            raise
        finally:
            self._pending.discard(job)

    def _give_up(self, job: _Job[Any]) -> bool:
        """Take a still-queued call out of the queue; False if a worker already has it."""
        with self._lock:
            if job.state != _QUEUED:
                return False
            job.state = _ABANDONED
            self._queued -= 1
            self._stale += 1
        _release_refs(job)
        return True

    # -- workers -------------------------------------------------------------------------

    def _worker(self) -> None:
        lock = self._lock
        with lock:
            self._idle += 1
        while True:
            job = self._jobs.get()
            with lock:
                self._idle -= 1
                if job is _STOP:
                    return
                if job.state != _QUEUED:
                    self._stale -= 1
                    self._idle += 1
                    continue  # its caller gave up while it waited
                job.state = _RUNNING
                self._queued -= 1
                self._running += 1
                self.peak_busy = max(self.peak_busy, self._running)
            try:
                result = job.fn(*job.args)
            except BaseException as exc:  # delivered to the caller, whatever it is
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            with lock:
                job.state = _DONE
                self._running -= 1
                # Idle before the result is posted: a caller that submits the next call as
                # soon as it has this result must find this worker, not start another.
                self._idle += 1
            self._post(job, *outcome)

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
            job, result, exc = completed.popleft()
            future = job.future
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    # -- deadlines -----------------------------------------------------------------------

    def _expire_at(
        self, loop: asyncio.AbstractEventLoop, when: float, kind: int, job: _Job[Any]
    ) -> None:
        deadlines = self._deadlines
        heapq.heappush(deadlines, (when, next(self._seq), kind, job))
        if len(deadlines) > 64 and len(deadlines) > 4 * len(self._pending):
            # Most entries belong to calls that finished: drop them (and the results they
            # keep alive) rather than wait for their deadlines. Amortised O(1) per call.
            self._deadlines = deadlines = [d for d in deadlines if not d[3].future.done()]
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
        while deadlines and (deadlines[0][0] <= now or deadlines[0][3].future.done()):
            _, _, kind, job = heapq.heappop(deadlines)
            if not job.future.done():
                self._expire(job, kind, now)
        if deadlines:
            self._sweep_at = deadlines[0][0]
            self._sweep_handle = loop.call_at(self._sweep_at, self._sweep, loop)

    def _expire(self, job: _Job[Any], kind: int, now: float) -> None:
        with self._lock:
            state = job.state
            if state == _QUEUED:
                job.state = _ABANDONED
                self._queued -= 1
                self._stale += 1
        if state == _QUEUED:
            _release_refs(job)
            waited = now - job.queued_at
            job.future.set_exception(
                PoolSaturated(f"no worker free within {waited:.3g}s", waited_seconds=waited)
            )
        elif state == _RUNNING and kind == _RESULT:
            job.future.set_exception(PoolTimeout(f"no result within {now - job.queued_at:.3g}s"))
        # _DONE: the result is on its way to the loop and will be delivered (never a timeout).

    # -- shutdown ------------------------------------------------------------------------

    def close(self, reason: Exception | None = None) -> None:
        """Refuse new calls, fail queued ones, and let workers exit once their call returns.

        Never joins a thread: a worker stuck in a request returns when its timeout fires.
        """
        if self._closed:
            return
        self._closed = True
        for job in list(self._pending):
            if self._give_up(job) and not job.future.done():
                job.future.set_exception(reason or PoolClosed("is shut down"))
        for _ in self._threads:
            self._jobs.put(_STOP)
        if self._sweep_handle is not None and not self._pending:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def abandon(self, make_error: Callable[[bool], BaseException]) -> int:
        """Fail every caller still waiting (for a slot or a result); running calls keep their
        slots until they return. Used by shutdown once the grace period is over.

        ``make_error(started)`` is told whether a worker had already started the call.
        """
        failed = 0
        for job in list(self._pending):
            started = not self._give_up(job)
            if not job.future.done():
                job.future.set_exception(make_error(started))
                failed += 1
        return failed


def _release_refs(job: _Job[Any]) -> None:
    """An abandoned call stays in the queue until a worker skips it: keep it small."""
    job.fn = _noop
    job.args = ()


def _noop(*_: Any) -> None:
    return None
