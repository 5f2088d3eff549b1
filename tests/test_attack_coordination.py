"""Adversarial review of the KV-coordination and long-poll work (locks, txn, watches, cache).

Each test states the promise it attacks. A failing test here is a defect found by the review;
a passing one is a promise that held under attack and stays as a regression test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness import ConsulAgent, CountingProxy, Toxiproxy
from support import envelope, execute_ok, uniq, wait_until

from handler_consul import (
    HandlerConsul,
    InfraError,
    InfraUnavailableError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")


# -- helpers ------------------------------------------------------------------------------------


def agent_put(agent: ConsulAgent, key: str, value: bytes) -> None:
    resp = agent.request("PUT", f"/v1/kv/{key}", value)
    assert resp.status == 200, resp.text


def sessions_named(agent: ConsulAgent, fragment: str) -> list[dict[str, Any]]:
    return [
        s
        for s in agent.request("GET", "/v1/session/list").json() or []
        if fragment in (s.get("Name") or "")
    ]


def key_holder(agent: ConsulAgent, key: str) -> str | None:
    resp = agent.request("GET", f"/v1/kv/{key}?consistent")
    if resp.status == 404:
        return None
    return resp.json()[0].get("Session") or None


def long_poll_busy(handler: HandlerConsul) -> int:
    return int(handler.describe()["long_polls"]["busy"])


# == 3. watches and cached reads ==================================================================


async def test_cache_stampede_a_cancelled_first_reader_does_not_cancel_the_others(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise: concurrent first reads of one key share one request (stampede protection).
    Attack: the caller that makes the shared first read is cancelled (its own timeout). The
    other callers were never cancelled and must still get an answer, not CancelledError."""
    key = f"{uniq('atk-stampede')}/k"
    agent_put(consul_agent, key, b"v")
    handler = await make_handler(toxiproxy)
    await asyncio.to_thread(toxiproxy.latency, 400)  # Consul's answers arrive 400 ms late
    get = envelope("kv_get", key=key, consistency="cached")
    first = asyncio.ensure_future(handler.execute(get))
    await asyncio.sleep(0.05)  # first is now making the shared first read
    others = [asyncio.ensure_future(handler.execute(get)) for _ in range(5)]
    await asyncio.sleep(0.05)
    first.cancel()
    outcomes = await asyncio.gather(*others, return_exceptions=True)
    bogus = [o for o in outcomes if isinstance(o, BaseException)]
    assert not bogus, f"callers nobody cancelled failed: {[type(b).__name__ for b in bogus]}"
    assert all(o.result["value"] == "v" for o in outcomes)


async def test_cache_max_entries_holds_under_concurrent_first_reads(make_handler, consul_agent):
    """Promise: at most cache.max_entries queries are watched at once (each holds a long-poll
    thread). Attack: many first reads of distinct keys at the same moment."""
    handler = await make_handler(consul_agent, cache={"max_entries": 2})
    prefix = uniq("atk-maxent")
    keys = [f"{prefix}/k{i}" for i in range(12)]
    for key in keys:
        agent_put(consul_agent, key, b"x")
    await asyncio.gather(
        *(execute_ok(handler, "kv_get", key=k, consistency="cached") for k in keys)
    )
    cache = handler.describe()["cache"]
    assert cache["entries"] <= 2, cache
    # The watches themselves: background tasks beyond the bound hold long-poll threads.
    await asyncio.sleep(0.3)
    assert long_poll_busy(handler) <= 2, handler.describe()["long_polls"]


async def test_a_quiet_cached_key_is_served_from_cache_right_after_the_agent_goes_down(
    make_handler, fresh_consul_agent
):
    """Promise (architecture.md): while Consul does not answer, the cache serves
    ``source: "cache"`` with the age since it was last in sync, up to max_staleness.
    Attack: a key that has not changed for a while (its blocking round is still open and in
    sync) when the agent dies. It was in sync a moment ago, so the age must be small."""
    handler = await make_handler(
        fresh_consul_agent,
        timeout_seconds=1.0,
        long_poll={"wait_seconds": 10},
        cache={"max_staleness_seconds": 3.0},
    )
    key = f"{uniq('atk-quiet')}/k"
    agent_put(fresh_consul_agent, key, b"kept")
    assert (await execute_ok(handler, "kv_get", key=key, consistency="cached"))["source"] == (
        "consul"
    )
    await asyncio.sleep(4.5)  # quiet: the watch's round is open, nothing changes
    got = await execute_ok(handler, "kv_get", key=key, consistency="cached")
    assert got["source"] == "consul"
    assert got["age_seconds"] == 0.0
    await asyncio.to_thread(fresh_consul_agent.kill)
    await asyncio.sleep(0.3)  # the open round fails at once (connection closed)
    try:
        got = await execute_ok(handler, "kv_get", key=key, consistency="cached")
    except InfraUnavailableError as error:
        pytest.fail(f"in sync 0.3 s ago, yet refused as stale: {error.message}", pytrace=False)
    assert got["source"] == "cache"
    assert got["age_seconds"] < 1.5, got


