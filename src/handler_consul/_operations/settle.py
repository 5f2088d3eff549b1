"""One operation body for both I/O modes.

python-consul2's endpoint classes return whatever the HTTP client's method returns: a value
over a blocking transport (a worker thread), an awaitable over an asyncio one. Operations
are written once as ``async def`` and wrap every client call in :func:`settle`:

    index, data = await settle(client.kv.get(key))

Over the blocking transport the coroutine never suspends, so a worker thread drives it to
completion with :func:`run_to_completion` (one ``send``, no event loop); over an asyncio
transport it is simply awaited.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any, TypeVar

__all__ = ["Ready", "run_to_completion", "settle"]

T = TypeVar("T")


class Ready(Awaitable[T]):
    """An awaitable that is already done: awaiting it gives ``value`` without suspending."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self.value
        yield  # pragma: no cover - makes this a generator; never reached


def settle(value: Any) -> Awaitable[Any]:
    """``value`` itself when it is awaitable (asyncio transport), else a :class:`Ready`."""
    if type(value) is CoroutineType or inspect.isawaitable(value):  # the first: the usual case
        return value
    return Ready(value)


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (blocking transport) in the calling thread."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("an operation suspended under the blocking transport")
