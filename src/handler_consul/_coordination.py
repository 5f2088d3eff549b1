"""The Python side of KV coordination: ``kv_update``, ``watch`` and ``lock()``'s arguments,
and the way locks, updates and watches reach Consul (:class:`Calls`).

Every request they make is an operation of the dispatch table run by the handler itself:
validated by the same models, through the same breaker, retries, pools and error
translation as ``execute()``. What they add is the loop around it:

- ``kv_update`` reads, applies the caller's function and writes back with a CAS on the index
  it read, until a write lands or the attempts run out (:class:`InfraConflictError`);
- ``watch`` follows a key, a prefix or a service with ``consul.watch`` steps (blocking
  queries in the long-poll pool), yields an answer only when its content changed, rides out
  transient failures by reading afresh, and ends when the handler shuts down.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from handler_consul._clock import Clock
from handler_consul._errors import (
    ContextFields,
    InfraConflictError,
    InfraConnectionError,
    InfraUnavailableError,
    InfraValidationError,
    make_context,
)
from handler_consul._operations.values import check_value
from handler_consul._results import WatchResult
from handler_consul._validation import KvKey, LockDelay, SessionTtl

__all__ = [
    "Calls",
    "Host",
    "LockRequest",
    "Stoppable",
    "Updater",
    "kv_update",
    "lock_request",
    "stop_on_shutdown",
    "watch",
]

# Between two CAS attempts that lost: full jitter under a ceiling that doubles from this, so
# that writers which collided do not collide again in lockstep.
_CAS_BACKOFF_FIRST, _CAS_BACKOFF_MAX = 0.005, 0.5
# A watch whose step failed reads afresh after this, doubling up to the cap.
_WATCH_RETRY_FIRST, _WATCH_RETRY_MAX = 0.05, 2.0
_STOPPABLES = "coordination.stoppables"


class Host(Protocol):
    """What coordination needs of the runtime serving now (a ``Runtime``; this module sits
    beside it, below the lock code that also needs its pools)."""

    state: dict[str, Any]
    target: str
    settings: Any

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None: ...


class _Call(Protocol):
    def __call__(
        self,
        operation: str,
        payload: Mapping[str, Any],
        *,
        timeout: float | None = None,
        closing: bool = False,
    ) -> Awaitable[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Calls:
    """How coordination code reaches Consul and the runtime it works for.

    ``call(operation, payload, timeout=, closing=)`` runs one operation as ``execute()``
    would and returns its result; ``closing=True`` lets it run while shutdown releases
    what is held (new envelopes are refused by then). ``runtime()`` is the runtime serving
    now (None when the handler is not running).
    """

    call: _Call
    runtime: Callable[[], Host | None]
    clock: Clock
    rng: Callable[[], float]  # the handler's: jitter between CAS attempts


class Stoppable(Protocol):
    """Work a shutdown must end before the pools close (a watch, a lease)."""

    async def stop(self) -> None: ...


def stop_on_shutdown(runtime: Host, work: Stoppable) -> Callable[[], None]:
    """Register ``work`` with the runtime's shutdown; returns the call that unregisters it.

    One closer per runtime stops everything registered, concurrently, within the grace
    period the closers share.
    """
    registered: set[Stoppable] | None = runtime.state.get(_STOPPABLES)
    if registered is None:
        registered = runtime.state[_STOPPABLES] = set()
        stoppables = registered

        async def stop_all() -> None:
            pending = list(stoppables)
            stoppables.clear()
            await asyncio.gather(*(w.stop() for w in pending), return_exceptions=True)

        runtime.add_closer(stop_all)
    registered.add(work)
    return lambda: registered.discard(work)


# -- lock()'s arguments ---------------------------------------------------------------------


class LockRequest(BaseModel):
    """``lock()``'s arguments, checked before anything is sent."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    key: KvKey
    ttl: SessionTtl = "15s"
    wait: float = Field(30.0, ge=0, le=86400, allow_inf_nan=False)
    lock_delay: LockDelay = "15s"
    value: str | bytes = ""

    @field_validator("value")
    @classmethod
    def _value(cls, value: str | bytes) -> str | bytes:
        return check_value(value, "utf-8")


def lock_request(**arguments: Any) -> LockRequest:
    """The request, or InfraValidationError naming the argument (its value never shown)."""
    try:
        return LockRequest(**arguments)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        # The first part names the argument; the rest are pydantic's union tags.
        field = str(errors[0]["loc"][0]) if errors[0]["loc"] else "lock"
        problem = _argument_error("lock", field, errors[0]["msg"], errors[0]["type"])
    raise problem


def _argument_error(
    api: str, argument: str, message: str, kind: str = "value_error"
) -> InfraValidationError:
    """A Python API's bad argument, as an envelope's bad field is reported: nothing sent."""
    fields = ContextFields(api, None, "consul.default", None)
    return InfraValidationError(
        f"invalid {api}(): {argument}: {message}",
        context=make_context(fields, InfraValidationError, attempts=0, field=argument),
        errors=[{"field": argument, "type": kind, "message": message}],
    )


# -- kv_update -------------------------------------------------------------------------------

