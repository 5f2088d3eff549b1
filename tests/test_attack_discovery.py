"""Adversarial review of service discovery: maintained registrations, endpoint picking, the
discovery cache and multi-datacenter routing, attacked against real Consul agents.

Every test here states a promise of docs/patterns/service_discovery.md; a failing one is a
finding of the review (see the report), a passing one a promise that held.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness import ConsulAgent
from support import execute_ok, uniq

from handler_consul import (
    HandlerConsul,
    InfraError,
    InfraUnavailableError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def agent_services(agent: ConsulAgent) -> dict[str, Any]:
    resp = agent.request("GET", "/v1/agent/services", timeout=2.0)
    assert resp.status == 200, resp.text
    return dict(resp.json())


def agent_register(agent: ConsulAgent, body: dict[str, Any]) -> None:
    resp = agent.request("PUT", "/v1/agent/service/register", body)
    assert resp.status == 200, resp.text


def agent_deregister(agent: ConsulAgent, sid: str) -> None:
    resp = agent.request("PUT", f"/v1/agent/service/deregister/{sid}")
    assert resp.status == 200, resp.text


# -- 1. maintained registrations ------------------------------------------------------------


async def test_concurrent_maintained_registers_of_one_id_leave_no_upkeep_behind_deregister(
    make_tuned_handler: Any, consul_agent: ConsulAgent
) -> None:
    """Many ``register`` envelopes with ``maintain: true`` for the same ID at once, then a
    deregister. The promise: deregister ends the upkeep, so nothing brings the service back.

    Maintenance.maintain() does ``await self.forget(id)`` and only then
    ``self._kept[id] = kept``: while one call waits in forget() for the previous upkeep to
    stop, another call finds the slot empty and installs its own upkeep, which the first one
    then overwrites without stopping it. That orphaned task is in no registry, so deregister
    cannot stop it: its next heartbeat is answered 404 and it registers the service again."""
    handler = await make_tuned_handler(consul_agent)
    for attempt in range(5):
        sid = uniq("orphan")
        payload = {"service_id": sid, "name": sid, "check": {"ttl": "1s"}, "maintain": True}
        await asyncio.gather(
            *(
                handler.execute({"operation": "consul.register", "payload": payload})
                for _ in range(24)
            )
        )
        assert [m["service_id"] for m in handler.describe()["maintained"]].count(sid) == 1
        await execute_ok(handler, "deregister", service_id=sid)
        assert sid not in await asyncio.to_thread(agent_services, consul_agent)
        # Three heartbeats (ttl/3) and a restore would long have happened by now.
        await asyncio.sleep(1.5)
        back = sid in await asyncio.to_thread(agent_services, consul_agent)
        assert not back, (
            f"attempt {attempt}: {sid} was deregistered through the handler and is back: an "
            "upkeep task nobody can stop registered it again"
        )
        # Maintenance threads no more upkeep tasks than maintained services.
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == f"maintain {sid}"]
        assert tasks == [], f"attempt {attempt}: {len(tasks)} upkeep task(s) still running"


# -- 4. datacenters and their breakers ---------------------------------------------------------


async def _fail_once(handler: HandlerConsul, datacenter: str) -> BaseException:
    with pytest.raises(InfraError) as caught:
        await handler.execute(
            {"operation": "consul.services", "payload": {"datacenter": datacenter}}
        )
    return caught.value


async def test_a_stream_of_datacenter_names_cannot_reset_an_open_breaker(
    make_tuned_handler: Any, counting_proxy: Any
) -> None:
    """dc "ghost" is down (the agent answers "No path to datacenter"): its breaker opens and
    its envelopes fail fast with nothing sent. The promise bounds breakers at 64 by dropping
    "the oldest one that remembers nothing". An attacker who names 64 other unknown
    datacenters (each failing once, so none of them remembers nothing) must not be able to
    evict the open breaker and reach the failing datacenter again.

    CircuitBreakerMixin._cb_make_room falls back to ``next(iter(self._cb_breakers))`` (the
    oldest, whatever its state) when no breaker is forgettable: the open breaker goes."""
    handler = await make_tuned_handler(
        counting_proxy,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 2, "reset_timeout_seconds": 60.0},
    )
    for _ in range(2):
        await _fail_once(handler, "ghost")
    assert handler.describe()["circuit_breakers"]["consul.ghost"]["state"] == "open"
    counting_proxy.reset()
    rejected = await _fail_once(handler, "ghost")
    assert isinstance(rejected, InfraUnavailableError)
    assert "circuit breaker" in str(rejected)
    assert counting_proxy.paths == []  # fast fail: nothing sent

    for n in range(64):
        await _fail_once(handler, f"flood{n}")
    breakers = handler.describe()["circuit_breakers"]
    # Memory stays bounded: 64 breakers, plus the one new names share once none can go.
    assert len(breakers) <= 65
    assert "consul.*" in breakers

    counting_proxy.reset()
    after = await _fail_once(handler, "ghost")
    assert counting_proxy.paths == [], (
        f"the open breaker of 'ghost' was evicted by a stream of datacenter names: the "
        f"envelope was sent ({counting_proxy.paths}) and failed with {after!r}"
    )


# -- 2. endpoint picking -------------------------------------------------------------------


async def _three(handler: HandlerConsul, **extra: Any) -> tuple[str, list[str]]:
    name = uniq("atk")
    ids = []
    for n, suffix in enumerate("abc", start=1):
        sid = f"{name}-{suffix}"
        ids.append(sid)
        await execute_ok(
            handler, "register", service_id=sid, name=name, port=7100 + n, tags=[suffix],
            check={"ttl": "10m", "status": "passing"}, **extra,
        )  # fmt: skip
    return name, ids


async def test_round_robin_is_exactly_fair_under_300_concurrent_envelopes(handler):
    name, ids = await _three(handler)
    results = await asyncio.gather(
        *(
            handler.execute({"operation": "consul.endpoint", "payload": {"service": name}})
            for _ in range(300)
        )
    )
    counts = {sid: 0 for sid in ids}
    for response in results:
        counts[response.result["instance_id"]] += 1
    assert counts == {sid: 100 for sid in ids}, counts


async def test_least_connections_lease_counts_never_leak_on_exception_or_cancellation(handler):
    name, ids = await _three(handler)
    balancer = handler._services.balancer

    class Boom(Exception):
        pass

    async def hold_then(fail: str, started: asyncio.Event) -> None:
        async with handler.lease(name, strategy="least_connections"):
            started.set()
            if fail == "raise":
                raise Boom
            await asyncio.sleep(3600)

    for _ in range(20):
        with pytest.raises(Boom):
            await hold_then("raise", asyncio.Event())
    tasks, events = [], []
    for _ in range(30):
        ev = asyncio.Event()
        events.append(ev)
        tasks.append(asyncio.create_task(hold_then("hang", ev)))
    await asyncio.gather(*(e.wait() for e in events))
    assert sorted(balancer._held.values()) == [10, 10, 10], balancer._held
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Also cancelled while the lease is still being read (before anything was held).
    early = [asyncio.create_task(hold_then("hang", asyncio.Event())) for _ in range(30)]
    await asyncio.sleep(0)
    for t in early:
        t.cancel()
    await asyncio.gather(*early, return_exceptions=True)
    assert balancer._held == {}, balancer._held
    # Held leases spread: three at once land on three different instances.
    async with (
        handler.lease(name, strategy="least_connections") as a,
        handler.lease(name, strategy="least_connections") as b,
        handler.lease(name, strategy="least_connections") as c,
    ):
        assert sorted([a["instance_id"], b["instance_id"], c["instance_id"]]) == ids


async def test_fallback_is_not_used_while_a_healthy_instance_exists(handler):
    name, ids = await _three(handler)
    for strategy in ("round_robin", "random", "weighted"):
        for cache in (True, False):
            result = await execute_ok(
                handler, "endpoint", service=name, strategy=strategy, cache=cache,
                fallback="10.9.9.9:1",
            )  # fmt: skip
            assert result["source"] != "fallback", result
            assert result["instance_id"] in ids, result
    # ... and with every instance critical, the fallback and only it.
    for sid in ids:
        await execute_ok(handler, "check_update", check_id=f"service:{sid}", status="critical")
    result = await execute_ok(
        handler, "endpoint", service=name, fallback="10.9.9.9:1", passing_only=False, cache=False
    )
    assert (result["source"], result["address"], result["port"]) == ("fallback", "10.9.9.9", 1)


# -- 3. the discovery cache ----------------------------------------------------------------


async def test_filters_are_part_of_the_cache_key(handler, consul_agent):
    name, ids = await _three(handler)
    await execute_ok(handler, "check_update", check_id=f"service:{ids[2]}", status="warning")
    agent_node = (await asyncio.to_thread(consul_agent.request, "GET", "/v1/agent/self")).json()[
        "Config"
    ]["NodeName"]

    async def seen(**filters: Any) -> list[str]:
        result = await execute_ok(handler, "discover", service=name, **filters)
        return sorted(i["id"] for i in result["instances"])

    # Interleaved so that every query is asked while the others are cached.
    for _ in range(2):
        assert await seen() == ids[:2]
        assert await seen(passing_only=False) == ids
        assert await seen(tags=["a"]) == ids[:1]
        assert await seen(tags=["c"], passing_only=False) == ids[2:]
        assert await seen(tags=["a", "b"]) == []
        assert await seen(node_meta={"nothing": "here"}) == []
        assert await seen(near=agent_node) == ids[:2]
        assert await seen(near="_agent", passing_only=False) == ids


async def _until_seen(handler: HandlerConsul, name: str, want: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = await execute_ok(handler, "discover", service=name)
        if want(result):
            return time.monotonic() - start
        await asyncio.sleep(0.002)
    raise AssertionError(f"not seen within {timeout}s")


async def test_cache_sees_add_critical_and_deregister_within_100ms(handler, consul_agent):
    name, ids = await _three(handler)
    await execute_ok(handler, "discover", service=name)  # cached and watched from now
    await asyncio.sleep(0.1)
    lags = []
    agent_register(consul_agent, {"ID": f"{name}-d", "Name": name, "Port": 7200})
    lags.append(await _until_seen(handler, name, lambda r: len(r["instances"]) == 4, 1.0))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(
        consul_agent.request, "PUT", f"/v1/agent/check/update/service:{ids[0]}",
        {"Status": "critical"},
    )  # fmt: skip
    lags.append(await _until_seen(handler, name, lambda r: len(r["instances"]) == 3, 1.0))
    await asyncio.sleep(0.05)
    agent_deregister(consul_agent, ids[1])
    lags.append(await _until_seen(handler, name, lambda r: len(r["instances"]) == 2, 1.0))
    assert max(lags) < 0.1, lags


async def test_cancelling_the_first_reader_does_not_fail_the_stampede(
    make_tuned_handler: Any, toxiproxy: Any
) -> None:
    """Forty readers of one new query at once: one request, and cancelling the reader that
    started it leaves the others their answer."""
    handler = await make_tuned_handler(toxiproxy)
    name, ids = await _three(handler)
    toxiproxy.latency(300)
    try:
        first = asyncio.create_task(
            handler.execute({"operation": "consul.discover", "payload": {"service": name}})
        )
        await asyncio.sleep(0.05)
        others = [
            asyncio.create_task(
                handler.execute({"operation": "consul.discover", "payload": {"service": name}})
            )
            for _ in range(40)
        ]
        await asyncio.sleep(0.05)
        first.cancel()
        results = await asyncio.gather(*others)
    finally:
        toxiproxy.clear()
    assert all(sorted(i["id"] for i in r.result["instances"]) == ids for r in results)
    with pytest.raises(asyncio.CancelledError):
        await first


# -- 1b. maintained registrations across re-initialize and a cancelled re-register -----------


def _check_status(agent: ConsulAgent, check_id: str) -> str | None:
    resp = agent.request("GET", "/v1/agent/checks", timeout=1.0)
    check = resp.json().get(check_id) if resp.status == 200 else None
    return None if check is None else str(check["Status"])


def _upkeep_tasks(sid: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"maintain {sid}" and not t.done()]


async def test_reinitialize_hands_over_maintenance_with_one_upkeep_and_no_resurrection(
    make_tuned_handler: Any, consul_agent: ConsulAgent
) -> None:
    from support import tuned

    handler = await make_tuned_handler(consul_agent)
    sid = uniq("reinit")
    await execute_ok(
        handler, "register", service_id=sid, name=sid, check={"ttl": "1s"}, maintain=True
    )
    for _ in range(3):
        await handler.initialize(tuned(consul_agent))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    assert len(_upkeep_tasks(sid)) == 1, _upkeep_tasks(sid)
    samples = []
    for _ in range(12):  # 3 s: three TTLs
        samples.append(await asyncio.to_thread(_check_status, consul_agent, f"service:{sid}"))
        await asyncio.sleep(0.25)
    assert set(samples) == {"passing"}, samples
    await execute_ok(handler, "deregister", service_id=sid)
    await asyncio.sleep(1.2)
    assert sid not in await asyncio.to_thread(agent_services, consul_agent)
    assert _upkeep_tasks(sid) == []


async def test_a_cancelled_re_register_leaves_the_maintained_registration_maintained(
    make_tuned_handler: Any, toxiproxy: Any, consul_agent: ConsulAgent
) -> None:
    """A service is maintained; the caller re-registers it (same definition, maintain: true)
    and that envelope is cancelled while the register request is in flight. Either the new
    registration is maintained or the old upkeep goes on: the service must not be left
    registered with a TTL check nobody passes.

    serve_register ends the old upkeep (maintainer.forget) before sending the register, and
    starts the new one only after the register and the first pass returned: cancelled in
    between, nothing maintains the service any more, and its check goes critical."""
    handler = await make_tuned_handler(toxiproxy)
    sid = uniq("cancel")
    body = {"service_id": sid, "name": sid, "check": {"ttl": "1s"}, "maintain": True}
    await execute_ok(handler, "register", **body)
    toxiproxy.latency(400)
    try:
        pending = asyncio.create_task(
            handler.execute({"operation": "consul.register", "payload": body})
        )
        await asyncio.sleep(0.2)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    finally:
        toxiproxy.clear()
    await asyncio.sleep(2.5)  # past the 1 s TTL twice over
    status = await asyncio.to_thread(_check_status, consul_agent, f"service:{sid}")
    maintained = [m["service_id"] for m in handler.describe()["maintained"]]
    assert status == "passing", f"after a cancelled re-register: check {status!r}"
    assert sid in maintained, f"after a cancelled re-register: maintained {maintained}"


async def test_deregister_racing_a_maintained_register_in_flight_leaves_it_deregistered(
    make_tuned_handler: Any, toxiproxy: Any, consul_agent: ConsulAgent
) -> None:
    """A maintained register is in flight (its register landed, its first pass not yet
    answered) when a deregister is sent, which removes the service ("deregistered": true)
    and returns after the register envelope did. Deregister came after the registration it
    removed, so nothing may bring the service back.

    serve_deregister's forget() finds no upkeep yet (maintain() runs only after the first
    pass returns), so the upkeep starts after the removal; its first heartbeat is answered
    404 and it registers the service again."""
    handler = await make_tuned_handler(toxiproxy)
    sid = uniq("race")
    body = {"service_id": sid, "name": sid, "check": {"ttl": "1s"}, "maintain": True}
    toxiproxy.latency(300)  # answers come 300 ms late; requests land at once
    try:
        register = asyncio.create_task(
            handler.execute({"operation": "consul.register", "payload": body})
        )
        await asyncio.sleep(0.4)  # the register landed; the first pass is in flight
        assert sid in await asyncio.to_thread(agent_services, consul_agent)
        deregistered = await execute_ok(handler, "deregister", service_id=sid)
        assert register.done()  # the register envelope returned first
        assert (await register).status == "success"
    finally:
        toxiproxy.clear()
    assert deregistered["deregistered"] is True
    await asyncio.sleep(1.5)
    back = sid in await asyncio.to_thread(agent_services, consul_agent)
    maintained = [m["service_id"] for m in handler.describe()["maintained"]]
    assert not back, "deregistered (true) after the register returned, yet registered again"
    assert sid not in maintained, maintained
