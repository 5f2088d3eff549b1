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
from handler_consul._settings import CacheSettings

__all__ = ["Cached", "QueryCache", "StaleAnswer"]

T = TypeVar("T")

# A failing watch retries after this, doubling up to the cap: quick to notice the agent is
# back (its answer is then at most this late), cheap while it stays away.
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
# A round never asks Consul to block for less than this (a shorter wait only spins).
_MIN_ROUND_SECONDS = 1.0


class _Entry(Generic[T]):
    __slots__ = (
        "failing_since",
        "has_value",
        "index",
        "last_error",
        "last_used",
        "query",
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


class QueryCache:
    """The cache of one runtime; :meth:`close` (via the long polls) stops every watch."""

    def __init__(
        self, long_polls: LongPolls, settings: CacheSettings, *, clock: Clock = time.monotonic
    ) -> None:
        self._long_polls = long_polls
        self.settings = settings
        self._clock = clock
        self._entries: dict[Hashable, _Entry[Any]] = {}
        self._first: dict[Hashable, asyncio.Future[Any]] = {}

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
            return self._serve(entry, now)
        if entry is None and len(self._entries) >= self.settings.max_entries:
            index, value = await first()
            return Cached(value, index, "consul", 0.0, cached=False)
        pending = self._first.get(key)
        if pending is not None:
            # Another caller is making the first read of this key: share its answer.
            index, value = await asyncio.shield(pending)
            return Cached(value, index, "consul", 0.0)
        future: asyncio.Future[tuple[int, T]] = asyncio.get_running_loop().create_future()
        self._first[key] = future
        try:
            index, value = await first()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: sharers re-raise it; nobody else must log it
            raise
        else:
            future.set_result((index, value))
        finally:
            del self._first[key]
        self._watch(key, fetch, index, value)
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
                try:
                    index, value, changed = await entry.query.next(wait_seconds=wait)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if entry.failing_since is None:
                        entry.failing_since = self._clock()
                    entry.last_error = exc
                    entry.query.reset()
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue
                retry = _RETRY_FIRST
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
