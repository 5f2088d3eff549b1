"""The :class:`Effects` a loop-side operation gets: one envelope's way to Consul.

Built by the handler for an envelope whose operation has a ``serve`` coroutine. Every request
it makes passes the breaker of the envelope's datacenter and the retries (:class:`Attempts`),
runs in a bounded pool, and ends by the envelope's deadline (a long poll's by its wait);
failures are translated by the same table as every other attempt's. The attempts are counted
for the response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from types import FunctionType
from typing import Any, TypeVar

from pydantic import BaseModel

from handler_consul._breaker import CircuitBreaker
from handler_consul._clock import Clock
from handler_consul._errors import (
    ContextFields,
    InfraError,
    InfraUnavailableError,
    make_context,
    redact,
)
from handler_consul._operations import Operation
from handler_consul._operations.effects import Cached, Fetch, Run, StaleAnswer
from handler_consul._retry import AttemptObserver
from handler_consul._runtime import Runtime

__all__ = ["EnvelopeEffects"]

T = TypeVar("T")
P = TypeVar("P")
E = TypeVar("E", bound=InfraError)


# (run, idempotent, name) -> its row; bounded, though the functions and names are few.
_ROWS: dict[tuple[Any, bool, str], Operation] = {}
_MAX_ROWS = 512


def _always(_payload: Any) -> bool:
    return True


def _never(_payload: Any) -> bool:
    return False


class EnvelopeEffects:
    """:class:`handler_consul._operations.effects.Effects` for one envelope."""

    __slots__ = ("_breaker", "_clock", "_fields", "_observer", "_runtime", "attempts", "deadline")

    def __init__(
        self,
        runtime: Runtime,
        breaker: CircuitBreaker,
        fields: ContextFields,
        deadline: float,
        observer: AttemptObserver | None,
        clock: Clock,
    ) -> None:
        self._runtime = runtime
        self._breaker = breaker
        self._fields = fields
        self._observer = observer
        self._clock = clock
        self.deadline = deadline
        self.attempts = 0

    @property
    def runtime(self) -> Runtime:
        """The runtime served from: background work (``runtime.long_polls.spawn``) and
        shutdown cleanups (``runtime.add_closer``) belong to it."""
        return self._runtime

    @property
    def datacenter(self) -> str | None:
        return self._fields.datacenter

    @property
    def state(self) -> dict[str, Any]:
        return self._runtime.state

    def error(self, error_class: type[E], message: str) -> E:
        context = make_context(self._fields, error_class, attempts=self.attempts)
        return error_class(redact(message, self._runtime.token), context=context)

    @property
    def min_interval_seconds(self) -> float:
        return self._runtime.settings.long_poll.min_interval_seconds

    def _operation(self, run: Run[Any, Any], idempotent: bool, name: str | None) -> Operation:
        # An ad-hoc table row: Attempts reads its name (logs, errors) and idempotency rule.
        # Rows of module-level functions are kept (a few per operation): building one per
        # call was a measurable share of a short read's loop time. Partials and closures are
        # new objects each time and would only fill the table, so they are built fresh.
        label = name or self._fields.operation or "consul"
        if type(run) is not FunctionType or run.__closure__ is not None:
            return Operation(label, BaseModel, run, _always if idempotent else _never)
        key = (run, idempotent, label)
        row = _ROWS.get(key)
        if row is None:
            if len(_ROWS) >= _MAX_ROWS:
                _ROWS.clear()
            row = _ROWS[key] = Operation(label, BaseModel, run, _always if idempotent else _never)
        return row

    async def call(
        self, run: Run[P, T], payload: P, *, idempotent: bool = True, name: str | None = None
    ) -> T:
        result, attempts = await self._runtime.attempts.run(
            self._breaker,
            self._operation(run, idempotent, name),
            payload,
            self._fields,
            self.deadline,
            self._observer,
        )
        self.attempts += attempts
        return result  # type: ignore[return-value]

    async def long_poll(self, run: Run[P, T], payload: P, *, wait_seconds: float) -> T:
        # The envelope's deadline, or the wait plus its margin if that is later: asking Consul
        # to block for five minutes under a 30 s envelope timeout would always time out.
        long_polls = self._runtime.long_polls
        deadline = max(self.deadline, self._clock() + long_polls.request_seconds(wait_seconds))
        result, attempts = await self._runtime.long_attempts.run(
            self._breaker,
            self._operation(run, True, None),
            payload,
            self._fields,
            deadline,
            self._observer,
        )
        self.attempts += attempts
        return result  # type: ignore[return-value]

    async def cached(
        self, key: Hashable, fetch: Fetch[T], first: Callable[[], Awaitable[tuple[int, T]]]
    ) -> Cached[T]:
        try:
            return await self._runtime.cache.get(key, fetch, first)
        except StaleAnswer as stale:
            cause = stale.cause
            why = f"; Consul: {type(cause).__name__}" if cause is not None else ""
            message = redact(f"{self._fields.operation}: {stale}{why}", self._runtime.token)
        # Raised outside the except block: nothing chained (the watch's error holds request
        # details), and the message names only the error's type.
        raise InfraUnavailableError(
            message,
            context=make_context(self._fields, InfraUnavailableError, attempts=self.attempts),
        )
