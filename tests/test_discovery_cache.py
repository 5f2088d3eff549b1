"""The discovery cache against real agents: Consul's changes seen within 100 ms, the last
good answer served (with its age) while the agent is down, then the fallback, then a typed
error; and one watch per query, shared by discover and endpoint."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest
from harness import ConsulAgent
from support import MakeHandler, envelope, execute_ok, uniq

from handler_consul import HandlerConsul, InfraConnectionError, InfraUnavailableError

pytestmark = pytest.mark.usefixtures("clean_consul_env")

FALLBACK = "10.9.9.9:8080"


async def register_three(handler: HandlerConsul, name: str) -> list[str]:
    ids = [f"{name}-{n}" for n in range(3)]
    for n, sid in enumerate(ids):
        await execute_ok(handler, "register", service_id=sid, name=name, port=7000 + n)
    return ids


async def test_agent_killed_endpoint_serves_the_cache_with_its_age_then_the_fallback(
    make_tuned_handler: Any, fresh_consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(
        fresh_consul_agent,
        cache={"max_staleness_seconds": 2.0},
        retry={"max_attempts": 1},
    )
    name = uniq("down")
    ids = await register_three(handler, name)
    first = await execute_ok(handler, "endpoint", service=name, fallback=FALLBACK)
    assert (first["source"], first["age_seconds"]) == ("consul", 0.0)

    fresh_consul_agent.kill()
    killed = time.monotonic()

    # The watch notices at once (its connection is gone); from then on the cache answers,
    # with the age of its last good answer, and the rotation goes on over the same three.
    ages, seen = [], []
    while time.monotonic() - killed < 1.5:
        result = await execute_ok(handler, "endpoint", service=name, fallback=FALLBACK)
        if result["source"] == "cache":
            ages.append(result["age_seconds"])
            seen.append(result["instance_id"])
        await asyncio.sleep(0.05)
    assert len(ages) >= 10, ages
    assert 0 < ages[0] < ages[-1] < 2.0
    assert ages == sorted(ages)
    assert set(seen) == set(ids)
    found = await execute_ok(handler, "discover", service=name)
    assert (found["source"], sorted(i["id"] for i in found["instances"])) == ("cache", ids)

    # Past the staleness: the fallback, and without one a typed error that says why.
    await asyncio.sleep(max(0.0, killed + 2.6 - time.monotonic()))
    late = await execute_ok(handler, "endpoint", service=name, fallback=FALLBACK)
    assert late == {
        "service": name,
        "address": "10.9.9.9",
        "port": 8080,
        "instance_id": None,
        "source": "fallback",
        "age_seconds": None,
    }
    for op in ("endpoint", "discover"):
        with pytest.raises(InfraUnavailableError) as caught:
            await handler.execute(envelope(op, service=name))
        assert "cache.max_staleness_seconds" in caught.value.message
        assert caught.value.context.operation == f"consul.{op}"


async def test_agent_down_and_nothing_cached_is_the_fallback_or_a_connection_error(
    make_tuned_handler: Any, fresh_consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(fresh_consul_agent, retry={"max_attempts": 1})
    fresh_consul_agent.kill()
    name = uniq("never")
    result = await execute_ok(handler, "endpoint", service=name, fallback=FALLBACK)
    assert (result["source"], result["address"], result["port"]) == ("fallback", "10.9.9.9", 8080)
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(envelope("endpoint", service=name))
    assert caught.value.context.operation == "consul.endpoint"


async def test_discover_and_endpoint_share_one_watch_per_query(handler: HandlerConsul) -> None:
    name = uniq("shared")
    await register_three(handler, name)
    before = handler.describe()["cache"]["entries"]
    for _ in range(5):
        await execute_ok(handler, "discover", service=name)
        await execute_ok(handler, "endpoint", service=name, strategy="random")
    await execute_ok(handler, "discover", service=name, tags=["x"])  # another query
    await execute_ok(handler, "discover", service=name, cache=False)  # none at all
    assert handler.describe()["cache"]["entries"] == before + 2


# -- freshness ------------------------------------------------------------------------------

CHANGES = 60
BOUND_SECONDS = 0.100


def _change(agent: ConsulAgent, method: str, path: str, body: Any) -> float:
    resp = agent.request(method, path, body)
    assert resp.status == 200, resp.text
    return time.monotonic()


async def test_a_registration_change_is_seen_by_the_cache_within_100ms(
    make_handler: MakeHandler, consul_agent: ConsulAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    """Instances added, deregistered and gone critical, made at the agent directly; the
    time from Consul's answer to the change until a cached discover shows it.

    The changes come back to back, the worst case: a round that returned at once is
    followed by the next only after ``long_poll.min_interval_seconds`` (20 ms), so a change
    made inside that pause waits for it."""
    handler = await make_handler(consul_agent)
    name = uniq("fresh")
    expected: set[str] = set()
    assert (await execute_ok(handler, "discover", service=name))["instances"] == []
    latencies: list[float] = []
    for n in range(CHANGES):
        sid = f"{name}-{n // 3}"
        kind = n % 3
        if kind == 0:  # added, with a TTL check that passes
            body = {"ID": sid, "Name": name, "Check": {"TTL": "10m", "Status": "passing"}}
            changed = await asyncio.to_thread(
                _change, consul_agent, "PUT", "/v1/agent/service/register", body
            )
            expected.add(sid)
        elif kind == 1:  # gone critical: passing_only drops it
            body = {"Status": "critical", "Output": "down"}
            path = f"/v1/agent/check/update/service:{sid}"
            changed = await asyncio.to_thread(_change, consul_agent, "PUT", path, body)
            expected.discard(sid)
        else:  # passing again, then deregistered (only the deregistration is timed)
            path = f"/v1/agent/check/update/service:{sid}"
            await asyncio.to_thread(_change, consul_agent, "PUT", path, {"Status": "passing"})
            await seen(handler, name, expected | {sid})
            path = f"/v1/agent/service/deregister/{sid}"
            changed = await asyncio.to_thread(_change, consul_agent, "PUT", path, None)
        latencies.append(await seen(handler, name, expected) - changed)

    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    report = (
        f"cache change visibility over {len(latencies)} changes: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    with capsys.disabled():
        print(f"\n{report}")
    assert p99 <= BOUND_SECONDS, report


async def seen(handler: HandlerConsul, name: str, expected: set[str]) -> float:
    """When a cached discover first shows exactly ``expected`` (monotonic)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        result = await execute_ok(handler, "discover", service=name)
        if {i["id"] for i in result["instances"]} == expected:
            assert result["source"] == "consul"
            return time.monotonic()
        await asyncio.sleep(0.0005)
    raise AssertionError(f"the cache never showed {sorted(expected)}")