Updater = Callable[[str | bytes | None], "str | bytes | Awaitable[str | bytes]"]


def _current(result: Mapping[str, Any]) -> str | bytes | None:
    """The value kv_get found, as the updater sees it: text, raw bytes, or None."""
    if not result["found"]:
        return None
    if result["encoding"] == "base64":
        return base64.b64decode(result["value"])
    value: str = result["value"]
    return value


async def kv_update(calls: Calls, key: str, fn: Updater, *, max_attempts: int = 10) -> str | bytes:
    """Read ``key``, store ``fn(current)`` with a CAS on the index read, repeat on a CAS
    miss; the stored value, or InfraConflictError after ``max_attempts`` misses.

    ``fn`` gets the value (text, or bytes when it is not UTF-8) or None when the key is
    missing, and returns the new value (str or bytes; it may be a coroutine function). It
    may run more than once: it must not have side effects of its own.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise _argument_error("kv_update", "max_attempts", "must be an int of at least 1")
    ceiling = _CAS_BACKOFF_FIRST
    for attempt in range(1, max_attempts + 1):
        got = await calls.call("consul.kv_get", {"key": key})
        new = fn(_current(got))
        if inspect.isawaitable(new):
            new = await new
        if not isinstance(new, str | bytes):
            raise TypeError(f"kv_update: fn returned {type(new).__name__}, not str or bytes")
        cas = got["modify_index"] if got["found"] else 0
        written = await calls.call("consul.kv_put", {"key": key, "value": new, "cas": cas})
        if written["applied"]:
            return new
        if attempt < max_attempts:
            await asyncio.sleep(calls.rng() * ceiling)
            ceiling = min(ceiling * 2, _CAS_BACKOFF_MAX)
    runtime = calls.runtime()
    target = runtime.target if runtime is not None else "consul.default"
    datacenter = runtime.settings.datacenter if runtime is not None else None
    fields = ContextFields("kv_update", None, target, datacenter)
    raise InfraConflictError(
        f"kv_update: {key!r} changed under every one of {max_attempts} CAS attempts",
        context=make_context(fields, InfraConflictError, attempts=max_attempts, request_sent=True),
    )


# -- watch -----------------------------------------------------------------------------------


class _Watch:
    """One ``watch()`` iterator's state: the step in flight, so shutdown can end it."""

    def __init__(self) -> None:
        self.stopped = False
        self.step: asyncio.Task[dict[str, Any]] | None = None

    async def stop(self) -> None:
        self.stopped = True
        if self.step is not None:
            self.step.cancel()


async def watch(
    calls: Calls, targets: dict[str, str | None], *, wait: float
) -> AsyncIterator[WatchResult]:
    """Yield the state of the one target given (``targets``: key, prefix or service) now,
    then each time its content changes.

    Transient failures (Consul unreachable, an open breaker) are ridden out: the watch waits
    a little, reads afresh, and yields if the content changed meanwhile. Anything else
    (refused credentials, a rejected request) is raised. It ends when the handler shuts down.
    """
    chosen = {kind: target for kind, target in targets.items() if target is not None}
    # One target; none, or two, is refused by consul.watch's rules, naming the field.
    payload = {"kind": next(iter(chosen), "key"), **chosen}
    if calls.runtime() is None:
        # Not running: the step says so (InfraUnavailableError), as execute() would.
        await calls.call("consul.watch", payload)
    index = 0
    last: Any = _NOTHING
    retry = _WATCH_RETRY_FIRST
    state = _Watch()
    registered: tuple[Host, Callable[[], None]] | None = None
    try:
        while not state.stopped:
            runtime = calls.runtime()
            if runtime is None:
                return  # shut down
            if registered is None or registered[0] is not runtime:
                # First step, or a re-initialize replaced the runtime: its shutdown ends us.
                if registered is not None:
                    registered[1]()
                registered = runtime, stop_on_shutdown(runtime, state)
            step_payload = {**payload, "index": index, "wait": wait}
            state.step = asyncio.ensure_future(calls.call("consul.watch", step_payload))
            try:
                step = await state.step
            except asyncio.CancelledError:
                if state.stopped:
                    return  # shutdown ended the step, not our caller
                raise
            except (InfraConnectionError, InfraUnavailableError):
                index = 0  # the agent that answers next may be behind: read afresh
                if calls.runtime() is not runtime:
                    continue  # shut down, or re-initialized: the loop's top tells which
                await asyncio.sleep(retry)
                retry = min(retry * 2, _WATCH_RETRY_MAX)
                continue
            finally:
                state.step = None
            retry = _WATCH_RETRY_FIRST
            index = step["index"]
            content = _content(step["result"])
            if content != last:
                last = content
                yield {"index": step["index"], "changed": True, "result": step["result"]}
    finally:
        if registered is not None:
            registered[1]()
        if state.step is not None:
            state.step.cancel()


_NOTHING = object()


def _content(result: Mapping[str, Any]) -> Any:
    """What a change is judged by: the result without the index of the answer, which moves
    with unrelated writes (and with the cache's bookkeeping)."""
    return {k: v for k, v in result.items() if k != "index"}
