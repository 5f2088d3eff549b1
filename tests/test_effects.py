"""The Effects a loop-side operation gets: the envelope's breaker, retries, pools and
translation, against a real agent. (Envelopes reach them through ``Operation.serve``; built
here directly, for one envelope of a made-up operation.)"""

from __future__ import annotations

from typing import Any

import pytest
from harness import ConsulAgent
from support.envelopes import unique_key
from support.handlers import MakeHandler

from handler_consul import HandlerConsul, InfraUnavailableError
from handler_consul._clock import monotonic
from handler_consul._effects import EnvelopeEffects
from handler_consul._envelope import new_correlation_id
from handler_consul._errors import ContextFields
from handler_consul._operations.settle import settle


def effects_for(
    handler: HandlerConsul, name: str, *, datacenter: str | None = None, timeout: float = 5.0
) -> EnvelopeEffects:
    """What execute() builds for an envelope of ``name`` served on the loop."""
    runtime = handler._lifecycle.runtime
    assert runtime is not None
    fields = ContextFields(
        name, new_correlation_id(), f"consul.{datacenter or 'default'}", datacenter
    )
    breaker = handler.circuit_breaker(datacenter)
    return EnvelopeEffects(runtime, breaker, fields, monotonic() + timeout, None, monotonic)


def put_run(key: str, value: str) -> Any:
    async def run(client: Any, _: None) -> bool:
        return bool(await settle(client.kv.put(key, value)))

    return run


async def test_effects_reach_consul_through_the_breaker_of_their_datacenter(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    effects = effects_for(handler, "consul.example")
    key = unique_key()
    assert await effects.call(put_run(key, "v"), None) is True
    assert effects.attempts == 1
    assert effects.runtime is handler._lifecycle.runtime
    states = handler.describe()["circuit_breakers"]
    assert "consul.default" in str(states)


async def test_an_open_breaker_refuses_effects_like_envelopes(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    handler.force_open_circuit("dc9")
    effects = effects_for(handler, "consul.example", datacenter="dc9", timeout=0.3)
    with pytest.raises(InfraUnavailableError) as info:
        await effects.call(put_run(unique_key(), "v"), None)
    assert info.value.context.target == "consul.dc9"
    assert info.value.context.operation == "consul.example"
