"""Locks with fencing tokens: ``async with handler.lock(key) as lease``.

Acquire: a session, then a transaction that locks the key with it; its Raft index is the
``fencing_token``. Wait: a blocking query on the key, never polling (a backoff only for a
free key that refuses the lock: lock-delay). Hold: renewals every ttl/2 and a query that
follows the key; ``lost`` when the session is gone, the key changes hands, or ttl passed
since the last renewal that succeeded was sent (Consul waits up to twice the ttl). Release:
on exit, cancellation and shutdown. docs/patterns/kv_coordination.md says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, TypeVar

from handler_consul._coordination import Calls, LockRequest, stop_on_shutdown
from handler_consul._errors import (
    ContextFields,
    InfraConnectionError,
    InfraError,
    InfraLockTimeoutError,
    InfraUnavailableError,
    make_context,
)
from handler_consul._log import handler_log
from handler_consul._runtime import Runtime
from handler_consul._validation import duration_seconds

__all__ = ["Lease", "LockContext", "acquire"]

E = TypeVar("E", bound=InfraError)

# A key that looks free but refuses the lock is retried after this, doubling up to the cap.
_REFUSED_FIRST, _REFUSED_MAX = 0.05, 1.0
# A failed blocking round on a held key is retried after this, doubling up to the cap.
_FOLLOW_RETRY_FIRST, _FOLLOW_RETRY_MAX = 1.0, 5.0


class Lease:
    """A held lock. ``fencing_token`` goes with every write the lock protects; ``lost`` is
    set the moment the lock can no longer be trusted to be held (and on release)."""

    def __init__(self, calls: Calls, runtime: Runtime, request: LockRequest, session_id: str):
        self.key = request.key
        self.session_id = session_id
        self.fencing_token = 0
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._calls = calls
        self._runtime = runtime
        self._request = request
        self._ttl = duration_seconds(request.ttl)
        self._timer: asyncio.TimerHandle | None = None
        self._expires_at = 0.0  # loop time: when the lease counts as lost unless renewed
        self._tasks: list[asyncio.Task[None]] = []
        self._ending: asyncio.Task[None] | None = None
        self._step: asyncio.Future[dict[str, Any]] | None = None  # a wait for the key
        self._unregister = stop_on_shutdown(runtime, self)

    def __repr__(self) -> str:
        state = f"lost: {self.lost_reason}" if self.lost.is_set() else "held"
        return f"Lease({self.key!r}, fencing_token={self.fencing_token}, {state})"

    @property
    def held(self) -> bool:
        return self.fencing_token > 0 and not self.lost.is_set()

    # -- losing it -----------------------------------------------------------------------

    def _lose(self, why: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = why
        self.lost.set()
        if self.fencing_token and why != "released":
            handler_log.warning(
                "lock %s lost: %s", self.key, why, extra={"target": self._runtime.target}
            )

    def _arm(self, renewed_at: float) -> None:
        """Lose the lease ``ttl`` after ``renewed_at`` (loop time) unless renewed again."""
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        why = f"no renewal succeeded within its ttl ({self._request.ttl})"
        self._expires_at = renewed_at + self._ttl
        self._timer = loop.call_at(self._expires_at, self._lose, why)

    def _spawn(self, work: Any, name: str) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                if self._ending is None:
                    # Cancelled with its runtime: a re-initialize moves the lease to the new
                    # one; a shutdown releases it first, so it never gets here.
                    asyncio.get_running_loop().call_soon(self._move)

        self._tasks.append(self._runtime.long_polls.spawn(run(), name=name))

    def _move(self) -> None:
        """Carry on renewing (and following the key) in the runtime serving now."""
        new = self._calls.runtime()
        if self._ending is not None or new is self._runtime:
            return
        if not isinstance(new, Runtime) or new.disposed or new.long_polls.closed:
            self._lose("the handler stopped renewing its session")
            return
        self._unregister()
        self._runtime, self._tasks = new, []
        self._unregister = stop_on_shutdown(new, self)
        # Renewed at once: how long the old runtime's last renewal is ago is not known here.
        self._spawn(self._renew_forever(asyncio.get_running_loop().time()), f"{self!r} renewal")
        if self.fencing_token:
            self._spawn(self._follow(), f"{self!r} follower")

    def _keep_alive(self, created_at: float) -> None:
        self._arm(created_at)
        self._spawn(self._renew_forever(created_at + self._ttl / 2), f"{self!r} renewal")

    async def _renew_forever(self, first_at: float) -> None:
        """Renew at ``first_at``, then ttl/2 after each renewal was *sent*: a slow answer
        does not push the next renewal back, so a slow but working link keeps the lease."""
        loop = asyncio.get_running_loop()
        interval = self._ttl / 2
        next_at = first_at
        payload = {"session_id": self.session_id}
        while True:
            await asyncio.sleep(max(next_at - loop.time(), 0.0))
            sent = loop.time()
            try:
                got = await self._calls.call("consul.session_renew", payload, timeout=interval)
            except InfraError:
                # Again halfway to the expiry (the timer decides when it is lost): few tries
                # through an election, so they do not open the breaker for its whole reset.
                now = loop.time()
                next_at = now + max((self._expires_at - now) / 2, 0.5)
                continue
            if not got["renewed"]:
                self._lose("its session is gone (expired or destroyed)")
                return
            self._arm(sent)
            next_at = sent + interval

    async def _follow(self) -> None:
        """A blocking query on the held key: lost once it shows another session or none.

        ``stale``: the agent's server answers from its own state, so the query goes on
        through a leader election (renewals, which need the leader, are what can fail).
        """
        index, retry = self.fencing_token, _FOLLOW_RETRY_FIRST
        query = {"kind": "key", "key": self.key, "consistency": "stale"}
        wait = self._runtime.settings.long_poll.wait_seconds
        while True:
            step_payload = {**query, "index": index, "wait": wait}
            try:
                step = await self._calls.call("consul.watch", step_payload)
            except InfraError:
                await asyncio.sleep(retry)
                retry, index = min(retry * 2, _FOLLOW_RETRY_MAX), 0
                continue
            holder = step["result"]["session"]
            if holder != self.session_id:
                self._lose("the key changed hands" if holder else "the key was released")
                return
            index, retry = step["index"], _FOLLOW_RETRY_FIRST

    # -- acquiring -----------------------------------------------------------------------

    async def _try_lock(self) -> int | None:
        """One attempt: the fencing token, or None when the key is not ours."""
        op = {"verb": "lock", "key": self.key, "value": self._request.value}
        try:
            done = await self._calls.call(
                "consul.txn", {"operations": [{**op, "session": self.session_id}]}
            )
        except InfraError as error:
            if not error.outcome_unknown:
                raise
            # The lock write may have been applied: ask the leader who holds the key.
            got = await self._calls.call(
                "consul.kv_get", {"key": self.key, "consistency": "consistent"}
            )
            mine = got["found"] and got["session"] == self.session_id
            return int(got["modify_index"]) if mine else None
        if done["applied"]:
            return int(done["results"][0]["modify_index"])
        return None

    async def _acquire(self, deadline: float) -> bool:
        """True once held; False if the session died meanwhile (the caller starts over).

        Transient failures (Consul unreachable or electing a leader, no long-poll thread
        free, an open breaker) are ridden out until ``deadline``; the last one is raised if
        the deadline passes while it lasts.
        """
        clock = self._calls.clock
        index, free, pause = 0, True, _REFUSED_FIRST
        while not self.lost.is_set():
            try:
                if free:
                    token = await self._try_lock()
                    if token is not None and not self.lost.is_set():
                        self.fencing_token = token
                        self._spawn(self._follow(), f"lock {self.key!r} follower")
                        return True
                    index = 0  # refused: look at the key as it is now
                remaining = deadline - clock()
                if remaining <= 0:
                    raise self._timed_out()
                wait = min(remaining, 600.0)
                step = await self._wait_step(
                    {"kind": "key", "key": self.key, "index": index, "wait": wait}
                )
            except (InfraConnectionError, InfraUnavailableError):
                if self._ending is not None or self._calls.runtime() is None:
                    raise  # shut down: not a passing failure
                remaining = deadline - clock()
                if remaining <= 0:
                    raise
                await asyncio.sleep(min(pause, remaining))
                index, free, pause = 0, True, min(pause * 2, _REFUSED_MAX)
                continue
            now_free = not step["result"]["session"]
            if now_free and free:
                # Refused though nobody holds it: an invalidated session's lock-delay (or a
                # lost race). A backoff: no change on the key would end a blocking query.
                await asyncio.sleep(min(pause, max(deadline - clock(), 0.0)))
                pause = min(pause * 2, _REFUSED_MAX)
            else:
                pause = _REFUSED_FIRST
            free, index = now_free, step["index"]
        return False

    async def _wait_step(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One blocking query on the key, which a release (shutdown) ends at once."""
        self._step = asyncio.ensure_future(self._calls.call("consul.watch", payload))
        try:
            return await self._step
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._ending is None or (task is not None and task.cancelling()):
                raise  # our caller was cancelled
            raise self._stopped() from None
        finally:
            self._step = None

    def _stopped(self) -> InfraUnavailableError:
        return self._error(InfraUnavailableError, "the handler shut down while waiting for it")

    def _timed_out(self) -> InfraLockTimeoutError:
        waited = f"still held by another session after {self._request.wait:g}s"
        return self._error(InfraLockTimeoutError, waited)

    def _error(self, kind: type[E], what: str) -> E:
        runtime = self._runtime
        fields = ContextFields("lock", None, runtime.target, runtime.settings.datacenter)
        return kind(
            f"lock {self.key!r}: {what}",
            context=make_context(fields, kind, attempts=1, request_sent=True),
        )

    # -- releasing -----------------------------------------------------------------------

    async def release(self) -> None:
        """Set ``lost``, release the key, destroy the session. Idempotent; completes even if
        the caller is cancelled while waiting for it."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._finish())
        await asyncio.shield(self._ending)

    async def stop(self) -> None:
        """What shutdown calls for every lease still held (or being acquired)."""
        await self.release()

    async def _finish(self) -> None:
        self._lose("released")
        if self._timer is not None:
            self._timer.cancel()
        if self._step is not None:
            self._step.cancel()  # still waiting for the key: that wait is over
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            if self.fencing_token:
                release = {"key": self.key, "value": self._request.value}
                await self._calls.call(
                    "consul.kv_put", {**release, "release": self.session_id}, closing=True
                )
        except InfraError:
            pass  # destroying the session releases the key as well
        try:
            await self._calls.call(
                "consul.session_destroy", {"session_id": self.session_id}, closing=True
            )
        except InfraError as error:
            handler_log.warning(
                "lock %s: could not destroy its session (%s); it ends with its ttl",
                self.key,
                type(error).__name__,
                extra={"target": self._runtime.target},
            )
        finally:
            self._unregister()


_ORPHANS: set[asyncio.Task[Any]] = set()


async def _destroy(calls: Calls, session_id: str) -> None:
    with contextlib.suppress(InfraError):
        await calls.call("consul.session_destroy", {"session_id": session_id}, closing=True)


def _destroy_orphan(calls: Calls, creating: asyncio.Future[dict[str, Any]]) -> None:
    """Destroy the session a cancelled lock() created after all."""
    if not creating.cancelled() and creating.exception() is None:
        task = asyncio.ensure_future(_destroy(calls, creating.result()["session_id"]))
        _ORPHANS.add(task)
        task.add_done_callback(_ORPHANS.discard)


async def _new_lease(calls: Calls, request: LockRequest) -> Lease:
    # Consul starts the TTL when it creates the session: the local clock starts before.
    asked_at = asyncio.get_running_loop().time()
    session = {"ttl": request.ttl, "lock_delay": request.lock_delay, "behavior": "release"}
    name = f"handler-consul lock {request.key}"[:256]
    creating = asyncio.ensure_future(calls.call("consul.session_create", {"name": name, **session}))
    try:
        created = await asyncio.shield(creating)
    except asyncio.CancelledError:
        # The request goes on: a session it creates is destroyed, not left to its TTL.
        creating.add_done_callback(lambda done: _destroy_orphan(calls, done))
        raise
    runtime = calls.runtime()
    if not isinstance(runtime, Runtime):
        # Shut down while the session was being created.
        await _destroy(calls, created["session_id"])
        fields = ContextFields("lock", None, "consul.default", None)
        raise InfraUnavailableError(
            "lock: the handler shut down while the lock was being acquired",
            context=make_context(fields, InfraUnavailableError, attempts=1, request_sent=True),
        )
    lease = Lease(calls, runtime, request, created["session_id"])
    lease._keep_alive(asked_at)
    return lease


async def acquire(calls: Calls, request: LockRequest) -> Lease:
    """A held lease, InfraLockTimeoutError after ``request.wait``, or the error of a request
    that failed for good. Whatever happens, no session is left behind but the lease's own."""
    deadline = calls.clock() + request.wait
    pause = _REFUSED_FIRST
    while True:
        try:
            lease = await _new_lease(calls, request)
        except (InfraConnectionError, InfraUnavailableError):
            # A passing failure (an election, an open breaker) within the wait is ridden out.
            remaining = deadline - calls.clock()
            if calls.runtime() is None or remaining <= 0:
                raise
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _REFUSED_MAX)
            continue
        try:
            if await lease._acquire(deadline):
                return lease
        except BaseException:
            await lease.release()
            raise
        stopped = lease._ending is not None  # released from outside: shutdown
        await lease.release()
        if stopped:
            raise lease._stopped()
        # Its session died while waiting: start over with a new one.


class LockContext:
    """What ``handler.lock()`` returns: ``async with`` it (or ``await`` it for a lease to
    release yourself)."""

    def __init__(self, calls: Calls, request: LockRequest) -> None:
        self._calls = calls
        self._request = request
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self._lease = await acquire(self._calls, self._request)
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            await self._lease.release()

    def __await__(self) -> Any:
        return acquire(self._calls, self._request).__await__()