async def test_a_watch_step_cancelled_by_its_consumer_frees_its_long_poll_thread(
    make_handler, consul_agent
):
    """Promise: blocking queries run in long_poll.max_watches threads; nothing hangs.
    Attack: the common consumer pattern ``await asyncio.wait_for(anext(watch), t)`` cancels
    the step in flight. Its thread must not stay blocked on Consul for the whole wait, or a
    few such timeouts starve every later watch, lock wait and cache upkeep."""
    handler = await make_handler(consul_agent, timeout_seconds=2.0, long_poll={"max_watches": 2})
    key = f"{uniq('atk-abandon')}/k"
    agent_put(consul_agent, key, b"x")
    for _ in range(2):
        it = handler.watch(key=key, wait=60)
        await asyncio.wait_for(anext(it), 5)  # the current state
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(it), 0.3)  # nothing changes: the consumer gives up
        await it.aclose()
    freed = await wait_until(lambda: long_poll_busy(handler) == 0, timeout=3.0)
    busy = long_poll_busy(handler)
    # A new watch must still see the current state promptly.
    other = f"{uniq('atk-abandon')}/other"
    agent_put(consul_agent, other, b"y")
    started = time.monotonic()
    fresh = handler.watch(key=other, wait=60)
    try:
        first = await asyncio.wait_for(anext(fresh), 6)
    except TimeoutError:
        first = None
    finally:
        await fresh.aclose()
    took = time.monotonic() - started
    assert freed, f"{busy} long-poll threads still blocked on cancelled watch steps"
    assert first is not None, f"a new watch waited {took:.1f}s for a thread"
    assert took < 1.0, f"a new watch waited {took:.1f}s for a thread"


