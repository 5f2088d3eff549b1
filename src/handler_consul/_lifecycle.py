"""The handler's lifecycle: one state, changed by one lifecycle call at a time.

States: ``new`` → ``running`` ⇄ ``shutting_down`` → ``shut_down`` (→ ``running`` again on
initialize). ``initialize()`` and ``shutdown()`` take a lock, so they take effect in the
order they were called and every interleaving ends in one clear state:

- ``shutdown()`` during ``initialize()`` aborts the initialize (it raises
  InfraUnavailableError and disposes what it built), then shuts down whatever ran before;
- ``initialize()`` during a shutdown waits for it to finish, then starts afresh;
- a ``shutdown()`` whose caller is cancelled still finishes at once (the grace period is cut
  short, in-flight envelopes are failed), then lets the cancellation through;
- a later ``shutdown()`` is a no-op that returns once the handler is shut down.

Nothing here joins a thread: a worker stuck in a request returns when its request's deadline
passes, and its pool is already closed by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

from handler_consul._breaker import MixinAsyncCircuitBreaker
from handler_consul._clock import Clock, Sleep
from handler_consul._errors import (
    ContextFields,
    InfraError,
    InfraUnavailableError,
    make_context,
)
from handler_consul._log import handler_log
from handler_consul._retry import shut_down_error
from handler_consul._runtime import Runtime, build_runtime
from handler_consul._settings import ConsulSettings, load_settings

__all__ = ["Lifecycle", "State"]

State = Literal["new", "running", "shutting_down", "shut_down"]

_REFUSALS: dict[State, str | None] = {
    "new": "HandlerConsul is not initialized: call and await initialize() first",
    "running": None,
    "shutting_down": "HandlerConsul is shutting down and accepts no new envelopes",
    "shut_down": "HandlerConsul is shut down: call initialize() again to reuse it",
}
_OTHER_LOOP = (
    "HandlerConsul is serving envelopes of another event loop (another thread) right now: a "
    "handler serves one event loop at a time; give each loop its own HandlerConsul"
)
_ABORTED = "initialize() was aborted: shutdown() was called while it ran"


class Lifecycle:
    """The runtime a handler currently serves from, and the calls that replace it."""

    def __init__(
        self,
        breakers: MixinAsyncCircuitBreaker,
        base: ConsulSettings | None,
        *,
        clock: Clock,
        rng: Callable[[], float],
        sleep: Sleep | None,
    ) -> None:
        self.runtime: Runtime | None = None
        self.state: State = "new"
        self.in_flight = 0
        # The loop of the envelopes in flight (enter()); the lock only when it may change.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._breakers = breakers
        self._base = base
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._drained: asyncio.Event | None = None
        self._probe: asyncio.Future[tuple[str, InfraError | None]] | None = None
        self._breaker_key: tuple[Any, ...] | None = None

    def refusal(self) -> str | None:
        """Why a new envelope is refused now, or None when it is admitted."""
        return _REFUSALS[self.state]

    def enter(self, loop: asyncio.AbstractEventLoop) -> str | None:
        """Count an envelope of ``loop`` in flight, so shutdown can wait for it, and return
        None; ``leave()`` when it is done, in a ``finally`` (plain calls: a context manager
        object per envelope cost a microsecond, a twentieth of a cached read).

        A handler serves one event loop at a time: its pools, bulkhead and connections
        answer to the loop of the envelopes in flight. An envelope from another loop while
        any is in flight is refused (the reason is returned, nothing is counted); run
        one after the other, loops may take turns. Found by a review: two loops in two
        threads at once wedged a caller in threads mode and starved both in asyncio mode.
        """
        if loop is self._loop and self.in_flight:
            self.in_flight += 1  # the loop already serving: no other loop can be let in now
            return None
        with self._loop_lock:
            if self.in_flight and loop is not self._loop:
                return _OTHER_LOOP
            self._loop = loop
            self.in_flight += 1
            return None

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    # -- initialize ----------------------------------------------------------------------

    async def initialize(self, config: Mapping[str, Any] | None) -> None:
        try:
            await self._initialize(config)
        except InfraError as error:
            handler_log.warning(
                "initialize failed: %s", error.message, extra={"target": error.context.target}
            )
            raise

    async def _initialize(self, config: Mapping[str, Any] | None) -> None:
        settings = load_settings(self._base, config)
        async with self._lock:
            runtime = build_runtime(settings, clock=self._clock, rng=self._rng, sleep=self._sleep)
            fields = ContextFields("initialize", None, settings.breaker_name, settings.datacenter)
            probe = asyncio.ensure_future(runtime.probe_leader(fields))
            self._probe = probe
            try:
                leader, error = await probe
            except asyncio.CancelledError:
                runtime.dispose()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our caller was cancelled
                error = InfraUnavailableError(
                    _ABORTED, context=make_context(fields, InfraUnavailableError, attempts=0)
                )
            except BaseException:
                runtime.dispose()
                raise
            finally:
                self._probe = None
            if error is not None:
                runtime.dispose()
                raise error
            self._install(runtime)
        if not leader:
            handler_log.warning(
                "Consul at %s answered but reports no cluster leader",
                settings.base_url,
                extra={"target": settings.breaker_name},
            )
        handler_log.info(
            "initialized: %s, pool %d, breaker %s",
            settings.base_url,
            settings.max_concurrent_operations,
            settings.breaker_name,
            extra={"target": settings.breaker_name, "leader": leader},
        )

    def _install(self, runtime: Runtime) -> None:
        """Serve from ``runtime`` from now on; the previous one finishes what it admitted."""
        settings = runtime.settings
        # Breakers survive a re-initialize that talks to the same Consul with the same breaker
        # settings: re-reading the configuration does not end an outage. Anything else is a
        # different failure domain and starts with fresh breakers.
        key = (settings.base_url, settings.breaker, settings.timeout_seconds)
        if key != self._breaker_key:
            self._breakers._init_circuit_breakers(
                settings.breaker,
                probe_timeout_seconds=settings.timeout_seconds,
                clock=self._clock,
                on_transition=self._breakers._cb_on_transition,
            )
            self._breaker_key = key
        # Created now, not on first use, so describe() shows it from the start.
        self._breakers.circuit_breaker(settings.datacenter)
        previous = self.runtime
        self.runtime = runtime
        self.state = "running"
        if previous is not None:
            previous.dispose()

    # -- shutdown ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        probe = self._probe
        if probe is not None and not probe.done():
            probe.cancel()  # a concurrent initialize() gives up and releases the lock
        async with self._lock:
            runtime = self.runtime
            if runtime is None:
                self.state = "shut_down"
                return
            self.state = "shutting_down"
            failed = 0
            try:
                # Locks released and maintained services deregistered while the pools still
                # take work; new envelopes are already refused.
                await runtime.run_closers()
                runtime.attempts.closing = True
                if self.in_flight:
                    self._drained = asyncio.Event()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._drained.wait(), runtime.settings.shutdown_grace_seconds
                        )
            finally:
                # Also when our caller is cancelled mid-drain: the shutdown completes at once.
                if self.in_flight:
                    failed = runtime.pool.abandon(shut_down_error)
                    failed += runtime.attempts.fail_sleepers()
                runtime.dispose()
                self.runtime = None
                self.state = "shut_down"
                self._drained = None
            # Background work (cache upkeep, renewals) was cancelled by dispose(); let it
            # unwind before shutdown() returns, so nothing of this runtime is left running.
            await runtime.long_polls.aclose()
            if failed:
                handler_log.warning(
                    "shutdown: grace period over, failed %d in-flight envelopes", failed
                )
            # One loop iteration: the failed envelopes observe their error, and the sockets
            # of the asyncio mode (closed from a loop callback) are closed before this returns.
            await asyncio.sleep(0)
        handler_log.info("shut down", extra={"target": runtime.settings.breaker_name})
