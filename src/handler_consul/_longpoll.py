"""Long polls: Consul's blocking queries, in threads and on a transport of their own.

A blocking query (``?index=N&wait=5m``) holds its request open until the data changes or the
wait ends. In the pool of short operations a handful of them would take every slot, so they
run in a second :class:`BoundedThreadPool` of ``long_poll.max_watches`` threads, over a
transport whose timeout covers the wait (Consul adds up to wait/16 of jitter), with the same
token header, TLS and response cap. Short operations never wait behind them.

:class:`BlockingQuery` follows one query across rounds with Consul's index rules:

- the index returned becomes the next request's ``index``;
- an index that goes backwards (a snapshot restore, a new cluster) resets to 0, so the next
  round returns at once with the current state instead of blocking on a number that will
  not come back;
- an index below 1 is treated as 1, since ``index=0`` never blocks and would spin;
- after a failed round the next one reads afresh (``index=0``): the agent that answers may
  be a restarted one whose index is behind the one we hold;
- a round that returns at once is followed by the next only after
  ``long_poll.min_interval_seconds``: back-to-back returns are rate-limited.

:class:`LongPolls` also owns the handler's background work (cache upkeep, lease renewal,
heartbeats): :meth:`LongPolls.spawn` tasks are cancelled and awaited by ``shutdown()``, so
nothing outlives the runtime that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from handler_consul._client import ConsulClient
from handler_consul._clock import Clock
from handler_consul._operations.effects import next_index, wait_text
from handler_consul._operations.settle import run_to_completion
from handler_consul._pool import BoundedThreadPool
from handler_consul._settings import LongPollSettings
from handler_consul._transport import InFlight

__all__ = ["MAX_WAIT_SECONDS", "BlockingQuery", "LongPolls", "next_index", "wait_text"]

T = TypeVar("T")
P = TypeVar("P")

# Consul caps a blocking query's wait at ten minutes.
MAX_WAIT_SECONDS = 600.0


def _call(
    client: ConsulClient,
    run: Callable[[ConsulClient, Any], Coroutine[Any, Any, T]],
    payload: Any,
    deadline: float,
    call: InFlight,
) -> T:
    """What a long-poll worker runs: one request, bounded by ``deadline`` (monotonic), that
    ``call`` can end early."""
    client.http.set_request_deadline(deadline)
    client.http.set_call(call)
    try:
        return run_to_completion(run(client, payload))
    finally:
        client.http.set_call(None)


class LongPolls:
    """The long-poll pool and client, and the runtime's background tasks."""

    def __init__(
        self,
        client: ConsulClient,
        settings: LongPollSettings,
        *,
        request_timeout: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        # The margin a blocking query is given beyond its wait: Consul's jitter (wait/16)
        # plus one ordinary request timeout for the answer to arrive.
        self._margin = request_timeout
        self._clock = clock
        self.pool = BoundedThreadPool(
            settings.max_watches,
            # A watch round that finds every slot taken waits for one no longer than a short
            # request would take; callers with a deadline give up sooner.
            max_wait_seconds=request_timeout,
            max_queued=settings.max_watches * 4,
            name="handler-consul-watch",
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"LongPolls(max_watches={self.settings.max_watches}, tasks={len(self._tasks)})"

    def request_seconds(self, wait_seconds: float) -> float:
        """How long a blocking query of ``wait_seconds`` may take before it is abandoned."""
        return wait_seconds + wait_seconds / 16 + self._margin

    async def query(
        self,
        run: Callable[[ConsulClient, P], Coroutine[Any, Any, T]],
        payload: P,
        *,
        wait_seconds: float,
        deadline: float | None = None,
    ) -> T:
        """Run ``run(client, payload)`` in a long-poll thread; the transport's errors are
        raised untranslated (the caller's boundary translates them).

        ``deadline`` (monotonic) caps the whole call, queueing included; by default it is
        the wait plus its margin.
        """
        seconds = self.request_seconds(wait_seconds)
        now = time.monotonic()
        end = now + seconds if deadline is None else min(deadline, now + seconds)
        call = InFlight()
        try:
            return await self.pool.run(
                _call, self.client, run, payload, end, call, timeout=max(end - now, 0.0)
            )
        except asyncio.CancelledError:
            # The caller gave up (a consumer's wait_for, a cancelled lock wait): end the
            # query now, or it would hold its thread for the rest of its wait.
            call.abort()
            raise

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start background work owned by this runtime: cancelled and awaited on close."""
        if self.closed:
            coro.close()
            raise RuntimeError("the runtime is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def tasks(self) -> int:
        return len(self._tasks)

    def snapshot(self) -> dict[str, Any]:
        return {**self.pool.snapshot(), "background_tasks": len(self._tasks)}

    def close(self) -> None:
        """Stop taking work, cancel background tasks, end the blocking queries in flight
        (their sockets are shut down, so their threads return now rather than at the end of
        their wait) and close idle connections. Never joins a thread. :meth:`aclose` also
        waits for the cancelled tasks to finish.
        """
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        self.pool.close()
        self.client.http.close()
        self.client.http.abort_in_flight()

    async def aclose(self) -> None:
        """:meth:`close`, then wait (briefly) for the cancelled tasks to unwind."""
        tasks = list(self._tasks)
        self.close()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), timeout=self._margin
                )


class BlockingQuery(Generic[T]):
    """One query followed across blocking rounds, by Consul's index rules.

    ``fetch(client, (index, wait))`` makes one request with ``?index=&wait=`` and returns
    ``(x_consul_index, result)``; it runs in the long-poll pool.
    """

    def __init__(
        self,
        long_polls: LongPolls,
        fetch: Callable[[ConsulClient, tuple[int, str]], Coroutine[Any, Any, tuple[int, T]]],
        *,
        wait_seconds: float | None = None,
        index: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._long_polls = long_polls
        self._fetch = fetch
        settings = long_polls.settings
        self.wait_seconds = min(wait_seconds or settings.wait_seconds, MAX_WAIT_SECONDS)
        self.min_interval = settings.min_interval_seconds
        self.index = max(index, 0)
        self._clock = clock
        self._last_start: float | None = None
        self._last_quick = False

    def reset(self) -> None:
        """Read the current state next round (``index=0``, answered at once).

        For after a failed round: the agent may have restarted with an older index, and a
        round sent with the old one would block for its whole wait on a number the new
        agent will not reach for a while.
        """
        self.index = 0

    async def next(
        self, *, wait_seconds: float | None = None, deadline: float | None = None
    ) -> tuple[int, T, bool]:
        """One round: ``(index, result, changed)``. ``changed`` is whether the index moved
        (the first round, and any reset, count as changed). ``wait_seconds`` overrides the
        wait for this round; ``deadline`` (monotonic) caps it."""
        if self._last_quick and self._last_start is not None:
            # Rate limit: the previous round came straight back.
            delay = self._last_start + self.min_interval - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
        started = self._clock()
        self._last_start = started
        sent = self.index
        wait = min(wait_seconds or self.wait_seconds, MAX_WAIT_SECONDS)
        returned, result = await self._long_polls.query(
            self._fetch, (sent, wait_text(wait)), wait_seconds=wait, deadline=deadline
        )
        self._last_quick = self._clock() - started < self.min_interval
        self.index = next_index(sent, returned)
        changed = sent == 0 or self.index != sent
        return self.index, result, changed