async def test_lock_cancelled_while_its_session_is_being_created_leaves_no_session(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise (_locks.acquire): whatever happens, no session is left behind but the lease's
    own. Attack: cancel lock() after session_create reached Consul, before its answer."""
    key = f"{uniq('atk-cancel-create')}/k"
    handler = await make_handler(toxiproxy)
    await asyncio.to_thread(toxiproxy.latency, 500)
    task = asyncio.ensure_future(handler.lock(key, ttl="30s").__aenter__())
    await asyncio.sleep(0.2)  # the PUT /v1/session/create is at Consul; its answer is late
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(toxiproxy.clear)
    await asyncio.sleep(1.0)
    left = sessions_named(consul_agent, key)
    assert not left, f"a cancelled lock() left {len(left)} session(s) behind: {left}"


# == 1. locks and fencing ========================================================================


async def test_many_concurrent_lock_calls_in_one_handler_exclude_each_other(handler, consul_agent):
    """Promise: one holder at a time; fencing tokens strictly increase across holders.
    Attack: 12 lock() calls on one key from one handler at once, no lock-delay."""
    key = f"{uniq('atk-many')}/k"
    holding: set[int] = set()
    overlaps: list[tuple[int, set[int]]] = []
    tokens: list[int] = []

    async def contender(n: int) -> None:
        async with handler.lock(key, ttl="10s", wait=60, lock_delay="0s") as lease:
            if holding:
                overlaps.append((n, set(holding)))
            holding.add(n)
            tokens.append(lease.fencing_token)
            assert key_holder(consul_agent, key) == lease.session_id
            await asyncio.sleep(0.05)
            assert lease.held
            holding.discard(n)

    await asyncio.wait_for(asyncio.gather(*(contender(n) for n in range(12))), 60)
    assert not overlaps
    assert tokens == sorted(tokens), tokens
    assert len(set(tokens)) == len(tokens), tokens
    assert not sessions_named(consul_agent, key)
    assert key_holder(consul_agent, key) is None


async def test_a_holder_cut_off_from_consul_stops_believing_before_another_holds(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise: lease.lost is set (ttl after the last renewal) before Consul can invalidate
    the session (up to 2 x ttl): never two holders. Attack: black-hole the holder's traffic
    (toxiproxy timeout toxic), no lock-delay, a second handler waiting for the key."""
    key = f"{uniq('atk-cut')}/k"
    a = await make_handler(toxiproxy, timeout_seconds=2.0)
    b = await make_handler(consul_agent)
    lease_a = await a.lock(key, ttl="10s", lock_delay="0s")
    await asyncio.sleep(0.5)
    await asyncio.to_thread(toxiproxy.timeout, 0)  # nothing in, nothing out
    cut_at = time.monotonic()
    lost_at: list[float] = []

    async def mark_lost() -> None:
        await lease_a.lost.wait()
        lost_at.append(time.monotonic())

    watcher = asyncio.ensure_future(mark_lost())
    async with b.lock(key, ttl="10s", wait=40, lock_delay="0s") as lease_b:
        b_at = time.monotonic()
        assert lease_a.lost.is_set(), "A still believes it holds the lock B now holds"
        assert lease_b.fencing_token > lease_a.fencing_token
    assert lost_at, lost_at
    assert lost_at[0] - cut_at <= 10.5, lost_at
    assert b_at > lost_at[0]
    await watcher
    await asyncio.to_thread(toxiproxy.clear)
    await lease_a.release()


async def test_a_destroyed_holder_with_lock_delay_hands_over_only_after_the_delay(
    make_handler, consul_agent
):
    """Promise: a holder whose session is invalidated sets lost at once; a waiter gets the
    key only after the session's lock-delay (retried on a short backoff), with a larger
    fencing token. Attack: destroy the holder's session from outside, lock_delay 3s."""
    key = f"{uniq('atk-delay')}/k"
    a = await make_handler(consul_agent)
    b = await make_handler(consul_agent)
    lease_a = await a.lock(key, ttl="10s", lock_delay="3s")
    waiter = asyncio.ensure_future(b.lock(key, ttl="10s", wait=20).__aenter__())
    await asyncio.sleep(0.5)
    resp = consul_agent.request("PUT", f"/v1/session/destroy/{lease_a.session_id}")
    assert resp.status == 200
    destroyed_at = time.monotonic()
    await asyncio.wait_for(lease_a.lost.wait(), 2)
    lease_b = await asyncio.wait_for(waiter, 15)
    handed = time.monotonic() - destroyed_at
    try:
        assert 2.9 <= handed < 5.0, handed
        assert lease_b.fencing_token > lease_a.fencing_token
        assert key_holder(consul_agent, key) == lease_b.session_id
    finally:
        await lease_b.release()
        await lease_a.release()


async def test_random_cancellation_of_lock_never_leaves_the_key_locked(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise: released on exit and on cancellation. Attack: cancel lock() + hold at 25
    random moments (each request 40 ms late); afterwards the key is free and no session
    of ours holds anything."""
    import random

    rng = random.Random(1234)
    key = f"{uniq('atk-rcancel')}/k"
    handler = await make_handler(toxiproxy)
    await asyncio.to_thread(toxiproxy.latency, 40)

    async def use() -> None:
        async with handler.lock(key, ttl="10s", wait=10, lock_delay="0s") as lease:
            await asyncio.sleep(0.2)
            assert lease.held

    for _ in range(25):
        task = asyncio.ensure_future(use())
        await asyncio.sleep(rng.uniform(0.0, 0.45))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(1.0)
    assert key_holder(consul_agent, key) is None
    # Sessions left: the known session_create window (see the test above), never a holder.
    left = sessions_named(consul_agent, key)
    assert all(s["ID"] != key_holder(consul_agent, key) for s in left)
    # And the lock still works afterwards.
    async with handler.lock(key, ttl="10s", wait=5) as lease:
        assert lease.held


async def test_shutdown_with_leases_waiters_and_watches_returns_quickly_and_cleans_up(
    make_handler, consul_agent
):
    """Promise: shutdown() releases every lease and destroys its session within the grace
    period, ends watches, and nothing outlives it (no watch thread left blocked)."""
    import threading

    handler = await make_handler(consul_agent, shutdown_grace_seconds=2.0)
    prefix = uniq("atk-shut")
    leases = [await handler.lock(f"{prefix}/held{i}", ttl="10s") for i in range(4)]
    waiters = [
        asyncio.ensure_future(handler.lock(f"{prefix}/held{i}", ttl="10s", wait=60).__aenter__())
        for i in range(4)
    ]
    watches = []
    for i in range(6):
        agent_put(consul_agent, f"{prefix}/w{i}", b"x")
        it = handler.watch(key=f"{prefix}/w{i}", wait=300)
        await anext(it)
        watches.append(asyncio.ensure_future(anext(it)))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await asyncio.wait_for(handler.shutdown(), 10)
    took = time.monotonic() - started
    outcomes = await asyncio.gather(*waiters, *watches, return_exceptions=True)
    assert took < 3.0, took
    assert all(lease.lost.is_set() for lease in leases)
    assert not sessions_named(consul_agent, prefix)
    for i in range(4):
        assert key_holder(consul_agent, f"{prefix}/held{i}") is None
    assert all(isinstance(o, BaseException) for o in outcomes[:4]), outcomes[:4]
    assert all(isinstance(o, StopAsyncIteration) for o in outcomes[4:]), outcomes[4:]
    alive = await wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("handler-consul-watch")],
        timeout=2.0,
    )
    assert alive, [t.name for t in threading.enumerate()]


# == 5. secrets ===================================================================================


@pytest.mark.parametrize("status", [400, 409, 500, 403])
async def test_the_token_never_shows_in_coordination_errors_logs_or_introspection(
    clean_consul_env, debug_logs, status
):
    """Promise: the token never appears in any exception (chained causes too), log line,
    repr or describe(). Attack: a server whose every error body echoes X-Consul-Token, along
    lock(), txn, session_*, kv_delete, watch, kv_update and a cached read."""
    from support import scripted_server
    from support.secrets import (
        SENTINEL_TEXT,
        assert_error_clean,
        assert_introspection_clean,
        assert_logs_clean,
        assert_no_secret,
    )

    with scripted_server([status] * 200) as server:
        handler = HandlerConsul()
        await handler.initialize(
            {
                "host": "127.0.0.1",
                "port": server.server_address[1],
                "token": SENTINEL_TEXT,
                "timeout_seconds": 1.0,
                "retry": {"max_attempts": 2, "initial_delay_seconds": 0.01},
                "breaker": {"failure_threshold": 1000},
            }
        )
        session = "8d7f4a4e-5b7c-4b64-9d39-0f6f2a1f0c11"
        errors: list[BaseException] = []

        async def expect_error(coro: Any) -> None:
            try:
                await asyncio.wait_for(coro, 10)
            except TimeoutError:
                return  # rode it out (a transient status for a watch): nothing raised
            except BaseException as error:
                errors.append(error)
            else:
                pass

        async def lock() -> None:
            async with handler.lock("atk/secret/lock", ttl="10s", wait=1):
                pass

        async def watch_once() -> None:
            async for _ in handler.watch(key="atk/secret/watch", wait=1):
                break

        try:
            await expect_error(lock())
            await expect_error(
                handler.execute(
                    envelope("txn", operations=[{"verb": "set", "key": "k", "value": "v"}])
                )
            )
            await expect_error(handler.execute(envelope("session_create", ttl="10s")))
            await expect_error(handler.execute(envelope("session_renew", session_id=session)))
            await expect_error(handler.execute(envelope("session_destroy", session_id=session)))
            await expect_error(handler.execute(envelope("kv_delete", key="atk/secret/del")))
            await expect_error(watch_once())
            await expect_error(handler.kv_update("atk/secret/upd", lambda v: "x"))
            await expect_error(
                handler.execute(envelope("kv_get", key="atk/secret/c", consistency="cached"))
            )
            await expect_error(
                handler.execute(
                    envelope("watch", kind="key", key="atk/secret/w", index=5, wait=1.0)
                )
            )
            assert errors, "nothing failed: the server did not misbehave"
            for error in errors:
                assert_error_clean(error)
                assert_no_secret(repr(error), "repr")
            assert_introspection_clean(handler)
        finally:
            await handler.shutdown()
        assert_logs_clean(debug_logs.records)


# == 2. transactions ==============================================================================


async def test_txn_64_operations_apply_and_65_are_refused_unsent(
    make_handler, consul_agent, counting_proxy: CountingProxy
):
    handler = await make_handler(counting_proxy)
    prefix = uniq("atk-txn64")
    ops = [{"verb": "set", "key": f"{prefix}/k{i:02d}", "value": str(i)} for i in range(64)]
    done = await execute_ok(handler, "txn", operations=ops)
    assert done["applied"] is True
    assert len(done["results"]) == 64
    assert [r["key"] for r in done["results"]] == [op["key"] for op in ops]
    counting_proxy.reset()
    from handler_consul import InfraValidationError

    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(
            envelope("txn", operations=[*ops, {"verb": "get", "key": f"{prefix}/k00"}])
        )
    assert caught.value.context.field == "payload.operations"
    assert counting_proxy.requests == 0
    assert counting_proxy.bytes_up == 0


async def test_txn_rollback_names_the_failing_operation_and_writes_nothing(handler, consul_agent):
    prefix = uniq("atk-txn409")
    agent_put(consul_agent, f"{prefix}/c", b"old")
    ops = [
        {"verb": "set", "key": f"{prefix}/a", "value": "1"},
        {"verb": "get-tree", "key": f"{prefix}/"},
        {"verb": "check-index", "key": f"{prefix}/c", "index": 999_999_999},
        {"verb": "set", "key": f"{prefix}/d", "value": "4"},
    ]
    done = await execute_ok(handler, "txn", operations=ops)
    assert done["applied"] is False
    assert [e["op_index"] for e in done["errors"]] == [2], done
    assert consul_agent.request("GET", f"/v1/kv/{prefix}/a").status == 404
    assert consul_agent.request("GET", f"/v1/kv/{prefix}/d").status == 404


async def test_txn_results_map_to_their_operations_around_a_get_tree(handler, consul_agent):
    """get-tree returns any number of entries: the entries after it (whose keys share its
    prefix) must still be attributed to the right operations, values only where read."""
    prefix = uniq("atk-txnmap")
    binary = bytes(range(256))
    import base64

    ops = [
        {"verb": "set", "key": f"{prefix}/a", "value": "A"},
        {
            "verb": "set",
            "key": f"{prefix}/b",
            "value": base64.b64encode(binary).decode(),
            "encoding": "base64",
        },
        {"verb": "get-tree", "key": f"{prefix}/"},
        {"verb": "set", "key": f"{prefix}/c", "value": "C"},
        {"verb": "get", "key": f"{prefix}/b"},
    ]
    done = await execute_ok(handler, "txn", operations=ops)
    assert done["applied"] is True
    keys = [r["key"] for r in done["results"]]
    assert keys == [
        f"{prefix}/a",
        f"{prefix}/b",
        f"{prefix}/a",
        f"{prefix}/b",
        f"{prefix}/c",
        f"{prefix}/b",
    ], keys
    values = [r["value"] for r in done["results"]]
    assert values[0] is None
    assert values[1] is None
    assert values[4] is None
    assert values[2] == "A"
    assert done["results"][3]["encoding"] == "base64"
    assert base64.b64decode(values[3]) == binary == base64.b64decode(values[5])
    assert done["index"] == max(r["modify_index"] for r in done["results"])


async def test_txn_just_under_consuls_request_limit_is_accepted_by_consul(handler, consul_agent):
    """The handler's own size check must not accept a body Consul then answers 413 (or
    refuse one Consul would take)."""
    from handler_consul._operations.txn import MAX_TXN_BODY_BYTES, TxnOperation, txn_body

    key = f"{uniq('atk-txnbig')}/k"
    overhead = len(txn_body([TxnOperation(verb="set", key=key, value=b"")]))
    size = (MAX_TXN_BODY_BYTES - overhead) * 3 // 4
    size -= size % 3
    value = b"\xff" * size
    body = len(txn_body([TxnOperation(verb="set", key=key, value=value)]))
    assert MAX_TXN_BODY_BYTES - 8 <= body <= MAX_TXN_BODY_BYTES
    done = await execute_ok(
        handler, "txn", operations=[{"verb": "set", "key": key, "value": value}]
    )
    assert done["applied"] is True


async def test_lock_whose_txn_answer_is_lost_still_gets_the_lock_with_its_raft_index(
    make_handler, consul_agent, forward_then_drop_for
):
    """Promise (_try_lock): a lock write with an unknown outcome is never re-sent; the
    leader is asked who holds the key, and a lock that landed is ours with its Raft index
    as the fencing token. Attack: drop exactly the answer of the lock transaction."""
    key = f"{uniq('atk-droptxn')}/k"
    proxy = forward_then_drop_for(consul_agent, drop=0)
    handler = await make_handler(proxy, retry={"initial_delay_seconds": 0.0})
    # The lock's transaction is the first PUT /v1/txn (session_create passes): chosen by
    # the proxy as it arrives (a thread arming the drop after session_create raced a fast
    # handler on a loaded machine).
    proxy.drop_matching("PUT /v1/txn", 1)
    lease = await asyncio.wait_for(handler.lock(key, ttl="10s", wait=5), 15)
    try:
        assert [line.split()[:2] for line in proxy.dropped_request_lines] == [["PUT", "/v1/txn"]]
        entry = consul_agent.request("GET", f"/v1/kv/{key}?consistent").json()[0]
        assert entry["Session"] == lease.session_id
        assert lease.fencing_token == entry["ModifyIndex"]
        assert lease.held
        txns = [p for p in proxy.request_lines if "/v1/txn" in p]
        assert len(txns) == 1, txns  # never re-sent
    finally:
        await lease.release()


# == 6. bad input =================================================================================


_FRAGMENTS = [
    "..",
    ".",
    "",
    "a",
    "%2e%2e",
    "%2F",
    "?",
    "#",
    "&",
    "=",
    "agent",
    "v1",
    "/",
    "//",
    "\\",
    " ",
    "\x00",
    "\n",
    "\r",
    "é",
    "%",
    ";",
    "index=1",
    "dc=x",
    "~",
    "\u2028",
    "\ufeff",
    "session",
    "txn",
    "..%2f",
    "%00",
]


def _hyp_strategies() -> Any:
    from hypothesis import strategies as st

    tail = st.one_of(
        st.lists(st.sampled_from(_FRAGMENTS), max_size=6).map("".join),
        st.text(max_size=24),
    )
    return st, tail


def test_hypothesis_new_payloads_reach_only_their_own_endpoint(consul_agent, clean_consul_env):
    """Generated kv_delete, watch, txn and session_create payloads (dangerous key fragments,
    bad types, odd durations): whatever is accepted reaches exactly its own endpoint (one
    method and path, the key percent-encoded and nothing injected into the query); whatever
    is refused is an InfraValidationError naming a payload field, with nothing sent."""
    from urllib.parse import parse_qs, unquote

    from hypothesis import HealthCheck, given, settings

    from handler_consul import BreakerSettings, ConsulSettings, InfraValidationError, RetrySettings

    st, tail = _hyp_strategies()
    prefix = uniq("atk-hyp")
    proxy = CountingProxy(consul_agent).start()
    runner = asyncio.Runner()
    handler = HandlerConsul(
        settings=ConsulSettings(
            host=proxy.host,
            port=proxy.port,
            timeout_seconds=10.0,
            retry=RetrySettings(max_attempts=1),
            breaker=BreakerSettings(enabled=False),
        )
    )
    runner.run(handler.initialize())
    sessions: list[str] = []
    from collections import Counter

    tally: Counter[str] = Counter()

    def send(operation: str, payload: dict[str, Any]) -> tuple[Any, BaseException | None, list]:
        before = (proxy.requests, proxy.bytes_up)
        try:
            response = runner.run(
                handler.execute({"operation": f"consul.{operation}", "payload": payload})
            )
            result, error = dict(response.result), None
        except Exception as exc:  # judged below
            result, error = None, exc
        lines = proxy.request_lines[before[0] :]
        tally[
            f"{operation}:{'refused' if isinstance(error, InfraValidationError) else 'sent'}"
        ] += 1
        if isinstance(error, InfraValidationError):
            assert proxy.requests == before[0], lines
            assert proxy.bytes_up == before[1], lines
            assert (error.context.field or "").startswith("payload"), error.context
        return result, error, lines

    def kv_target(line: str, method: str, key: str, allowed: set[str]) -> None:
        verb, target, _ = line.split(" ")
        assert verb == method, line
        path, _, query = target.partition("?")
        assert unquote(path) == f"/v1/kv/{key}", (line, key)
        assert set(parse_qs(query, keep_blank_values=True)) <= allowed, line

    keys = tail.map(lambda t: f"{prefix}/{t}")
    bad = st.one_of(
        st.none(),
        st.integers(-2, 2),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=4),
        st.lists(st.integers(), max_size=1),
    )
    common = settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    @common
    @given(key=keys, recurse=st.booleans(), cas=st.one_of(st.none(), st.integers(-1, 3), bad))
    def kv_delete(key: str, recurse: bool, cas: Any) -> None:
        payload: dict[str, Any] = {"key": key, "recurse": recurse}
        if cas is not None:
            payload["cas"] = cas
        _, error, lines = send("kv_delete", payload)
        if error is None or not isinstance(error, InfraValidationError):
            assert len(lines) <= 1, lines
            for line in lines:
                kv_target(line, "DELETE", key, {"recurse", "cas", "dc"})

    @common
    @given(
        kind=st.sampled_from(["key", "prefix"]),
        key=keys,
        index=st.one_of(st.sampled_from([0, 1]), bad),
        wait=st.one_of(st.sampled_from([0.05, 0.2]), bad),
    )
    def watch(kind: str, key: str, index: Any, wait: Any) -> None:
        payload = {"kind": kind, kind: key, "index": index, "wait": wait}
        _, error, lines = send("watch", payload)
        if error is None or not isinstance(error, InfraValidationError):
            assert len(lines) == 1, lines
            allowed = {"index", "wait", "recurse", "dc", "consistent", "stale"}
            kv_target(lines[0], "GET", key, allowed)

    op = st.fixed_dictionaries(
        {
            "verb": st.sampled_from(
                [
                    "set",
                    "cas",
                    "get",
                    "get-tree",
                    "delete",
                    "delete-tree",
                    "check-index",
                    "lock",
                    "check-not-exists",
                    "bogus",
                ]
            ),
            "key": keys,
        },
        optional={
            "value": st.one_of(tail, bad),
            "index": st.one_of(st.integers(0, 5), bad),
            "encoding": st.sampled_from(["utf-8", "base64", "latin-1"]),
            "session": st.sampled_from(["8d7f4a4e-5b7c-4b64-9d39-0f6f2a1f0c11", "x"]),
        },
    )

    @common
    @given(ops=st.lists(op, min_size=0, max_size=4))
    def txn(ops: list[dict[str, Any]]) -> None:
        _, error, lines = send("txn", {"operations": ops})
        if error is None or not isinstance(error, InfraValidationError):
            assert [line.split(" ")[:2] for line in lines] == [["PUT", "/v1/txn"]], lines

    @common
    @given(
        name=st.one_of(st.none(), tail),
        ttl=st.one_of(
            st.none(),
            st.sampled_from(
                ["10s", "5s", "24h", "25h", "10", "abc", "9.99s", "1m0s", "-10s", "10s?x=1"]
            ),
        ),
        lock_delay=st.one_of(st.none(), st.sampled_from(["0s", "15s", "61s", "1ms", "x"])),
        behavior=st.sampled_from(["release", "delete", "../x"]),
        node=st.sampled_from([None, "shared-dev", "../agent", "a b", "n?dc=x"]),
        checks=st.sampled_from([None, [], ["serfHealth"], ["../x"], ["a?b"]]),
    )
    def session_create(name, ttl, lock_delay, behavior, node, checks) -> None:  # type: ignore[no-untyped-def]
        payload = {
            "name": name,
            "ttl": ttl,
            "lock_delay": lock_delay,
            "behavior": behavior,
            "node": node,
            "checks": checks,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        result, error, lines = send("session_create", payload)
        if result is not None:
            sessions.append(result["session_id"])
        if error is None or not isinstance(error, InfraValidationError):
            assert [line.split(" ")[1].partition("?")[0] for line in lines] == [
                "/v1/session/create"
            ], lines
            assert all(line.startswith("PUT ") for line in lines), lines

    try:
        kv_delete()
        watch()
        txn()
        session_create()
        for operation in ("kv_delete", "watch", "txn", "session_create"):
            assert tally[f"{operation}:sent"] >= 3, tally
            assert tally[f"{operation}:refused"] >= 5, tally
        print("TALLY", dict(tally))
    finally:
        for sid in sessions:
            consul_agent.request("PUT", f"/v1/session/destroy/{sid}")
        runner.run(handler.shutdown())
        runner.close()
        proxy.close()


# == 4. never hang, never block the loop ===========================================================


async def test_shutdown_ends_black_holed_watches_and_lock_waits_at_once(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise: shutdown() returns quickly and frees every watch thread, even when the
    blocking queries in flight go to an address that swallows packets (no reset, no answer)."""
    import threading

    handler = await make_handler(toxiproxy, timeout_seconds=2.0, shutdown_grace_seconds=0.5)
    other = await make_handler(consul_agent)
    prefix = uniq("atk-hole")
    held = await other.lock(f"{prefix}/held", ttl="10s")
    iters = []
    for i in range(5):
        agent_put(consul_agent, f"{prefix}/w{i}", b"x")
        it = handler.watch(key=f"{prefix}/w{i}", wait=120)
        await anext(it)
        iters.append(asyncio.ensure_future(anext(it)))
    waiter = asyncio.ensure_future(handler.lock(f"{prefix}/held", ttl="10s", wait=120).__aenter__())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(toxiproxy.timeout, 0)
    await asyncio.sleep(0.3)
    runtime = handler._lifecycle.runtime
    assert runtime is not None
    started = time.monotonic()
    await asyncio.wait_for(handler.shutdown(), 15)
    took = time.monotonic() - started
    outcomes = await asyncio.wait_for(asyncio.gather(*iters, waiter, return_exceptions=True), 5)
    gone = await wait_until(lambda: runtime.long_polls.pool.live_threads() == 0, timeout=3.0)
    await asyncio.to_thread(toxiproxy.clear)
    await held.release()
    assert took < 2.5, f"shutdown took {took:.1f}s"
    assert all(isinstance(o, StopAsyncIteration) for o in outcomes[:5]), outcomes
    assert isinstance(outcomes[5], BaseException), outcomes[5]
    assert gone, f"{runtime.long_polls.pool.live_threads()} watch threads still alive"
    assert not [t for t in threading.enumerate() if t.name.startswith("lag-")]
    # The black-holed waiter's session cannot be destroyed through the cut link; it ends
    # with its TTL (not checked here).


async def test_a_lock_wait_on_a_black_holed_agent_ends_by_wait_plus_one_timeout(
    make_handler, consul_agent, toxiproxy: Toxiproxy
):
    """Promise: never hangs. A waiter whose link is cut mid-wait gets a typed error by
    ``wait`` plus about one request timeout, not after the blocking query's 10-minute cap."""
    key = f"{uniq('atk-holewait')}/k"
    holder_handler = await make_handler(consul_agent)
    held = await holder_handler.lock(key, ttl="10s")
    handler = await make_handler(toxiproxy, timeout_seconds=1.0)
    task = asyncio.ensure_future(handler.lock(key, ttl="10s", wait=3).__aenter__())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(toxiproxy.timeout, 0)
    started = time.monotonic()
    with pytest.raises(InfraError) as caught:
        await asyncio.wait_for(task, 20)
    took = time.monotonic() - started
    await asyncio.to_thread(toxiproxy.clear)
    await held.release()
    assert took < 2.5 + 1.0 + 1.5, f"{took:.1f}s: {type(caught.value).__name__}"


async def test_a_prefix_of_thousands_of_keys_watched_and_cached_keeps_the_loop_responsive(
    make_handler, consul_agent
):
    """A watch and cached reads on a prefix of 3,000 keys: each change arrives within a
    second or two, concurrent cached reads are served, and the loop never stalls."""
    import base64

    from support import LagTicker, assert_loop_kept_ticking

    prefix = uniq("atk-big")
    for start in range(0, 3000, 64):
        ops = [
            {
                "KV": {
                    "Verb": "set",
                    "Key": f"{prefix}/k{i:05d}",
                    "Value": base64.b64encode(b"v" * 64).decode(),
                }
            }
            for i in range(start, min(start + 64, 3000))
        ]
        assert consul_agent.request("PUT", "/v1/txn", ops).status == 200
    handler = await make_handler(consul_agent)
    it = handler.watch(prefix=f"{prefix}/", wait=30)
    first = await asyncio.wait_for(anext(it), 10)
    assert len(first["result"]["items"]) == 3000
    async with LagTicker() as ticker:
        for n in range(5):
            agent_put(consul_agent, f"{prefix}/k00007", f"changed-{n}".encode())
            started = time.monotonic()
            change = await asyncio.wait_for(anext(it), 5)
            assert time.monotonic() - started < 2.0
            items = {i["key"]: i["value"] for i in change["result"]["items"]}
            assert items[f"{prefix}/k00007"] == f"changed-{n}"
            reads = await asyncio.gather(
                *(
                    execute_ok(
                        handler, "kv_get", key=f"{prefix}/", recurse=True, consistency="cached"
                    )
                    for _ in range(10)
                )
            )
            assert all(len(r["items"]) == 3000 for r in reads)
    await it.aclose()
    assert_loop_kept_ticking(ticker, min_ticks=10)


async def test_loop_lag_while_locks_and_watches_churn(make_handler, consul_agent):
    """Event-loop lag while 20 watches follow keys that change and 6 tasks take turns on
    3 locks: the loop keeps ticking (p99 under 50 ms on a loaded 2-core machine)."""
    from support import LagTicker, assert_loop_kept_ticking

    handler = await make_handler(consul_agent)
    prefix = uniq("atk-lag")
    stop = asyncio.Event()
    seen = 0

    async def follow(i: int) -> None:
        nonlocal seen
        async for _ in handler.watch(key=f"{prefix}/w{i}", wait=30):
            seen += 1
            if stop.is_set():
                return

    async def write() -> None:
        n = 0
        while not stop.is_set():
            await execute_ok(handler, "kv_put", key=f"{prefix}/w{n % 20}", value=str(n))
            n += 1
            await asyncio.sleep(0.01)

    async def locker(i: int) -> int:
        turns = 0
        while not stop.is_set():
            async with handler.lock(f"{prefix}/l{i % 3}", ttl="10s", wait=30, lock_delay="0s"):
                turns += 1
                await asyncio.sleep(0.02)
        return turns

    async with LagTicker() as ticker:
        followers = [asyncio.ensure_future(follow(i)) for i in range(20)]
        lockers = [asyncio.ensure_future(locker(i)) for i in range(6)]
        writer = asyncio.ensure_future(write())
        await asyncio.sleep(6.0)
        stop.set()
        turns = await asyncio.wait_for(asyncio.gather(*lockers), 20)
        await asyncio.wait_for(writer, 5)
        for f in followers:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    assert sum(turns) > 20, turns
    assert seen > 100, seen
    assert_loop_kept_ticking(ticker, min_ticks=300)
    assert not sessions_named(consul_agent, prefix)


async def test_an_idle_cache_entry_is_dropped_and_its_thread_freed_on_time(
    make_handler, consul_agent
):
    handler = await make_handler(consul_agent, cache={"idle_seconds": 2.0})
    key = f"{uniq('atk-idle')}/k"
    agent_put(consul_agent, key, b"x")
    await execute_ok(handler, "kv_get", key=key, consistency="cached")
    assert handler.describe()["cache"]["entries"] == 1
    assert await wait_until(lambda: long_poll_busy(handler) == 1, timeout=1.0)
    assert await wait_until(
        lambda: handler.describe()["cache"]["entries"] == 0 and long_poll_busy(handler) == 0,
        timeout=4.5,
    ), handler.describe()["long_polls"]


async def test_a_lease_survives_a_leader_failover_and_never_has_two_holders(
    make_handler, consul_cluster
):
    """Attack on 'never two holders' across a Raft leader change: A holds the lock through
    one follower, B waits through the other, the leader is killed. Through the election A
    must either stay the holder (lost not set while its session holds the key) or have
    lost set before B gets it; B must not get the key while A's session holds it."""
    f1, f2 = consul_cluster.followers()[:2]
    a = await make_handler(f1, timeout_seconds=3.0)
    b = await make_handler(f2, timeout_seconds=3.0)
    key = f"{uniq('atk-failover')}/k"
    lease_a = await a.lock(key, ttl="10s", lock_delay="0s")
    b_task = asyncio.ensure_future(b.lock(key, ttl="10s", wait=40, lock_delay="0s").__aenter__())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(consul_cluster.kill_leader)
    await asyncio.to_thread(consul_cluster.wait_for_leader)
    violations: list[str] = []
    b_error: BaseException | None = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if b_task.done():
            b_error = b_task.exception()
            if b_error is not None:
                break  # B failed (typed) during the election: no second holder
            lease_b = b_task.result()
            holder = await asyncio.to_thread(key_holder, f2, key)
            if not lease_a.lost.is_set():
                violations.append(
                    f"B holds the key (holder {holder == lease_b.session_id}) while A still "
                    f"believes it holds it (A token {lease_a.fencing_token}, B token "
                    f"{lease_b.fencing_token}, A session alive: "
                    f"{bool(f1.request('GET', f'/v1/session/info/{lease_a.session_id}').json())})"
                )
            break
        await asyncio.sleep(0.1)
    try:
        assert not violations, violations
        assert not lease_a.lost.is_set(), f"A lost its lease over a failover: {lease_a.lost_reason}"
        assert b_error is None or isinstance(b_error, InfraError), repr(b_error)
    finally:
        if not b_task.done():
            b_task.cancel()
        await asyncio.gather(b_task, return_exceptions=True)
        if b_task.done() and not b_task.cancelled() and b_task.exception() is None:
            await b_task.result().release()
        await lease_a.release()


@pytest.mark.parametrize("script", [[0], [5], [9, 3]], ids=["zero", "constant", "backwards"])
async def test_public_watch_and_lock_on_a_misreporting_index_never_spin(make_tuned_handler, script):
    """handler.watch() against a server whose blocking reads
    return at once with index 0, a constant index, or an index that keeps going backwards:
    requests stay near 1 / long_poll.min_interval_seconds a second, the loop keeps ticking."""
    from types import SimpleNamespace

    from support import LagTicker
    from test_long_polls import index_server

    with index_server(list(script) * 1000) as server:
        handler = await make_tuned_handler(
            SimpleNamespace(port=server.server_address[1]),
            long_poll={"min_interval_seconds": 0.05},
        )
        seen = server.RequestHandlerClass.seen
        it = handler.watch(key="k", wait=30)
        await asyncio.wait_for(anext(it), 5)
        async with LagTicker() as ticker:
            pending = asyncio.ensure_future(anext(it))
            before = len(seen)
            await asyncio.sleep(2.0)
            rounds = len(seen) - before
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await it.aclose()
    assert rounds <= 2.0 / 0.05 * 1.3 + 2, f"{rounds} rounds in 2 s"
    assert ticker.max_ms < 250, ticker.describe()


async def test_with_every_long_poll_thread_taken_short_operations_and_free_locks_still_run(
    make_handler, consul_agent
):
    handler = await make_handler(consul_agent, timeout_seconds=2.0, long_poll={"max_watches": 2})
    prefix = uniq("atk-exhaust")
    iters = []
    for i in range(2):
        agent_put(consul_agent, f"{prefix}/w{i}", b"x")
        it = handler.watch(key=f"{prefix}/w{i}", wait=60)
        await anext(it)
        iters.append((it, asyncio.ensure_future(anext(it))))
    await asyncio.sleep(0.3)
    assert long_poll_busy(handler) == 2
    started = time.monotonic()
    await asyncio.gather(
        *(execute_ok(handler, "kv_put", key=f"{prefix}/p{i}", value="v") for i in range(20)),
        *(execute_ok(handler, "kv_get", key=f"{prefix}/p{i % 3}") for i in range(20)),
    )
    assert time.monotonic() - started < 1.5
    async with handler.lock(f"{prefix}/free", ttl="10s", wait=2) as lease:
        assert lease.held
    for it, pending in iters:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await it.aclose()


async def test_a_cached_read_is_not_called_stale_because_long_poll_threads_are_busy(
    make_handler, consul_agent
):
    """Promise: StaleAnswer means Consul does not answer. Attack: Consul answers fine, but
    every long-poll thread is taken by watches, so the cache's upkeep cannot get a thread.
    A cached read must still give an answer (from memory in sync, or read afresh), not an
    InfraUnavailableError saying the last good answer is too old."""
    handler = await make_handler(
        consul_agent,
        timeout_seconds=1.0,
        long_poll={"max_watches": 1},
        cache={"max_staleness_seconds": 2.0},
    )
    prefix = uniq("atk-stalebusy")
    agent_put(consul_agent, f"{prefix}/w", b"x")
    agent_put(consul_agent, f"{prefix}/c", b"cached")
    it = handler.watch(key=f"{prefix}/w", wait=60)
    await anext(it)
    pending = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.3)
    got = await execute_ok(handler, "kv_get", key=f"{prefix}/c", consistency="cached")
    assert got["value"] == "cached"
    await asyncio.sleep(4.0)
    try:
        again = await execute_ok(handler, "kv_get", key=f"{prefix}/c", consistency="cached")
    except InfraUnavailableError as error:
        pytest.fail(f"Consul answers, yet: {error.message}", pytrace=False)
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await it.aclose()
    assert again["value"] == "cached"
