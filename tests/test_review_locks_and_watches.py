"""Findings of the adversarial review of locks and watches, fixed, kept as regression tests.

Each test states the promise it attacks (the review's words). What was wrong, and the fix:

- more lock waiters than long-poll threads, or a waiter queued for one past
  ``timeout_seconds``, failed with InfraUnavailableError/InfraTimeoutError mid-wait: a lock
  now rides out transient failures (no thread free, Consul electing a leader, an open
  breaker) until its ``wait`` is spent;
- a re-initialize (how a rotated token file is picked up) marked a held lease lost while
  its session kept the key (nobody renewed or destroyed it): the lease now moves to the new
  runtime and keeps renewing and following its key;
- a watch ended silently at a re-initialize: it now carries on in the new runtime;
- on a slow but working link (answers 2.6 s late, ttl 10 s) the lease was lost although
  every renewal landed: renewals were scheduled ttl/2 after each *answer*, the first after
  the session's answer; they are now ttl/2 after each renewal was *sent*, the first ttl/2
  after the session was asked for, which is what the expiry timer counts from.
"""

from __future__ import annotations

import asyncio

import pytest
from harness import ConsulAgent, Toxiproxy
from support import uniq

from handler_consul import InfraError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def agent_put(agent: ConsulAgent, key: str, value: bytes) -> None:
    resp = agent.request("PUT", f"/v1/kv/{key}", value)
    assert resp.status == 200, resp.text


def key_holder(agent: ConsulAgent, key: str) -> str | None:
    resp = agent.request("GET", f"/v1/kv/{key}?consistent")
    if resp.status == 404:
        return None
    return resp.json()[0].get("Session") or None


async def test_lock_contention_beyond_max_watches_waits_instead_of_failing(
    make_handler, consul_agent
):
    """Promise (handler.lock): waits up to ``wait`` while someone else holds the key, then
    InfraLockTimeoutError. Attack: more waiters than long-poll threads (and than the
    long-poll queue takes): each must still get the lock within its ``wait``."""
    handler = await make_handler(consul_agent, timeout_seconds=2.0, long_poll={"max_watches": 2})
    key = f"{uniq('atk-contend')}/k"
    failures: list[str] = []
    got: list[int] = []

    async def contender() -> None:
        try:
            async with handler.lock(key, ttl="10s", wait=60, lock_delay="0s") as lease:
                got.append(lease.fencing_token)
                await asyncio.sleep(0.3)
        except InfraError as error:
            failures.append(f"{type(error).__name__}: {error.message}")

    await asyncio.wait_for(asyncio.gather(*(contender() for _ in range(14))), 90)
    assert not failures, failures
    assert len(got) == 14


async def test_reinitialize_while_holding_a_lease_leaves_no_orphaned_holder(
    make_handler, consul_agent
):
    """Promise: a re-initialize ends the old runtime's work. Attack: re-initialize while a
    lease is held. Either the lease is still held (renewed) or, if it is marked lost, the
    key must not stay locked by a session nobody renews (others would wait up to 2 x ttl
    plus the lock-delay for a holder that already gave up)."""
    key = f"{uniq('atk-reinit')}/k"
    handler = await make_handler(consul_agent)
    lease = await handler.lock(key, ttl="10s")
    await handler.initialize()
    await asyncio.sleep(1.0)
    try:
        if lease.lost.is_set():
            assert key_holder(consul_agent, key) != lease.session_id, (
                f"lease marked lost ({lease.lost_reason}) but its session still holds "
                "the key, and nobody renews or destroys it"
            )
        else:
            assert key_holder(consul_agent, key) == lease.session_id
    finally:
        await lease.release()


