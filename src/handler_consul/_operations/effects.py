"""What a loop-side operation may do: the seam between an operation and the runtime.

Most operations are one request (a table row whose ``run`` executes in a worker). Some are
not: a cached read, picking an endpoint from discovered instances, one step of a watch.
Their ``serve(effects, payload)`` coroutine runs on the event loop and reaches Consul only
through :class:`Effects`, which the handler builds per envelope: every request still passes
the breaker of the envelope's datacenter, the retries, a bounded pool and the envelope's
deadline, and every failure is translated at the same boundary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from handler_consul._errors import InfraError

__all__ = ["Cached", "Effects", "StaleAnswer", "next_index", "wait_text"]

T = TypeVar("T")
P = TypeVar("P")
E = TypeVar("E", bound=InfraError)
# The client is a ConsulClient; typed Any here so this seam sits below the client's layer.
Run = Callable[[Any, P], Coroutine[Any, Any, T]]
# One blocking round: (client, (index, wait)) -> (X-Consul-Index, result).
Fetch = Callable[[Any, tuple[int, str]], Coroutine[Any, Any, tuple[int, T]]]


def next_index(previous: int, returned: int) -> int:
    """The ``index`` of the next round, from the last one sent and the X-Consul-Index
    returned, by Consul's rules: backwards resets to 0; below 1 becomes 1."""
    returned = max(returned, 0)  # an unsigned integer in Consul; anything else is garbage
    if returned < previous:
        return 0
    return max(returned, 1)


def wait_text(seconds: float) -> str:
    """Consul's duration syntax for ``wait``: whole milliseconds (``"1500ms"``)."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True, slots=True)
class Cached(Generic[T]):
    """A served answer: its value, Consul's index, where it came from and how old it is.

    ``cached`` is False when the cache was full and the answer was read from Consul for
    this call only.
    """

    value: T
    index: int
    source: Literal["consul", "cache"]
    age_seconds: float
    cached: bool = True


class StaleAnswer(Exception):
    """Nothing fresh enough: the last good answer is older than the allowed staleness, and
    Consul does not answer. ``cause`` is the watch's last error."""

    def __init__(
        self, message: str, *, age_seconds: float | None, cause: BaseException | None
    ) -> None:
        super().__init__(message)
        self.age_seconds = age_seconds
        self.cause = cause


class Effects(Protocol):
    """Per-envelope access to Consul for ``serve`` functions."""

    @property
    def datacenter(self) -> str | None:
        """The envelope's datacenter (its payload's, else the configured one)."""

    @property
    def deadline(self) -> float:
        """The envelope's deadline, on the handler's clock."""

    @property
    def state(self) -> dict[str, Any]:
        """Scratch space that lives as long as the runtime (round-robin positions, ...)."""

    def error(self, error_class: type[E], message: str) -> E:
        """An error of this envelope (its context: operation, correlation ID, datacenter,
        attempts so far), for the operation's own verdicts, such as no healthy instance."""

    @property
    def min_interval_seconds(self) -> float:
        """``long_poll.min_interval_seconds``: the least time between two blocking rounds on
        one target when the first came straight back."""

    async def call(
        self, run: Run[P, T], payload: P, *, idempotent: bool = True, name: str | None = None
    ) -> T:
        """One short request: breaker, retries, the short pool, the envelope's deadline.
        ``idempotent=False`` forbids re-sending after an unknown outcome."""

    async def long_poll(self, run: Run[P, T], payload: P, *, wait_seconds: float) -> T:
        """One blocking query in the long-poll pool, through the breaker and retries; its
        deadline covers the wait (Consul's jitter and a request timeout included)."""

    async def cached(
        self, key: Hashable, fetch: Fetch[T], first: Callable[[], Awaitable[tuple[int, T]]]
    ) -> Cached[T]:
        """``key``'s answer from the cache (see :mod:`handler_consul._cache`); ``first`` is
        the short-path read that fills it (typically ``lambda: effects.call(...)``).
        Raises InfraUnavailableError when nothing fresh enough exists."""
