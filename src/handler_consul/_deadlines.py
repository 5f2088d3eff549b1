"""Many deadlines on one event-loop timer: what the asyncio mode uses instead of a
``TimerHandle`` per request and per waiter.

On the default loop every ``call_at`` builds a Python ``TimerHandle`` whose heap
comparisons run in Python; at one request deadline and one slot wait per envelope that was
about a fifth of the loop's work in a profile (the same finding that made the thread pool
sweep its deadlines with one timer). Here an entry is a three-item list compared in C, a
cancelled entry is skipped lazily, and the heap is compacted when dead entries are most of
it, so its memory follows the live deadlines.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

__all__ = ["Deadlines", "Entry"]

# [when (loop time), sequence (ties, in arrival order), callback or None once cancelled/fired]
Entry = list[object]

# A loop's timer may fire a little before its time (asyncio allows its clock resolution,
# uvloop counts whole milliseconds): a deadline that close is due, rather than re-armed in a
# spin until the clock catches up.
_EARLY = 0.001


class Deadlines:
    """Deadlines of one event loop: ``schedule(when, fire)`` calls ``fire()`` at ``when``
    unless ``cancel(entry)`` came first. Not thread-safe: used on its loop only."""

    __slots__ = ("_at", "_handle", "_heap", "_live", "_seq", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self._live = 0
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def schedule(self, when: float, fire: Callable[[], object]) -> Entry:
        entry: Entry = [when, next(self._seq), fire]
        heap = self._heap
        heapq.heappush(heap, entry)
        self._live += 1
        if len(heap) > 64 and len(heap) > 4 * self._live:
            self._heap = heap = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
        if when < self._at:
            self._arm(when)
        return entry

    def cancel(self, entry: Entry) -> None:
        if entry[2] is not None:
            entry[2] = None
            self._live -= 1

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        self._at = math.inf
        heap = self._heap
        now = self.loop.time() + _EARLY
        while heap and (heap[0][2] is None or heap[0][0] <= now):  # type: ignore[operator]
            entry = heapq.heappop(heap)
            fire = entry[2]
            if fire is not None:
                entry[2] = None
                self._live -= 1
                fire()  # type: ignore[operator]
        if heap:
            self._arm(heap[0][0])  # type: ignore[arg-type]
