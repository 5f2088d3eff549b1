"""handler.lock() against a real agent: a session holds the key, the fencing token is the
Raft index of the acquiring write, a waiter sleeps on a blocking query (no polling) until the
key is released, renewals keep the session alive past its TTL, and lost / release behave on
exit, cancellation, a destroyed session, a stolen key and shutdown()."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from harness import ConsulAgent, CountingProxy
from support import uniq, wait_until

from handler_consul import (
    HandlerConsul,
    InfraLockTimeoutError,
    InfraUnavailableError,
    InfraValidationError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def holder(agent: ConsulAgent, key: str) -> dict[str, Any] | None:
    resp = agent.request("GET", f"/v1/kv/{key}?consistent")
    return None if resp.status == 404 else resp.json()[0]


def session_exists(agent: ConsulAgent, session_id: str) -> bool:
    return bool(agent.request("GET", f"/v1/session/info/{session_id}").json())


async def test_lock_holds_the_key_with_its_session_and_a_raft_index_token(handler, consul_agent):
    key = f"{uniq('lock')}/leader"
    async with handler.lock(key, ttl="10s", value="me") as lease:
        entry = holder(consul_agent, key)
        assert entry is not None
        assert entry["Session"] == lease.session_id
        # The token is the Raft index of the write that acquired the key.
        assert lease.fencing_token == entry["ModifyIndex"]
        assert entry["LockIndex"] == 1
        assert not lease.lost.is_set()
        assert lease.held
        session = lease.session_id
        assert session_exists(consul_agent, session)
    # Released and destroyed on exit; lost is set (the key changed hands: to nobody).
    assert lease.lost.is_set()
    assert lease.lost_reason == "released"
    after = holder(consul_agent, key)
    assert after is not None
    assert not after.get("Session")
    assert not session_exists(consul_agent, session)


async def test_tokens_strictly_increase_across_holders(handler, make_handler, consul_agent):
    key = f"{uniq('lock')}/tokens"
    other = await make_handler(consul_agent)
    tokens = []
    for h in (handler, other, handler, other):
        async with h.lock(key, ttl="10s") as lease:
            tokens.append(lease.fencing_token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


async def test_a_waiter_blocks_on_a_query_and_gets_the_lock_on_release(
    make_handler, consul_agent, counting_proxy_for
):
    key = f"{uniq('lock')}/wait"
    first = await make_handler(consul_agent)
    proxy: CountingProxy = counting_proxy_for(consul_agent)
    second = await make_handler(proxy)
    async with first.lock(key, ttl="10s") as held:
        proxy.reset()
        waiter = asyncio.ensure_future(second.lock(key, ttl="10s", wait=20).__aenter__())
        await asyncio.sleep(1.5)
        assert not waiter.done()
        # While it waits: a session, one refused lock attempt, a read, and one blocking query.
        paths = proxy.paths
        blocking = [p for p in paths if p.startswith(f"/v1/kv/{key}") and "index=" in p]
        assert len(blocking) == 1, paths
        assert len(paths) <= 5, paths
        released_at = time.monotonic()
    lease = await asyncio.wait_for(waiter, 10)
    handed_over = time.monotonic() - released_at
    try:
        assert lease.fencing_token > held.fencing_token
        assert handed_over < 2.0
    finally:
        await lease.release()


async def test_wait_passing_is_a_typed_error_and_leaves_no_session(make_handler, consul_agent):
    key = f"{uniq('lock')}/busy"
    first = await make_handler(consul_agent)
    second = await make_handler(consul_agent)
    before = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()}
    async with first.lock(key, ttl="10s") as held:
        started = time.monotonic()
        with pytest.raises(InfraLockTimeoutError) as caught:
            async with second.lock(key, ttl="10s", wait=1.0):
                pytest.fail("acquired a held lock")
        took = time.monotonic() - started
        assert 1.0 <= took < 3.0
        assert caught.value.context.category == "conflict"
        assert "held by another session" in str(caught.value)
        mine = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()} - before
        assert mine == {held.session_id}


async def test_renewal_keeps_the_session_past_its_ttl(handler, consul_agent):
    key = f"{uniq('lock')}/renew"
    async with handler.lock(key, ttl="10s") as lease:
        await asyncio.sleep(21)  # past twice the TTL: only renewals keep it
        assert not lease.lost.is_set()
        entry = holder(consul_agent, key)
        assert entry is not None
        assert entry["Session"] == lease.session_id


async def test_a_destroyed_session_sets_lost_at_once(handler, consul_agent):
    key = f"{uniq('lock')}/destroyed"
    async with handler.lock(key, ttl="10s") as lease:
        consul_agent.request("PUT", f"/v1/session/destroy/{lease.session_id}")
        await asyncio.wait_for(lease.lost.wait(), 2.0)
        assert lease.lost_reason == "the key was released"


async def test_a_key_taken_over_by_another_session_sets_lost(handler, consul_agent):
    key = f"{uniq('lock')}/stolen"
    async with handler.lock(key, ttl="10s", lock_delay="0s") as lease:
        # Another session takes the key the only way Consul allows: the holder's session is
        # invalidated, then the other acquires.
        other = consul_agent.request("PUT", "/v1/session/create", {"LockDelay": "0s"}).json()["ID"]
        consul_agent.request("PUT", f"/v1/session/destroy/{lease.session_id}")
        assert consul_agent.request("PUT", f"/v1/kv/{key}?acquire={other}", b"x").json() is True
        await asyncio.wait_for(lease.lost.wait(), 2.0)
        consul_agent.request("PUT", f"/v1/session/destroy/{other}")


async def test_cancelled_inside_the_lock_still_releases(handler, consul_agent):
    key = f"{uniq('lock')}/cancel"
    entered = asyncio.Event()
    seen: list[Any] = []

    async def hold() -> None:
        async with handler.lock(key, ttl="10s") as lease:
            seen.append(lease)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(hold())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (lease,) = seen
    entry = holder(consul_agent, key)
    assert entry is not None
    assert not entry.get("Session")
    assert not session_exists(consul_agent, lease.session_id)


async def test_cancelled_while_waiting_leaves_no_session(make_handler, consul_agent):
    key = f"{uniq('lock')}/cancel-wait"
    first = await make_handler(consul_agent)
    second = await make_handler(consul_agent)
    async with first.lock(key, ttl="10s") as held:
        before = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()}
        waiting = asyncio.ensure_future(second.lock(key, ttl="10s", wait=30).__aenter__())
        assert await wait_until(
            lambda: len(consul_agent.request("GET", "/v1/session/list").json()) > len(before),
            timeout=5,
        )
        await asyncio.sleep(0.3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        now = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()}
        assert now == before
        assert holder(consul_agent, key)["Session"] == held.session_id  # type: ignore[index]


async def test_shutdown_releases_every_lease_still_held(make_handler, consul_agent):
    handler: HandlerConsul = await make_handler(consul_agent)
    keys = [f"{uniq('lock')}/shutdown-{i}" for i in range(3)]
    leases = [await handler.lock(key, ttl="10s") for key in keys]
    assert all(lease.held for lease in leases)
    await handler.shutdown()
    for key, lease in zip(keys, leases, strict=True):
        assert lease.lost.is_set()
        entry = holder(consul_agent, key)
        assert entry is not None
        assert not entry.get("Session")
        assert not session_exists(consul_agent, lease.session_id)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"key": "../agent/self"}, "key"),
        ({"key": ""}, "key"),
        ({"key": "k", "ttl": "5s"}, "ttl"),
        ({"key": "k", "ttl": 15}, "ttl"),
        ({"key": "k", "wait": -1.0}, "wait"),
        ({"key": "k", "wait": float("inf")}, "wait"),
        ({"key": "k", "wait": "30"}, "wait"),
        ({"key": "k", "lock_delay": "2m"}, "lock_delay"),
        ({"key": "k", "value": 5}, "value"),
    ],
)
async def test_bad_lock_arguments_are_refused_by_name_before_anything_is_sent(
    make_handler, consul_agent, counting_proxy_for, arguments, field
):
    proxy = counting_proxy_for(consul_agent)
    handler = await make_handler(proxy)
    proxy.reset()
    with pytest.raises(InfraValidationError) as caught:
        handler.lock(**arguments)
    assert caught.value.context.field == field
    assert proxy.requests == 0


async def test_shutdown_ends_a_wait_for_the_lock_at_once_and_leaves_no_session(
    make_handler, consul_agent
):
    key = f"{uniq('lock')}/shutdown-wait"
    first = await make_handler(consul_agent)
    second: HandlerConsul = await make_handler(consul_agent)
    async with first.lock(key, ttl="10s") as held:
        before = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()}
        waiting = asyncio.ensure_future(second.lock(key, ttl="10s", wait=60).__aenter__())
        assert await wait_until(lambda: second.describe()["long_polls"]["busy"] == 1, timeout=5), (
            "the waiter never blocked on the key"
        )
        started = time.monotonic()
        await second.shutdown()
        with pytest.raises(InfraUnavailableError, match="shut down while waiting"):
            await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 3.0
        now = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()}
        assert now - before == set()
        assert holder(consul_agent, key)["Session"] == held.session_id  # type: ignore[index]


async def test_cancelled_while_its_session_is_created_leaves_no_session(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    before = {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()}
    for delay in (0.0, 0.0005, 0.001, 0.002, 0.004):
        attempt = asyncio.ensure_future(
            handler.lock(f"{uniq('lock')}/early", ttl="10s").__aenter__()
        )
        await asyncio.sleep(delay)
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            lease = await attempt
            await lease.release()  # it got there first: released the ordinary way
    assert await wait_until(
        lambda: {s["ID"] for s in consul_agent.request("GET", "/v1/session/list").json()} == before,
        timeout=5,
    ), "a cancelled lock() left a session behind"
