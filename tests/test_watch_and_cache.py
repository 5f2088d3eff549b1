"""consul.watch steps, handler.watch(), kv_get's cached consistency and handler.kv_update,
against real agents: blocking queries that end when the key changes (in the long-poll pool,
never a short slot), Consul's index rules, changes seen within 100 ms, answers served from
memory and kept fresh, stale answers with their age while the agent is down, and CAS updates
that never lose a write."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from typing import Any

import pytest
from harness import ConsulAgent
from support import envelope, execute_ok, uniq

from handler_consul import (
    HandlerConsul,
    InfraConflictError,
    InfraUnavailableError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def agent_put(agent: ConsulAgent, key: str, value: bytes) -> int:
    assert agent.request("PUT", f"/v1/kv/{key}", value).status == 200
    return int(agent.request("GET", f"/v1/kv/{key}").json()[0]["ModifyIndex"])


def pool_busy(handler: HandlerConsul) -> tuple[int, int]:
    info = handler.describe()
    return info["pool"]["busy"], info["long_polls"]["busy"]


# -- consul.watch ------------------------------------------------------------------------------


async def test_a_step_from_zero_reads_now_and_a_step_from_its_index_blocks_until_a_change(
    handler, consul_agent
):
    key = f"{uniq('watch')}/k"
    index = agent_put(consul_agent, key, b"one")
    now = await execute_ok(handler, "watch", kind="key", key=key)
    assert now["changed"] is True
    assert now["index"] == index
    assert (now["result"]["key"], now["result"]["value"], now["result"]["found"]) == (
        key,
        "one",
        True,
    )
    step = asyncio.ensure_future(
        handler.execute(envelope("watch", kind="key", key=key, index=index, wait=10))
    )
    await asyncio.sleep(0.5)
    assert not step.done()
    # It waits in the long-poll pool; the short pool's slots are all free.
    assert pool_busy(handler) == (0, 1)
    written = agent_put(consul_agent, key, b"two")
    result = (await asyncio.wait_for(step, 5)).result
    assert result["index"] == written
    assert result["changed"] is True
    assert result["result"]["value"] == "two"


async def test_a_step_whose_wait_ends_reports_no_change(handler, consul_agent):
    key = f"{uniq('watch')}/quiet"
    index = agent_put(consul_agent, key, b"v")
    started = time.monotonic()
    step = await execute_ok(handler, "watch", kind="key", key=key, index=index, wait=1)
    assert time.monotonic() - started >= 0.9
    assert (step["index"], step["changed"], step["result"]["value"]) == (index, False, "v")


async def test_a_prefix_step_has_kv_gets_recurse_shape(handler, consul_agent):
    prefix = f"{uniq('watch')}/"
    agent_put(consul_agent, prefix + "a", b"1")
    agent_put(consul_agent, prefix + "b", b"\xff")
    step = await execute_ok(handler, "watch", kind="prefix", prefix=prefix)
    got = await execute_ok(handler, "kv_get", key=prefix, recurse=True)
    assert step["result"] == got


async def test_an_index_ahead_of_consul_resets_to_zero(handler, consul_agent):
    """An index Consul has not reached (a restored snapshot, a new cluster) went backwards:
    the step returns the current state and index 0, so the next step reads afresh."""
    key = f"{uniq('watch')}/reset"
    agent_put(consul_agent, key, b"v")
    far = 10**12
    started = time.monotonic()
    step = await execute_ok(handler, "watch", kind="key", key=key, index=far, wait=5)
    # Consul answers at once for an index it has not reached... or waits; either way the
    # index it returns is behind the one sent, and the handler resets.
    assert step["index"] == 0
    assert step["changed"] is True
    assert step["result"]["value"] == "v"
    assert time.monotonic() - started < 6


async def test_steps_on_one_target_that_return_at_once_are_rate_limited(make_handler, consul_agent):
    handler = await make_handler(consul_agent, long_poll={"min_interval_seconds": 0.2})
    key = f"{uniq('watch')}/spin"
    agent_put(consul_agent, key, b"v")
    started = time.monotonic()
    for _ in range(6):
        # index 1 is always behind a live key's index: Consul answers at once every time.
        await execute_ok(handler, "watch", kind="key", key=key, index=1, wait=5)
    assert time.monotonic() - started >= 5 * 0.2 - 0.05


# -- handler.watch -----------------------------------------------------------------------------


async def test_watch_yields_now_then_each_change_and_nothing_else(handler, consul_agent):
    key = f"{uniq('watch')}/iter"
    agent_put(consul_agent, key, b"0")
    other = f"{key}-neighbour"
    seen: list[str | None] = []
    changes = handler.watch(key=key, wait=10)

    async def consume() -> None:
        async for change in changes:
            seen.append(change["result"]["value"])
            if len(seen) == 3:
                return

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.3)
    agent_put(consul_agent, other, b"noise")  # another key: not a change of this one
    agent_put(consul_agent, key, b"0")  # the same value again: not a change either
    await asyncio.sleep(0.3)
    agent_put(consul_agent, key, b"1")
    await asyncio.sleep(0.3)
    agent_put(consul_agent, key, b"2")
    await asyncio.wait_for(consumer, 5)
    assert seen == ["0", "1", "2"]


async def test_watch_latency_p50_p99_over_120_changes(handler, consul_agent):
    """A change is seen within 100 ms: each of 120 writes is timed from the moment its PUT
    was answered to the moment the watch yields it. The distribution is printed."""
    key = f"{uniq('watch')}/latency"
    agent_put(consul_agent, key, b"start")
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def consume() -> None:
        async for change in handler.watch(key=key, wait=30):
            await queue.put((change["result"]["value"], time.monotonic()))

    consumer = asyncio.ensure_future(consume())
    try:
        assert (await asyncio.wait_for(queue.get(), 5))[0] == "start"
        for i in range(120):
            value = f"v{i}"
            await asyncio.to_thread(agent_put, consul_agent, key, value.encode())
            written = time.monotonic()
            seen, at = await asyncio.wait_for(queue.get(), 5)
            assert seen == value
            latencies.append((at - written) * 1000)
            await asyncio.sleep(0.01)
    finally:
        consumer.cancel()
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = statistics.median(latencies), cuts[98]
    print(
        f"\nwatch latency over {len(latencies)} changes: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(latencies):.1f} ms"
    )
    assert p99 < 100.0


async def test_watch_ends_when_the_handler_shuts_down(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    key = f"{uniq('watch')}/shutdown"
    agent_put(consul_agent, key, b"v")
    seen: list[Any] = []

    async def consume() -> None:
        async for change in handler.watch(key=key, wait=60):
            seen.append(change)

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.5)
    assert len(seen) == 1
    started = time.monotonic()
    await handler.shutdown()
    await asyncio.wait_for(consumer, 5)  # ended, not cancelled, not raised
    assert time.monotonic() - started < 5
    assert handler.describe()["long_polls"] is None


# -- cached kv_get -----------------------------------------------------------------------------


async def test_cached_reads_are_served_from_memory_and_see_a_write_within_100ms(
    make_handler, consul_agent, counting_proxy_for
):
    proxy = counting_proxy_for(consul_agent)
    handler = await make_handler(proxy)
    key = f"{uniq('cache')}/k"
    agent_put(consul_agent, key, b"one")
    first = await execute_ok(handler, "kv_get", key=key, consistency="cached")
    assert (first["value"], first["source"], first["age_seconds"]) == ("one", "consul", 0.0)
    await asyncio.sleep(0.3)
    proxy.reset()
    for _ in range(200):
        again = await execute_ok(handler, "kv_get", key=key, consistency="cached")
        assert again == first
    assert proxy.requests == 0  # the 200 reads never left the process
    lags = []
    for i in range(20):
        value = f"v{i}".encode()
        await asyncio.to_thread(agent_put, consul_agent, key, value)
        written = time.monotonic()
        while True:
            got = await execute_ok(handler, "kv_get", key=key, consistency="cached")
            if got["value"] == value.decode():
                break
            assert time.monotonic() - written < 1.0
            await asyncio.sleep(0.002)
        lags.append((time.monotonic() - written) * 1000)
    print(
        f"\ncached read sees a write: median {statistics.median(lags):.1f} ms, "
        f"max {max(lags):.1f} ms over {len(lags)} writes"
    )
    assert max(lags) < 100.0


async def test_cached_recurse_and_keys_only_match_uncached_shapes(handler, consul_agent):
    prefix = f"{uniq('cache')}/"
    agent_put(consul_agent, prefix + "a", b"1")
    agent_put(consul_agent, prefix + "b/c", b"2")
    for mode in ({"recurse": True}, {"keys_only": True}, {"keys_only": True, "separator": "/"}):
        plain = await execute_ok(handler, "kv_get", key=prefix, **mode)
        cached = await execute_ok(handler, "kv_get", key=prefix, consistency="cached", **mode)
        assert {k: v for k, v in cached.items() if k not in ("source", "age_seconds")} == plain
        # Each caller gets its own copy: changing one result leaves the cache alone.
        (cached.get("items") or cached["keys"]).clear()
        again = await execute_ok(handler, "kv_get", key=prefix, consistency="cached", **mode)
        assert {k: v for k, v in again.items() if k not in ("source", "age_seconds")} == plain


async def test_cached_reads_serve_stale_with_their_age_while_the_agent_is_down(
    make_handler, fresh_consul_agent
):
    handler = await make_handler(
        fresh_consul_agent, timeout_seconds=1.0, cache={"max_staleness_seconds": 3.0}
    )
    key = f"{uniq('cache')}/stale"
    agent_put(fresh_consul_agent, key, b"kept")
    fresh = await execute_ok(handler, "kv_get", key=key, consistency="cached")
    assert fresh["source"] == "consul"
    await asyncio.to_thread(fresh_consul_agent.kill)
    ages = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        got = await execute_ok(handler, "kv_get", key=key, consistency="cached")
        assert got["value"] == "kept"
        if got["source"] == "cache":
            ages.append(got["age_seconds"])
        await asyncio.sleep(0.2)
    assert ages, "the watch never noticed the agent was gone"
    assert ages == sorted(ages)
    # The age grows with the time since the cache was last in sync with Consul.
    assert ages[-1] > 0
    assert ages[-1] - ages[0] >= 0.2 * (len(ages) - 1) - 0.1
    await asyncio.sleep(max(0.0, 3.2 - ages[-1]))
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(envelope("kv_get", key=key, consistency="cached"))
    assert "max_staleness_seconds" in str(caught.value)


# -- kv_update ---------------------------------------------------------------------------------


async def test_kv_update_creates_then_updates(handler, consul_agent):
    key = f"{uniq('upd')}/counter"
    assert await handler.kv_update(key, lambda v: "1" if v is None else str(int(v) + 1)) == "1"
    assert await handler.kv_update(key, lambda v: str(int(v) + 1)) == "2"
    stored = consul_agent.request("GET", f"/v1/kv/{key}?raw").body
    assert stored == b"2"


async def test_kv_update_gives_bytes_for_binary_values_and_takes_a_coroutine(handler, consul_agent):
    key = f"{uniq('upd')}/blob"
    agent_put(consul_agent, key, b"\xff\x00")

    async def append(value: Any) -> bytes:
        assert value == b"\xff\x00"
        return value + b"\x01"

    assert await handler.kv_update(key, append) == b"\xff\x00\x01"
    got = await execute_ok(handler, "kv_get", key=key)
    assert base64.b64decode(got["value"]) == b"\xff\x00\x01"


async def test_concurrent_kv_updates_never_lose_an_increment(make_handler, consul_agent):
    key = f"{uniq('upd')}/race"
    handlers = [await make_handler(consul_agent) for _ in range(4)]

    def increment(value: Any) -> str:
        return str(int(value or "0") + 1)

    await asyncio.gather(
        *(h.kv_update(key, increment, max_attempts=200) for h in handlers for _ in range(10))
    )
    assert consul_agent.request("GET", f"/v1/kv/{key}?raw").body == b"40"


async def test_kv_update_raises_a_typed_error_when_every_attempt_loses(handler, consul_agent):
    key = f"{uniq('upd')}/lost"
    agent_put(consul_agent, key, b"0")

    calls: list[Any] = []

    def meddle(value: Any) -> str:
        # Someone else writes a new value between our read and our CAS, every time.
        calls.append(value)
        agent_put(consul_agent, key, f"theirs-{len(calls)}".encode())
        return "mine"

    with pytest.raises(InfraConflictError) as caught:
        await handler.kv_update(key, meddle, max_attempts=3)
    assert caught.value.context.attempts == 3
    assert caught.value.context.category == "conflict"
    assert calls == ["0", "theirs-1", "theirs-2"]
    assert consul_agent.request("GET", f"/v1/kv/{key}?raw").body == b"theirs-3"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
async def test_kv_update_refuses_a_bad_max_attempts_by_name_before_sending(
    make_handler, consul_agent, counting_proxy_for, bad
):
    proxy = counting_proxy_for(consul_agent)
    handler = await make_handler(proxy)
    proxy.reset()
    with pytest.raises(InfraValidationError) as caught:
        await handler.kv_update("k", lambda v: "x", max_attempts=bad)
    assert caught.value.context.field == "max_attempts"
    assert proxy.requests == 0


async def test_watch_on_a_handler_that_is_not_running_raises():
    changes = HandlerConsul().watch(key="k")
    with pytest.raises(InfraUnavailableError, match="not initialized"):
        await anext(changes)


async def test_kv_update_refuses_a_value_that_is_not_text_or_bytes(handler):
    with pytest.raises(TypeError, match="not str or bytes"):
        await handler.kv_update(f"{uniq('upd')}/k", lambda v: 5)  # type: ignore[arg-type,return-value]


async def test_a_service_step_blocks_until_its_instances_change(handler, consul_agent):
    service = uniq("watched")
    first_id, second_id = f"{service}-1", f"{service}-2"
    register = {"Name": service, "ID": first_id, "Port": 8080, "Tags": ["v1"]}
    assert consul_agent.request("PUT", "/v1/agent/service/register", register).status == 200
    try:
        now = await execute_ok(handler, "watch", kind="service", service=service)
        assert now["changed"] is True
        found = now["result"]
        assert set(found) == {"service", "instances", "index", "source", "age_seconds"}
        assert (found["service"], found["source"], found["age_seconds"]) == (service, "consul", 0.0)
        (instance,) = found["instances"]
        assert (instance["id"], instance["port"], instance["tags"], instance["status"]) == (
            first_id,
            8080,
            ["v1"],
            "passing",
        )
        step = asyncio.ensure_future(
            handler.execute(
                envelope("watch", kind="service", service=service, index=now["index"], wait=10)
            )
        )
        await asyncio.sleep(0.5)
        assert not step.done()
        second = {"Name": service, "ID": second_id, "Port": 8081}
        assert consul_agent.request("PUT", "/v1/agent/service/register", second).status == 200
        changed = (await asyncio.wait_for(step, 5)).result
        assert changed["changed"] is True
        ids = sorted(i["id"] for i in changed["result"]["instances"])
        assert ids == [first_id, second_id]
        seen = []
        async for change in handler.watch(service=service, wait=5):
            seen.append(sorted(i["id"] for i in change["result"]["instances"]))
            if len(seen) == 1:
                consul_agent.request("PUT", f"/v1/agent/service/deregister/{second_id}")
            else:
                break
        assert seen == [[first_id, second_id], [first_id]]
    finally:
        for service_id in (first_id, second_id):
            consul_agent.request("PUT", f"/v1/agent/service/deregister/{service_id}")


async def test_the_rate_limit_remembers_a_bounded_number_of_targets(handler):
    """Steps on 300 distinct keys that all come straight back (index 0): the memory the rate
    limit keeps stays bounded, so a process watching or locking ever new keys does not grow."""
    prefix = uniq("watch")
    for i in range(300):
        await execute_ok(handler, "watch", kind="key", key=f"{prefix}/{i}")
        await asyncio.sleep(0.001)
    runtime = handler._lifecycle.runtime
    assert runtime is not None
    assert len(runtime.state["watch_steps"]) <= 257


@pytest.mark.parametrize("consistency", ["stale", "consistent"])
async def test_a_key_step_sends_the_consistency_it_is_given(
    make_handler, consul_agent, counting_proxy_for, consistency
):
    proxy = counting_proxy_for(consul_agent)
    handler = await make_handler(proxy)
    key = f"{uniq('watch')}/mode"
    agent_put(consul_agent, key, b"v")
    proxy.reset()
    step = await execute_ok(handler, "watch", kind="key", key=key, consistency=consistency)
    assert step["result"]["value"] == "v"
    (path,) = proxy.paths
    assert consistency in path.partition("?")[2].split("&") or f"{consistency}=1" in path


async def test_a_large_cached_read_is_copied_in_steps_so_the_loop_runs_in_between(
    handler, consul_agent
):
    """Each reader of a cached prefix gets its own copy of the entries; for thousands of
    entries the copy is made in steps, and other tasks run between them (ten readers of a
    3,000-key prefix once held the loop in one iteration). The copy is whole and private."""
    prefix = uniq("big-cached")
    for start in range(0, 2000, 64):
        ops = [
            {"KV": {"Verb": "set", "Key": f"{prefix}/k{i:05d}", "Value": "dg=="}}
            for i in range(start, min(start + 64, 2000))
        ]
        assert consul_agent.request("PUT", "/v1/txn", ops).status == 200
    read = envelope("kv_get", key=f"{prefix}/", recurse=True, consistency="cached")
    first = (await handler.execute(read)).result
    assert len(first["items"]) == 2000
    seen: list[bool] = []
    reading = asyncio.ensure_future(handler.execute(read))

    async def other() -> None:
        seen.append(reading.done())

    await asyncio.gather(reading, other())
    assert seen == [False]  # ran while the read was still copying
    second = reading.result().result
    assert second["source"] == "consul"
    assert [i["key"] for i in second["items"]] == [i["key"] for i in first["items"]]
    second["items"][0]["value"] = "mutated"
    third = (await handler.execute(read)).result
    assert third["items"][0]["value"] == "v"
