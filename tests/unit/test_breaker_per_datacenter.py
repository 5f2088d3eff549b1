"""One breaker per datacenter, named ``consul.<dc or default>``, through the mixin the
handler uses (fake clock)."""

from __future__ import annotations

from support import CLOSED, OPEN, FakeClock, TransitionLog, fail

from handler_consul import BreakerSettings
from handler_consul._breaker import MixinAsyncCircuitBreaker


class Host(MixinAsyncCircuitBreaker):
    def __init__(self, clock: FakeClock, log: TransitionLog) -> None:
        self._init_circuit_breakers(
            BreakerSettings(failure_threshold=1), clock=clock, on_transition=log
        )


def test_one_breaker_per_datacenter_named_consul_dc() -> None:
    log = TransitionLog()
    host = Host(FakeClock(), log)
    assert host.circuit_breaker().name == "consul.default"
    assert host.circuit_breaker("") is host.circuit_breaker(None)
    assert host.circuit_breaker("dc1").name == "consul.dc1"
    assert host.circuit_breaker("dc1") is host.circuit_breaker("dc1")
    fail(host.circuit_breaker("dc1"), 1)
    assert host.circuit_breaker("dc1").state is OPEN
    assert host.circuit_breaker("dc2").state is CLOSED
    assert log.events == [("consul.dc1", "closed", "open")]


def test_mixin_manual_control_and_states() -> None:
    host = Host(FakeClock(), TransitionLog())
    host.force_open_circuit("dc2")
    host.circuit_breaker()
    states = host.circuit_breaker_states()
    assert sorted(states) == ["consul.dc2", "consul.default"]
    assert states["consul.dc2"]["state"] == "open"
    assert states["consul.default"]["state"] == "closed"
    host.reset_circuit("dc2")
    assert host.circuit_breaker_states()["consul.dc2"]["state"] == "closed"


def test_mixin_keeps_its_attributes_under_cb_prefix() -> None:
    host = Host(FakeClock(), TransitionLog())
    assert all(name.startswith("_cb_") for name in vars(host))


def test_breakers_are_bounded_and_one_that_remembers_is_never_dropped() -> None:
    """Envelopes name datacenters: however many names, at most MAX_BREAKERS breakers."""
    from handler_consul._breaker import MAX_BREAKERS

    host = Host(FakeClock(), TransitionLog())
    fail(host.circuit_breaker("down"), 1)  # remembers an outage
    for n in range(MAX_BREAKERS * 3):
        host.circuit_breaker(f"dc{n}")
    states = host.circuit_breaker_states()
    assert len(states) == MAX_BREAKERS
    assert states["consul.down"]["state"] == "open"
    assert f"consul.dc{MAX_BREAKERS * 3 - 1}" in states
    # All remember an outage: none is dropped (a stream of names must not reset an open
    # breaker); new names share one breaker, ``consul.*``, so memory stays bounded.
    # 63 names take the 63 forgettable slots; the 64th finds none and gets consul.*.
    for n in range(MAX_BREAKERS):
        fail(host.circuit_breaker(f"out{n}"), 1)
    states = host.circuit_breaker_states()
    assert len(states) == MAX_BREAKERS + 1
    assert states["consul.down"]["state"] == "open"
    assert states["consul.*"]["state"] == "open"
    shared = host.circuit_breaker("yet-another")
    assert shared is host.circuit_breaker("and-another")
    assert shared.name == "consul.*"
    assert len(host.circuit_breaker_states()) == MAX_BREAKERS + 1
