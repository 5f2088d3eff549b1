"""The circuit breaker: resilience4j's semantics, with Polly's rule for late outcomes.

Counting rule: *consecutive* failures. Every admitted attempt reports exactly one outcome; a
success resets the count, a failure adds one, and the breaker opens when the count is
``>= failure_threshold``; fewer failures in a row never open it, however many calls there
were. Chosen over a failure rate because a handler may see a handful of calls a minute, where
a rate window would need a minimum-calls guard to mean anything.

Every transition starts a new *generation*. A permit remembers the generation that admitted
it, and its outcome is dropped when the generation has moved on: a burst of failures opens the
breaker once, a late success cannot close an OPEN breaker, and a late failure cannot reopen a
fresh HALF_OPEN one.

Only the event-loop thread changes state: no locks, no awaits. A rejection returns ``None``
rather than raising: the caller raises a fresh error, so no traceback grows.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from typing import ClassVar

from handler_consul._clock import Clock, monotonic
from handler_consul._settings import BreakerSettings

__all__ = [
    "MAX_BREAKERS",
    "BreakerState",
    "CircuitBreaker",
    "MixinAsyncCircuitBreaker",
    "Permit",
    "TransitionListener",
]

_logger = logging.getLogger(__name__)
# Breakers kept at once (one per datacenter named): a bound on what envelopes create.
MAX_BREAKERS = 64


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionListener = Callable[[str, BreakerState, BreakerState], None]
"""Called as ``listener(breaker_name, old_state, new_state)`` once per transition, inside
it, on the loop: log or count there, never acquire a permit."""


_DEFAULTS = BreakerSettings()


class Permit:
    """One admitted attempt. Resolve it exactly once; later calls do nothing.

    None of the methods raise, so a permit is safe to resolve from a ``finally`` block while
    ``CancelledError`` or ``KeyboardInterrupt`` is propagating.
    """

    __slots__ = ("_breaker", "_generation", "_started_at")

    def __init__(self, breaker: CircuitBreaker | None, generation: int, started_at: float) -> None:
        self._breaker = breaker
        self._generation = generation
        self._started_at = started_at

    def success(self, duration_seconds: float) -> None:
        """The call worked; the slow-call rule may still count it as a failure."""
        breaker = self._take()
        if breaker is not None:
            breaker._settle_success(self, duration_seconds)

    def failure(self) -> None:
        """The call failed in a way that says Consul is unwell."""
        breaker = self._take()
        if breaker is not None:
            breaker._settle_failure(self)

    def ignore(self) -> None:
        """Cancelled, or an error that says nothing about Consul: free the slot, decide nothing."""
        breaker = self._take()
        if breaker is not None:
            breaker._settle_ignore(self)

    def _take(self) -> CircuitBreaker | None:
        # Handing the breaker over once is what makes "one outcome per attempt" hold.
        breaker, self._breaker = self._breaker, None
        return breaker


# What a disabled breaker hands out: it has no breaker, so resolving it does nothing.
_UNGUARDED = Permit(None, -1, 0.0)


class _State:
    """What one state does with a new caller and with each kind of outcome (the State pattern).

    Outcomes reach a state only from permits of the current generation.
    """

    __slots__ = ()
    name: ClassVar[BreakerState]

    def forgettable(self) -> bool:
        """Whether a breaker in this state may be dropped: it remembers nothing."""
        return False

    def acquire(self, breaker: CircuitBreaker) -> Permit | None:
        raise NotImplementedError

    def on_success(self, breaker: CircuitBreaker, permit: Permit) -> None:
        pass

    def on_failure(self, breaker: CircuitBreaker, permit: Permit) -> None:
        pass

    def on_ignore(self, breaker: CircuitBreaker, permit: Permit) -> None:
        pass

    def expire(self, breaker: CircuitBreaker) -> None:
        """Apply any deadline that has passed without a caller; only HALF_OPEN has one."""


class _Closed(_State):
    __slots__ = ("consecutive_failures",)
    name = BreakerState.CLOSED

    def forgettable(self) -> bool:
        return self.consecutive_failures == 0

    def __init__(self) -> None:
        self.consecutive_failures = 0

    def acquire(self, breaker: CircuitBreaker) -> Permit | None:
        # No clock read: the common path costs one small allocation.
        return Permit(breaker, breaker._generation, 0.0)

    def on_success(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.consecutive_failures = 0

    def on_failure(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= breaker.config.failure_threshold:
            breaker._trip(reopen=False)


class _Open(_State):
    __slots__ = ("until",)
    name = BreakerState.OPEN

    def __init__(self, until: float) -> None:
        self.until = until  # math.inf when forced open

    def acquire(self, breaker: CircuitBreaker) -> Permit | None:
        if breaker._clock() < self.until:
            breaker._rejections += 1
            return None
        # The first caller after the wait moves it to HALF_OPEN and asks again there.
        breaker._enter(_HalfOpen())
        return breaker._state.acquire(breaker)


class _HalfOpen(_State):
    __slots__ = ("probes", "successes")
    name = BreakerState.HALF_OPEN

    def __init__(self) -> None:
        self.probes: list[Permit] = []  # outstanding, oldest first
        self.successes = 0

    def acquire(self, breaker: CircuitBreaker) -> Permit | None:
        self.expire(breaker)
        if breaker._state is not self:  # a hung probe just reopened it
            return breaker._state.acquire(breaker)
        if len(self.probes) + self.successes >= breaker.config.half_open_max_calls:
            breaker._rejections += 1
            return None
        permit = Permit(breaker, breaker._generation, breaker._clock())
        self.probes.append(permit)
        return permit

    def on_success(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.probes.remove(permit)
        self.successes += 1
        if self.successes >= breaker.config.half_open_max_calls:
            breaker._close()

    def on_failure(self, breaker: CircuitBreaker, permit: Permit) -> None:
        breaker._trip(reopen=True)

    def on_ignore(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.probes.remove(permit)  # the slot goes to the next caller

    def expire(self, breaker: CircuitBreaker) -> None:
        timeout = breaker.probe_timeout_seconds
        if timeout is None or not self.probes:
            return
        if breaker._clock() - self.probes[0]._started_at >= timeout:
            breaker._failures += 1  # the hung probe; its own late outcome will be stale
            breaker._trip(reopen=True)


class CircuitBreaker:
    """One breaker, driven by permits: ``try_acquire()`` before a call, resolve after it.

    ``state`` reports OPEN until a caller arrives after the reset timeout: the caller, not a
    reader, moves it to HALF_OPEN (so ``describe()`` never consumes a probe). Reading the
    state does expire a hung probe, since that decision is already due.
    """

    def __init__(
        self,
        name: str,
        config: BreakerSettings = _DEFAULTS,  # frozen, so sharing is safe
        *,
        probe_timeout_seconds: float | None = None,
        clock: Clock = monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        if probe_timeout_seconds is not None and not probe_timeout_seconds > 0:
            raise ValueError("probe_timeout_seconds must be positive or None")
        self.name = name
        self.config = config
        # A probe outstanding longer than this is a failure, so HALF_OPEN never sits with no
        # permits left (the handler passes its request timeout). None turns it off.
        self.probe_timeout_seconds = probe_timeout_seconds
        self._clock = clock
        self._on_transition = on_transition
        self._state: _State = _Closed()
        self._generation = 0
        self._open_wait = config.reset_timeout_seconds
        self._successes = 0
        self._failures = 0
        self._slow_calls = 0
        self._rejections = 0
        self._transitions = 0

    @property
    def state(self) -> BreakerState:
        """The state now; OPEN past its wait stays OPEN until a caller arrives."""
        self._state.expire(self)
        return self._state.name

    def try_acquire(self) -> Permit | None:
        """A permit for one attempt, or None when the breaker refuses it (the caller raises)."""
        if not self.config.enabled:
            return _UNGUARDED
        return self._state.acquire(self)

    def retry_after_seconds(self) -> float:
        """How long OPEN still refuses callers: 0.0 when not open, ``math.inf`` when forced.

        Infinity never fits inside a deadline, so a retry loop gives up at once; report it as
        "unknown" (None) in anything that becomes JSON.
        """
        state = self._state
        if not isinstance(state, _Open):
            return 0.0
        return max(0.0, state.until - self._clock())

    def force_open(self) -> None:
        """Refuse every caller until ``reset()``; a disabled breaker stays out of the way."""
        if self.config.enabled:
            self._enter(_Open(math.inf))

    def reset(self) -> None:
        """Close with fresh counts and the first wait; outcomes in flight no longer count."""
        if self.config.enabled:
            self._close()

    def snapshot(self) -> dict[str, object]:
        """The state and counters as JSON-ready values, for ``describe()``."""
        name = self.state  # expires a hung probe first
        state = self._state
        forced = isinstance(state, _Open) and state.until == math.inf
        return {
            "name": self.name,
            "state": name.value,
            "enabled": self.config.enabled,
            "forced_open": forced,
            "consecutive_failures": (
                state.consecutive_failures if isinstance(state, _Closed) else 0
            ),
            "failure_threshold": self.config.failure_threshold,
            "retry_after_seconds": None if forced else self.retry_after_seconds(),
            "reset_timeout_seconds": self._open_wait,
            "half_open_in_flight": len(state.probes) if isinstance(state, _HalfOpen) else 0,
            "total_successes": self._successes,
            "total_failures": self._failures,
            "total_slow_calls": self._slow_calls,
            "total_rejections": self._rejections,
            "transitions": self._transitions,
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.name.value}>"

    # -- outcomes, from Permit -------------------------------------------------------------

    def _settle_success(self, permit: Permit, duration_seconds: float) -> None:
        if permit._generation != self._generation:
            return
        slow = self.config.slow_call_duration_seconds
        if slow is not None and duration_seconds > slow:
            self._slow_calls += 1
            self._settle_failure(permit)
            return
        self._successes += 1
        self._state.on_success(self, permit)

    def _settle_failure(self, permit: Permit) -> None:
        if permit._generation != self._generation:
            return
        self._failures += 1
        self._state.on_failure(self, permit)

    def _settle_ignore(self, permit: Permit) -> None:
        if permit._generation == self._generation:
            self._state.on_ignore(self, permit)

    # -- transitions, from the states ------------------------------------------------------

    def _trip(self, *, reopen: bool) -> None:
        """Open; a reopen from HALF_OPEN waits longer than the last time, up to the cap."""
        if reopen:
            cap = max(self.config.max_reset_timeout_seconds, self.config.reset_timeout_seconds)
            self._open_wait = min(cap, self._open_wait * self.config.reset_timeout_multiplier)
        self._enter(_Open(self._clock() + self._open_wait))

    def _close(self) -> None:
        self._open_wait = self.config.reset_timeout_seconds
        self._enter(_Closed())

    def _enter(self, state: _State) -> None:
        old = self._state.name
        self._state = state
        self._generation += 1  # every permit admitted before now is stale
        if state.name is old:
            return  # a reset while CLOSED or a force while OPEN: fresh, but no transition
        self._transitions += 1
        if self._on_transition is not None:
            try:
                self._on_transition(self.name, old, state.name)
            except Exception:
                # A broken listener must not wedge the breaker or escape a permit's finally.
                _logger.exception("breaker %s: transition listener failed", self.name)


class MixinAsyncCircuitBreaker:
    """One breaker per datacenter, named ``consul.<dc or default>``, for the handler class.

    Created on first use; the host calls ``_init_circuit_breakers`` from ``__init__``; every
    attribute this mixin owns starts with ``_cb_``.
    """

    _cb_config: BreakerSettings
    _cb_probe_timeout: float | None
    _cb_clock: Clock
    _cb_on_transition: TransitionListener | None
    _cb_breakers: dict[str, CircuitBreaker]

    def _init_circuit_breakers(
        self,
        config: BreakerSettings,
        *,
        probe_timeout_seconds: float | None = None,
        clock: Clock = monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self._cb_config = config
        self._cb_probe_timeout = probe_timeout_seconds
        self._cb_clock = clock
        self._cb_on_transition = on_transition
        self._cb_breakers = {}

    def circuit_breaker(self, datacenter: str | None = None) -> CircuitBreaker:
        """The breaker for ``datacenter``; None (or "") is the agent's own datacenter.

        At most ``MAX_BREAKERS``: past that the oldest that remembers nothing (closed, no
        failure) makes room; one that remembers is never dropped, and when all do, new names
        share ``consul.*`` (no datacenter has that name).
        """
        name = f"consul.{datacenter or 'default'}"
        breaker = self._cb_breakers.get(name)
        if breaker is None:
            if len(self._cb_breakers) >= MAX_BREAKERS and not self._cb_make_room():
                name = "consul.*"
                if name in self._cb_breakers:
                    return self._cb_breakers[name]
            breaker = CircuitBreaker(
                name,
                self._cb_config,
                probe_timeout_seconds=self._cb_probe_timeout,
                clock=self._cb_clock,
                on_transition=self._cb_on_transition,
            )
            self._cb_breakers[name] = breaker
        return breaker

    def _cb_make_room(self) -> bool:
        idle = (n for n, b in self._cb_breakers.items() if b._state.forgettable())
        name = next(idle, None)
        if name is not None:
            del self._cb_breakers[name]
        return name is not None

    def force_open_circuit(self, datacenter: str | None = None) -> None:
        self.circuit_breaker(datacenter).force_open()

    def reset_circuit(self, datacenter: str | None = None) -> None:
        self.circuit_breaker(datacenter).reset()

    def circuit_breaker_states(self) -> dict[str, dict[str, object]]:
        """Every breaker's snapshot by name, for ``describe()``."""
        return {name: breaker.snapshot() for name, breaker in self._cb_breakers.items()}
