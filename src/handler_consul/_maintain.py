"""Registrations the handler keeps alive: ``consul.register`` with ``maintain: true``.

For each maintained service a background task (owned by the runtime, so nothing outlives
``shutdown()``) does, for as long as the handler runs:

- pass its TTL check every ttl/3 (the check stays passing with no help from the caller);
- restore the registration, check included, when the agent has lost it: a heartbeat
  answered 404 ("unknown check": the agent restarted without its state, or anti-entropy
  dropped it) triggers it, and so does a comparison with the agent's copy every
  ``maintain.compare_interval_seconds`` (which also catches a service changed behind the
  handler's back, and covers services without a TTL check);
- after a round that failed because Consul did not answer, try again soon (50 ms, doubling
  up to half a second or the heartbeat), so a restarted agent has its registration back
  soon after it answers; after a refusal (403, 400) wait the whole heartbeat. A
  heartbeat may take up to the TTL itself: an agent that is starting answers its HTTP API
  before it takes check updates, and a heartbeat cut short at ttl/3 would only start again
  later than one left to finish.

Upkeep requests are the handler's own, paced and tiny: they go through the retries, the
short pool, the deadline and the translation boundary, but not through the breaker. An open
breaker would otherwise hold heartbeats back for its whole reset timeout after the agent
came back, and the check would go critical; nor do their failures count in it.

The registry belongs to the handler, not to one runtime: a re-initialize re-attaches every
maintained service to the new runtime. ``consul.deregister`` ends the upkeep first (waiting
for a request in flight), so a heartbeat cannot restore what was just removed; shutdown
deregisters every maintained service unless ``maintain.deregister_on_shutdown`` is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from handler_consul._breaker import CircuitBreaker
from handler_consul._clock import Clock
from handler_consul._errors import (
    ContextFields,
    InfraConnectionError,
    InfraConsulError,
    InfraError,
    InfraUnavailableError,
)
from handler_consul._log import handler_log
from handler_consul._longpoll import LongPolls
from handler_consul._operations import Operation
from handler_consul._operations.service import (
    MAINTAINED,
    CheckUpdatePayload,
    DeregisterPayload,
    RegisterPayload,
    check_update,
    deregister,
    read_registration,
    register,
)
from handler_consul._retry import Attempts
from handler_consul._settings import BreakerSettings, ConsulSettings
from handler_consul._validation import duration_seconds

__all__ = ["Maintenance"]

_RETRY_FIRST, _RETRY_CAP = 0.05, 0.5
_OUTAGES = (InfraConnectionError, InfraUnavailableError)
_UNGUARDED = BreakerSettings(enabled=False)


async def _read(client: Any, service_id: str) -> dict[str, Any]:
    return {"service": await read_registration(client, service_id)}


def _never(_payload: Any) -> bool:
    return False


_PASS = Operation("consul.check_update", CheckUpdatePayload, check_update)
_REGISTER = Operation("consul.register", RegisterPayload, register)
_READ = Operation("consul.register", BaseModel, _read)
_DEREGISTER = Operation("consul.deregister", DeregisterPayload, deregister, _never)


@dataclass(frozen=True, slots=True)
class _Link:
    """What one runtime lends the upkeep."""

    attempts: Attempts
    long_polls: LongPolls
    settings: ConsulSettings
    target: str


@dataclass(slots=True, eq=False)
class _Kept:
    payload: RegisterPayload
    check_id: str | None
    heartbeat: float | None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    confirmed_at: float | None = None
    restored: int = 0
    last_error: str | None = None

    @property
    def passing(self) -> CheckUpdatePayload:
        """The heartbeat: its TTL check passed."""
        assert self.check_id is not None
        return CheckUpdatePayload(check_id=self.check_id, status="passing", output=MAINTAINED)


class Maintenance:
    """The handler's maintained registrations, and their upkeep on the current runtime."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._kept: dict[str, _Kept] = {}
        # Upkeeps ended by a register in flight, brought back if it fails (resume()).
        self._suspended: dict[str, _Kept] = {}
        # The newest ticket per service ID (see the Maintainer protocol).
        self._tickets: dict[str, int] = {}
        self._next_ticket = 0
        self._link: _Link | None = None
        self._closing = False
        self._breaker = CircuitBreaker("consul.maintenance", _UNGUARDED, clock=clock)

    def __len__(self) -> int:
        return len(self._kept)

    def attach(
        self,
        attempts: Attempts,
        long_polls: LongPolls,
        settings: ConsulSettings,
        target: str,
        add_closer: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        """Keep everything maintained alive on a new runtime from now on."""
        self._link = link = _Link(attempts, long_polls, settings, target)
        self._closing = False
        add_closer(self.close)
        for kept in self._kept.values():
            kept.stop = asyncio.Event()
            self._start(link, kept)

    # -- what the register and deregister operations call ----------------------------------

    def ticket(self, service_id: str) -> int:
        self._next_ticket += 1
        self._tickets[service_id] = self._next_ticket
        return self._next_ticket

    def _newest(self, service_id: str, ticket: int) -> bool:
        return self._tickets.get(service_id) == ticket

    async def suspend(self, service_id: str) -> None:
        kept = self._kept.pop(service_id, None)
        if kept is None:
            return
        # Only the first suspension is kept aside: a later one finds the slot empty.
        self._suspended.setdefault(service_id, kept)
        await self._stop(kept)

    def resume(self, service_id: str, ticket: int) -> None:
        if not self._newest(service_id, ticket):
            return
        kept = self._suspended.pop(service_id, None)
        link = self._link
        if kept is None or link is None or self._closing or service_id in self._kept:
            return
        kept.stop = asyncio.Event()
        self._kept[service_id] = kept
        self._start(link, kept)

    async def forget_suspended(self, service_id: str, ticket: int) -> None:
        if self._newest(service_id, ticket):
            self._suspended.pop(service_id, None)

    async def maintain(self, payload: RegisterPayload, ticket: int) -> None:
        service_id = payload.effective_id
        if not self._newest(service_id, ticket):
            return  # a newer register or a deregister of this ID decides
        self._suspended.pop(service_id, None)
        link = self._link
        if link is None:
            return
        if self._closing:
            # Registered by an envelope that was in flight when shutdown began.
            if link.settings.maintain.deregister_on_shutdown:
                await self._call(
                    link, _DEREGISTER, DeregisterPayload(service_id=payload.effective_id)
                )
            return
        # Normally empty (suspended by this register); stop anything that slipped in.
        await self.suspend(service_id)
        self._suspended.pop(service_id, None)
        if not self._newest(service_id, ticket):
            return
        check = payload.check
        heartbeat = duration_seconds(check.ttl) / 3 if check is not None and check.ttl else None
        kept = _Kept(payload, payload.ttl_check_id, heartbeat, confirmed_at=self._clock())
        self._kept[payload.effective_id] = kept
        self._start(link, kept)

    async def forget(self, service_id: str) -> bool:
        self.ticket(service_id)  # any register in flight can no longer start an upkeep
        self._suspended.pop(service_id, None)
        kept = self._kept.pop(service_id, None)
        if kept is None:
            return False
        await self._stop(kept)
        return True

    async def close(self) -> None:
        """At shutdown: end every upkeep, then deregister what was maintained (unless
        ``maintain.deregister_on_shutdown`` is off)."""
        link, self._closing = self._link, True
        kept, self._kept = [*self._kept.values(), *self._suspended.values()], {}
        self._suspended = {}
        await asyncio.gather(*(self._stop(k) for k in kept))
        if link is None or not link.settings.maintain.deregister_on_shutdown:
            return
        outcomes = await asyncio.gather(
            *(
                self._call(link, _DEREGISTER, DeregisterPayload(service_id=k.payload.effective_id))
                for k in kept
            ),
            return_exceptions=True,
        )
        for k, outcome in zip(kept, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                handler_log.warning(
                    "shutdown: could not deregister maintained service %s: %s",
                    k.payload.effective_id,
                    outcome,
                    extra={"target": link.target},
                )

    def snapshot(self) -> list[dict[str, Any]]:
        """What is maintained and when the agent last confirmed it, for ``describe()``."""
        now = self._clock()
        wall = datetime.datetime.now(datetime.UTC)
        shown = []
        for service_id, kept in sorted(self._kept.items()):
            ago = None if kept.confirmed_at is None else round(max(now - kept.confirmed_at, 0), 3)
            shown.append(
                {
                    "service_id": service_id,
                    "name": kept.payload.name,
                    "check_id": kept.check_id,
                    "heartbeat_seconds": kept.heartbeat,
                    "last_confirmed_seconds_ago": ago,
                    "last_confirmed_at": None
                    if ago is None
                    else (wall - datetime.timedelta(seconds=ago)).isoformat(),
                    "restored": kept.restored,
                    "last_error": kept.last_error,
                }
            )
        return shown

    # -- the upkeep ----------------------------------------------------------------------

    def _start(self, link: _Link, kept: _Kept) -> None:
        name = f"maintain {kept.payload.effective_id}"
        with contextlib.suppress(RuntimeError):  # the runtime is closing: nothing to keep
            kept.task = link.long_polls.spawn(self._keep(link, kept), name=name)

    async def _stop(self, kept: _Kept) -> None:
        """End one upkeep without cutting a request short: it finishes by its deadline."""
        kept.stop.set()
        task = kept.task
        if task is None or task.done() or task is asyncio.current_task():
            return
        bound = self._link.settings.timeout_seconds + 1.0 if self._link else 1.0
        done, _ = await asyncio.wait({task}, timeout=bound)
        if not done:
            task.cancel()

    async def _keep(self, link: _Link, kept: _Kept) -> None:
        every = link.settings.maintain.compare_interval_seconds
        interval = kept.heartbeat or every
        delay, failures = interval, 0
        compare_at = self._clock() + every
        while not await _stopped(kept.stop, delay):
            try:
                if kept.check_id is not None:
                    await self._beat(link, kept)
                if kept.check_id is None or self._clock() >= compare_at:
                    compare_at = self._clock() + every
                    await self._compare(link, kept)
            except InfraError as error:
                failures += 1
                kept.last_error = error.message
                if failures == 1:
                    handler_log.warning(
                        "maintained service %s: upkeep failed: %s",
                        kept.payload.effective_id,
                        error.message,
                        extra={"target": link.target},
                    )
                # An outage ends when the agent is back: look again soon. A refusal (a token
                # without the right, a rejected definition) will not end by itself.
                soon = isinstance(error, _OUTAGES)
                delay = min(interval, _RETRY_CAP, _RETRY_FIRST * 2 ** (failures - 1))
                delay = delay if soon else interval
                continue
            failures, kept.last_error, delay = 0, None, interval
            kept.confirmed_at = self._clock()

    async def _beat(self, link: _Link, kept: _Kept) -> None:
        try:
            # Bounded by the TTL: past it the check is critical whatever this request does.
            ttl = kept.heartbeat * 3 if kept.heartbeat is not None else None
            await self._call(link, _PASS, kept.passing, seconds=ttl)
        except InfraConsulError as error:
            if error.context.status_code != 404:
                raise
            await self._restore(link, kept, "its check is unknown to the agent")

    async def _compare(self, link: _Link, kept: _Kept) -> None:
        found = (await self._call(link, _READ, kept.payload.effective_id))["service"]
        if found is None:
            await self._restore(link, kept, "the agent no longer has it")
        elif not _same(kept.payload, found):
            await self._restore(link, kept, "the agent's copy differs")

    async def _restore(self, link: _Link, kept: _Kept, why: str) -> None:
        if kept.stop.is_set():
            return
        handler_log.info(
            "maintained service %s: registering it again (%s)",
            kept.payload.effective_id,
            why,
            extra={"target": link.target},
        )
        await self._call(link, _REGISTER, kept.payload)
        kept.restored += 1
        if kept.check_id is not None:
            await self._call(link, _PASS, kept.passing)

    async def _call(
        self, link: _Link, operation: Operation, payload: Any, *, seconds: float | None = None
    ) -> Any:
        settings = link.settings
        fields = ContextFields(operation.name, None, link.target, settings.datacenter)
        timeout = settings.timeout_seconds
        deadline = self._clock() + (timeout if seconds is None else min(timeout, seconds))
        result, _ = await link.attempts.run(self._breaker, operation, payload, fields, deadline)
        return result


def _same(payload: RegisterPayload, found: dict[str, Any]) -> bool:
    """Whether the agent's copy is what was registered (the fields a caller relies on)."""
    wanted = payload.definition()
    tags_matter = not payload.enable_tag_override  # the catalog may change them then
    return bool(
        found.get("Service") == wanted["Name"]
        and found.get("Port", 0) == wanted.get("Port", 0)
        and (found.get("Address") or "") == wanted.get("Address", "")
        and (not tags_matter or list(found.get("Tags") or []) == wanted.get("Tags", []))
        and dict(found.get("Meta") or {}) == wanted.get("Meta", {})
    )


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless told to stop first; whether it was told."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