async def test_an_idle_query_is_dropped_and_everything_stops_at_shutdown(
    make_tuned_handler: Any, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent, cache={"idle_seconds": 1.0})
    runtime = handler._lifecycle.runtime
    assert runtime is not None
    name = uniq("idle")
    await register_three(handler, name)
    for query in ({"service": name}, {"service": name, "passing_only": False}):
        await execute_ok(handler, "discover", **query)
    assert handler.describe()["cache"]["entries"] == 2
    assert runtime.long_polls.tasks == 2

    # Only the first is read again; the other goes idle, and its watch stops.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and handler.describe()["cache"]["entries"] != 1:
        await execute_ok(handler, "discover", service=name)
        await asyncio.sleep(0.1)
    assert handler.describe()["cache"]["entries"] == 1
    await asyncio.sleep(0.05)  # the dropped watch's task unwinds its cancellation
    assert runtime.long_polls.tasks == 1

    await handler.shutdown()
    assert runtime.long_polls.tasks == 0
    assert len(runtime.cache) == 0
    assert handler.describe()["cache"] is None


async def test_a_tight_loop_of_cached_reads_lets_the_event_loop_run(handler: HandlerConsul):
    """A cached answer needs no I/O; every 8th read still yields, so other tasks run."""
    name = uniq("tight")
    await register_three(handler, name)
    await execute_ok(handler, "discover", service=name)  # the entry exists from here on
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    started = turns
    for _ in range(80):
        assert (await execute_ok(handler, "discover", service=name))["source"] == "consul"
    task.cancel()
    assert turns - started >= 80 // 8