async def test_a_lock_waiter_queued_for_a_long_poll_thread_waits_its_full_wait(
    make_handler, consul_agent
):
    """The same promise as above, without queue overflow: two waiters occupy both long-poll
    threads on a key held for 4 s; a third waiter (wait=30) must not fail after
    timeout_seconds (2 s) just because it waited for a long-poll thread."""
    handler = await make_handler(consul_agent, timeout_seconds=2.0, long_poll={"max_watches": 2})
    key = f"{uniq('atk-queued')}/k"
    holder_lease = await handler.lock(key, ttl="10s", lock_delay="0s")
    failures: list[str] = []

    async def waiter() -> None:
        try:
            async with handler.lock(key, ttl="10s", wait=30, lock_delay="0s"):
                pass
        except InfraError as error:
            failures.append(f"{type(error).__name__}: {error.message}")

    tasks = [asyncio.ensure_future(waiter()) for _ in range(3)]
    await asyncio.sleep(4.0)
    await holder_lease.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 40)
    assert not failures, failures


async def test_a_watch_keeps_following_across_a_reinitialize(make_handler, consul_agent):
    """Promise (handler.watch): yields each change, rides out transient failures, ends at
    shutdown(). initialize() again (how a rotated token file is picked up) is not a
    shutdown. Attack: re-initialize while a watch waits, then change the key."""
    handler = await make_handler(consul_agent)
    key = f"{uniq('atk-rewatch')}/k"
    agent_put(consul_agent, key, b"one")
    it = handler.watch(key=key, wait=30)
    assert (await asyncio.wait_for(anext(it), 5))["result"]["value"] == "one"
    pending = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.3)
    await handler.initialize()
    await asyncio.sleep(0.3)
    agent_put(consul_agent, key, b"two")
    try:
        change = await asyncio.wait_for(pending, 5)
    except StopAsyncIteration:
        pytest.fail("the watch ended silently at a re-initialize; the handler is running")
    finally:
        await it.aclose()
    assert change["result"]["value"] == "two"


async def test_a_slow_but_working_link_does_not_lose_the_lease(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise: renewed every ttl/2; lost only when no renewal succeeded within ttl.
    Attack: every answer arrives 2.6 s late (renewals all succeed, Consul keeps the
    session). The renewal schedule drifts by the round trip (sleep ttl/2 after each
    answer), and the first renewal is sent ttl/2 after the session_create answer, so its
    answer lands after the timer armed from before the create: lost is set spuriously."""
    handler = await make_handler(toxiproxy, timeout_seconds=8.0)
    await asyncio.to_thread(toxiproxy.latency, 2600)
    key = f"{uniq('atk-slow')}/k"
    lease = await handler.lock(key, ttl="10s", wait=20)
    try:
        await asyncio.sleep(14)
        session_alive = bool(
            consul_agent.request("GET", f"/v1/session/info/{lease.session_id}").json()
        )
        assert session_alive
        assert key_holder(consul_agent, key) == lease.session_id
        assert not lease.lost.is_set(), f"lost although every renewal landed: {lease.lost_reason}"
    finally:
        await asyncio.to_thread(toxiproxy.clear)
        await lease.release()


async def test_a_lock_waiter_rides_out_a_leader_election_within_its_wait(
    make_handler, consul_cluster
):
    """Promise (handler.lock): waits up to ``wait`` while someone else holds the key;
    watch() rides out transient failures. Attack: a leader election (a few seconds of 500
    'No cluster leader' / rpc errors) while B waits with wait=40. After A releases, B must
    get the key, not fail with InfraConnectionError mid-wait."""
    f1, f2 = consul_cluster.followers()[:2]
    a = await make_handler(f1, timeout_seconds=3.0)
    b = await make_handler(f2, timeout_seconds=3.0)
    key = f"{uniq('atk-election')}/k"
    lease_a = await a.lock(key, ttl="10s", lock_delay="0s")
    b_task = asyncio.ensure_future(b.lock(key, ttl="10s", wait=40, lock_delay="0s").__aenter__())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(consul_cluster.kill_leader)
    await asyncio.to_thread(consul_cluster.wait_for_leader)
    await asyncio.sleep(1.0)
    await lease_a.release()
    try:
        lease_b = await asyncio.wait_for(b_task, 30)
    except InfraError as error:
        pytest.fail(
            f"the waiter failed mid-wait: {type(error).__name__}: {error.message}", pytrace=False
        )
    try:
        assert lease_b.fencing_token > lease_a.fencing_token
    finally:
        await lease_b.release()
