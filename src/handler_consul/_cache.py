"""Answers kept in memory and fresh by blocking queries: cached discovery and kv reads.

An entry is created by the first read of a query (made by the caller through the short path,
breaker and retries included), then a background task follows the query with blocking rounds
in the long-poll pool (:class:`._longpoll.BlockingQuery`), replacing the answer whenever
Consul's index moves. A read is then served from memory:

- ``source: "consul"``, ``age_seconds: 0.0`` while the watch is in sync with Consul (its last
  round succeeded and the next one is waiting on Consul: any change would have ended it);
- ``source: "cache"`` with the seconds since it was last known in sync, while the watch is
  failing (Consul unreachable), up to ``cache.max_staleness_seconds``;
- past that, :class:`StaleAnswer`: the caller falls back or raises a typed error.

A query nobody reads for ``cache.idle_seconds`` is dropped and its watch stopped (each round
asks Consul to block no longer than the time left before the entry would go idle, so a watch
ends on time without abandoning a thread). At most ``cache.max_entries`` queries are
watched; past that a read goes to Consul each time (``cached`` is then ``False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from handler_consul._clock import Clock
from handler_consul._longpoll import BlockingQuery, LongPolls
from handler_consul._operations.effects import Cached, Fetch, StaleAnswer
from handler_consul._pool import PoolSaturated, PoolTimeout
from handler_consul._settings import CacheSettings
from handler_consul._transport import TransportTimeout

__all__ = ["Cached", "QueryCache", "StaleAnswer"]

T = TypeVar("T")

# A failing watch retries after this, doubling up to the cap: quick to notice the agent is
# back (its answer is then at most this late), cheap while it stays away.
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
# A round never asks Consul to block for less than this (a shorter wait only spins).
_MIN_ROUND_SECONDS = 1.0


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a first read's failure as seen: its callers re-raise it, and if they were all
    cancelled nobody else should log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TransportTimeout | PoolTimeout)


class _Entry(Generic[T]):
    __slots__ = (
        "failing_since",
        "has_value",
        "index",
        "last_error",
        "last_used",
        "query",
        "starved",
        "synced_at",
        "task",
        "value",
    )

    def __init__(self, query: BlockingQuery[T], now: float) -> None:
        self.query = query
        self.value: T | None = None
        self.has_value = False
        self.index = 0
        self.synced_at = now
        self.failing_since: float | None = None
        self.last_error: BaseException | None = None
        self.last_used = now
        self.task: asyncio.Task[None] | None = None
        # The watch could not get a long-poll thread last time it tried.
        self.starved = False


class QueryCache:
    """The cache of one runtime; :meth:`close` (via the long polls) stops every watch."""

    def __init__(
        self, long_polls: LongPolls, settings: CacheSettings, *, clock: Clock = time.monotonic
    ) -> None:
        self._long_polls = long_polls
        self.settings = settings
        self._clock = clock
        self._entries: dict[Hashable, _Entry[Any]] = {}
        self._first: dict[Hashable, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self,
        key: Hashable,
        fetch: Fetch[T],
        first: Callable[[], Awaitable[tuple[int, T]]],
    ) -> Cached[T]:
        """The answer to ``key``: from memory when watched, else by ``first()`` (the caller's
        short-path read, whose errors propagate as they are) and watched from then on."""
        now = self._clock()
        self._sweep(now)
        entry = self._entries.get(key)
        if entry is not None and entry.has_value:
            entry.last_used = now
            if entry.starved:
                return await self._read_through(entry, first, now)
            return self._serve(entry, now)
        pending = self._first.get(key)
        if pending is None:
            # First reads in flight count against the bound too, or a burst of new keys
            # would each start a watch.
            if len(self._entries) + len(self._first) >= self.settings.max_entries:
                index, value = await first()
                return Cached(value, index, "consul", 0.0, cached=False)
            # The first read runs in a task of its own that every caller of this key awaits
            # through a shield: one caller's cancellation never cancels the others' read.
            pending = self._long_polls.spawn(self._fill(key, fetch, first), name="cache fill")
            pending.add_done_callback(_retrieve)
            self._first[key] = pending
        index, value = await asyncio.shield(pending)
        return Cached(value, index, "consul", 0.0)

    async def _fill(
        self,
        key: Hashable,
        fetch: Fetch[T],
        first: Callable[[], Awaitable[tuple[int, T]]],
    ) -> tuple[int, T]:
        try:
            index, value = await first()
        finally:
            self._first.pop(key, None)
        self._watch(key, fetch, index, value)
        return index, value

    async def _read_through(
        self, entry: _Entry[T], first: Callable[[], Awaitable[tuple[int, T]]], now: float
    ) -> Cached[T]:
        """The watch cannot get a long-poll thread (all taken): that is no news about
        Consul, so the answer is read by the caller's short path and kept, rather than
        served as in sync or called stale. A failing read leaves the usual staleness rule."""
        try:
            index, value = await first()
        except Exception:
            if entry.failing_since is None:
                raise
            return self._serve(entry, now)
        entry.value, entry.index = value, index
        entry.synced_at = self._clock()
        entry.failing_since, entry.last_error = None, None
        return Cached(value, index, "consul", 0.0)

    def _serve(self, entry: _Entry[T], now: float) -> Cached[T]:
        value: T = entry.value  # type: ignore[assignment]  # has_value was checked
        if entry.failing_since is None:
            return Cached(value, entry.index, "consul", 0.0)
        age = max(now - entry.synced_at, 0.0)
        if age > self.settings.max_staleness_seconds:
            raise StaleAnswer(
                f"the last good answer is {age:.1f}s old, more than "
                f"cache.max_staleness_seconds ({self.settings.max_staleness_seconds:g})",
                age_seconds=age,
                cause=entry.last_error,
            )
        return Cached(value, entry.index, "cache", round(age, 3))

    def _watch(self, key: Hashable, fetch: Fetch[T], index: int, value: T) -> None:
        if self._long_polls.closed:
            return
        now = self._clock()
        query: BlockingQuery[T] = BlockingQuery(self._long_polls, fetch, index=index)
        entry: _Entry[T] = _Entry(query, now)
        entry.value, entry.has_value, entry.index = value, True, index
        self._entries[key] = entry
        entry.task = self._long_polls.spawn(self._upkeep(key, entry), name=f"cache {key!r}")

    async def _upkeep(self, key: Hashable, entry: _Entry[T]) -> None:
        retry = _RETRY_FIRST
        try:
            while True:
                now = self._clock()
                idle_left = entry.last_used + self.settings.idle_seconds - now
                if idle_left <= 0:
                    return
                wait = max(min(entry.query.wait_seconds, idle_left), _MIN_ROUND_SECONDS)
                round_started = self._clock()
                try:
                    index, value, changed = await entry.query.next(wait_seconds=wait)
                except asyncio.CancelledError:
                    raise
                except PoolSaturated:
                    # Every long-poll thread is taken: Consul may be fine. Readers read
                    # through meanwhile (see _read_through); the watch tries again.
                    entry.starved = True
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue
                except Exception as exc:
                    if entry.failing_since is None:
                        failed_at = self._clock()
                        entry.failing_since = failed_at
                        # In sync until the round broke, when it broke at once (refused,
                        # reset: an agent going down). A round that timed out may have hung
                        # on a dead link since it started: only its start is known good.
                        entry.synced_at = round_started if _timed_out(exc) else failed_at
                    entry.last_error = exc
                    entry.query.reset()
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue
                retry = _RETRY_FIRST
                entry.starved = False
                if changed:
                    entry.value, entry.index = value, index
                entry.failing_since, entry.last_error = None, None
                entry.synced_at = self._clock()
        finally:
            if self._entries.get(key) is entry:
                del self._entries[key]

    def _sweep(self, now: float) -> None:
        """Drop entries nobody asked for within the idle time (their watch may be waiting on
        Consul for a while yet; cancelling it frees the entry now)."""
        idle = self.settings.idle_seconds
        for key, entry in list(self._entries.items()):
            if now - entry.last_used > idle:
                del self._entries[key]
                if entry.task is not None:
                    entry.task.cancel()

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        failing = sum(1 for e in self._entries.values() if e.failing_since is not None)
        oldest = max(
            (now - e.synced_at for e in self._entries.values() if e.failing_since is not None),
            default=0.0,
        )
        return {
            "entries": len(self._entries),
            "max_entries": self.settings.max_entries,
            "failing": failing,
            "oldest_unsynced_seconds": round(oldest, 3),
        }

    def close(self) -> None:
        """Forget every entry; their tasks are the long polls' and are cancelled with them."""
        for entry in self._entries.values():
            if entry.task is not None:
                with contextlib.suppress(RuntimeError):
                    entry.task.cancel()
        self._entries.clear()
