"""Blocking queries and the query cache: Consul's index rules, their own pool, staleness,
idle expiry and shutdown. Real agents for Consul's behaviour; a scripted server only where a
test needs an index Consul would not produce on demand (going backwards, zero)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from harness import ConsulAgent
from support.envelopes import kv_get, kv_put, unique_key
from support.handlers import MakeHandler

from handler_consul import HandlerConsul
from handler_consul._longpoll import BlockingQuery, next_index, wait_text
from handler_consul._operations.effects import StaleAnswer
from handler_consul._operations.settle import settle
from handler_consul._runtime import Runtime
from handler_consul._transport import ConsulTransport
from handler_consul._transport.aio import AsyncConsulTransport


def runtime_of(handler: HandlerConsul) -> Runtime:
    runtime = handler._lifecycle.runtime
    assert runtime is not None
    return runtime


def key_fetch(key: str) -> Any:
    """One blocking round on ``key``: (X-Consul-Index, value or None)."""

    async def fetch(client: Any, round_: tuple[int, str]) -> tuple[int, str | None]:
        index, wait = round_
        raw, data = await settle(client.kv.get(key, index=index, wait=wait))
        return int(raw), (data["Value"].decode() if data and data["Value"] else None)

    return fetch


def key_first(runtime: Runtime, key: str) -> Any:
    async def first() -> tuple[int, str | None]:
        return await runtime.long_polls.query(key_fetch(key), (0, "1s"), wait_seconds=1.0)

    return first


# -- the index rules (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "returned", "expected"),
    [
        (0, 17, 17),  # first round: take what Consul returns
        (17, 17, 17),  # wait ended without a change
        (17, 42, 42),  # moved forward
        (42, 17, 0),  # went backwards (restore, new cluster): start over
        (0, 0, 1),  # below 1: index=0 never blocks, so it would spin
        (5, 0, 0),  # backwards to 0 resets first; the next round then returns 1 or more
        (0, -3, 1),
    ],
)
def test_next_index_follows_consuls_rules(previous: int, returned: int, expected: int) -> None:
    assert next_index(previous, returned) == expected


@pytest.mark.parametrize(
    ("seconds", "text"), [(1.5, "1500ms"), (600, "600000ms"), (0.0001, "1ms"), (0, "1ms")]
)
def test_wait_is_sent_in_whole_milliseconds(seconds: float, text: str) -> None:
    assert wait_text(seconds) == text


# -- blocking rounds against a real agent -----------------------------------------------------


async def test_a_round_blocks_until_the_key_changes_and_reports_the_change(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    runtime = runtime_of(handler)
    key = unique_key()
    await handler.execute(kv_put(key, "one"))
    query = BlockingQuery(runtime.long_polls, key_fetch(key), wait_seconds=10.0)

    index, value, changed = await query.next()
    assert (value, changed) == ("one", True)

    pending = asyncio.ensure_future(query.next())
    await asyncio.sleep(0.3)
    assert not pending.done(), "the second round must wait on Consul, not return at once"
    await handler.execute(kv_put(key, "two"))
    new_index, value, changed = await asyncio.wait_for(pending, 5)
    assert (value, changed) == ("two", True)
    assert new_index > index


async def test_a_round_whose_wait_ends_without_a_change_reports_no_change(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    key = unique_key()
    await handler.execute(kv_put(key, "still"))
    query = BlockingQuery(runtime_of(handler).long_polls, key_fetch(key))
    index, _, _ = await query.next()
    started = time.monotonic()
    again, value, changed = await query.next(wait_seconds=1.0)
    assert time.monotonic() - started >= 0.9
    assert (again, value, changed) == (index, "still", False)


# -- index rules against a server that misreports its index -----------------------------------


class _Indexes(http.server.BaseHTTPRequestHandler):
    """Answers the leader probe, then each KV read with the next X-Consul-Index of its script
    at once; records the ``index`` parameter of each read and when it arrived."""

    protocol_version = "HTTP/1.1"
    script: ClassVar[list[int]] = []
    seen: ClassVar[list[tuple[int, float]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/v1/status/leader":
            body, index = b'"127.0.0.1:8300"', 1
        else:
            query = urllib.parse.parse_qs(url.query)
            self.seen.append((int(query.get("index", ["0"])[0]), time.monotonic()))
            index = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            body = json.dumps([{"Key": "k", "Value": None, "Flags": 0}]).encode()
        self.send_response(200)
        self.send_header("X-Consul-Index", str(index))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def index_server(script: list[int]) -> Iterator[Any]:
    handler = type("Indexes", (_Indexes,), {"script": list(script), "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_an_index_that_goes_backwards_resets_and_zero_becomes_one(
    make_tuned_handler: MakeHandler,
) -> None:
    with index_server([100, 50, 60, 0, 0]) as server:
        handler = await make_tuned_handler(
            SimpleNamespace(port=server.server_address[1]), long_poll={"min_interval_seconds": 0}
        )
        query = BlockingQuery(runtime_of(handler).long_polls, key_fetch("k"))
        results = [await query.next() for _ in range(5)]
        sent = [index for index, _ in server.RequestHandlerClass.seen]
    # Sent: 0 first; 100; then 50 < 100 resets to 0; 60; then 0 < 60 resets to 0; then 0
    # again (not backwards from 0) is raised to 1.
    assert sent == [0, 100, 0, 60, 0]
    assert [index for index, _, _ in results] == [100, 0, 60, 0, 1]
    assert [changed for _, _, changed in results] == [True, True, True, True, True]


async def test_rounds_that_return_at_once_are_rate_limited(
    make_tuned_handler: MakeHandler,
) -> None:
    with index_server([7]) as server:
        handler = await make_tuned_handler(
            SimpleNamespace(port=server.server_address[1]), long_poll={"min_interval_seconds": 0.2}
        )
        query = BlockingQuery(runtime_of(handler).long_polls, key_fetch("k"))
        for _ in range(5):
            await query.next()
        times = [at for _, at in server.RequestHandlerClass.seen]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 4
    assert min(gaps) >= 0.18, gaps  # a little under 0.2: the two clocks read at other points


# -- their own pool ---------------------------------------------------------------------------


async def test_long_polls_never_take_a_short_operations_slot(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    """Two short slots, four blocking queries held open: envelopes still run at once."""
    handler = await make_tuned_handler(
        consul_agent, max_concurrent_operations=2, long_poll={"max_watches": 4}
    )
    runtime = runtime_of(handler)
    key = unique_key()
    await handler.execute(kv_put(key, "v"))
    first = await BlockingQuery(runtime.long_polls, key_fetch(key)).next()
    held = [
        asyncio.ensure_future(
            BlockingQuery(runtime.long_polls, key_fetch(key), index=first[0]).next(
                wait_seconds=20.0
            )
        )
        for _ in range(4)
    ]
    await asyncio.sleep(0.3)
    assert runtime.long_polls.pool.snapshot()["busy"] == 4
    responses = await asyncio.wait_for(
        asyncio.gather(*(handler.execute(kv_get(key)) for _ in range(20))), 10
    )
    assert [r.result["value"] for r in responses] == ["v"] * 20
    assert not any(task.done() for task in held), "the blocking queries are still waiting"
    assert runtime.pool.snapshot()["busy"] == 0
    await handler.execute(kv_put(key, "w"))  # ends the held rounds
    ended = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert [value for _, value, _ in ended] == ["w"] * 4


async def test_long_polls_run_on_their_own_threads_over_the_blocking_transport_in_either_mode(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent, io_mode: str
) -> None:
    """In asyncio mode too: a blocking query holds a worker of the long-poll pool and a
    connection of its own blocking transport, never a slot of the operations' bulkhead."""
    handler = await make_tuned_handler(
        consul_agent, max_concurrent_operations=1, long_poll={"max_watches": 2}
    )
    runtime = runtime_of(handler)
    assert handler.describe()["io"] == io_mode
    expected = AsyncConsulTransport if io_mode == "asyncio" else ConsulTransport
    assert type(runtime.transport) is expected
    assert type(runtime.long_polls.client.http) is ConsulTransport
    key = unique_key()
    await handler.execute(kv_put(key, "v"))
    first = await BlockingQuery(runtime.long_polls, key_fetch(key)).next()
    held = asyncio.ensure_future(
        BlockingQuery(runtime.long_polls, key_fetch(key), index=first[0]).next(wait_seconds=20.0)
    )
    await asyncio.sleep(0.3)
    assert runtime.long_polls.pool.snapshot()["busy"] == 1
    await handler.execute(kv_put(key, "w"))  # the one operations slot is free
    _, value, _ = await asyncio.wait_for(held, 10)
    assert value == "w"


# -- the cache --------------------------------------------------------------------------------


async def test_the_cache_serves_from_memory_and_follows_writes(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    runtime = runtime_of(handler)
    key = unique_key()
    await handler.execute(kv_put(key, "a"))
    served = await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
    assert (served.value, served.source, served.age_seconds) == ("a", "consul", 0.0)
    assert len(runtime.cache) == 1
    assert runtime.long_polls.tasks == 1

    await handler.execute(kv_put(key, "b"))
    seen_at = None
    written = time.monotonic()
    while time.monotonic() - written < 5:
        served = await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
        if served.value == "b":
            seen_at = time.monotonic()
            break
        await asyncio.sleep(0.005)
    assert seen_at is not None, "the write never reached the cache"
    assert served.source == "consul"


async def test_concurrent_first_reads_of_one_key_share_one_request(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    runtime = runtime_of(handler)
    key = unique_key()
    await handler.execute(kv_put(key, "x"))
    calls = 0
    first = key_first(runtime, key)

    async def counted() -> tuple[int, str | None]:
        nonlocal calls
        calls += 1
        return await first()

    served = await asyncio.gather(
        *(runtime.cache.get(key, key_fetch(key), counted) for _ in range(10))
    )
    assert calls == 1
    assert {s.value for s in served} == {"x"}
    assert runtime.long_polls.tasks == 1


async def test_while_consul_is_down_the_cache_serves_the_last_answer_with_its_age_then_refuses(
    make_tuned_handler: MakeHandler, fresh_consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(fresh_consul_agent, cache={"max_staleness_seconds": 1.5})
    runtime = runtime_of(handler)
    key = unique_key()
    await handler.execute(kv_put(key, "last"))
    await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))

    fresh_consul_agent.kill()
    await asyncio.sleep(0.5)
    served = await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
    assert (served.value, served.source) == ("last", "cache")
    assert 0.3 <= served.age_seconds <= 1.5

    await asyncio.sleep(1.5)
    with pytest.raises(StaleAnswer) as info:
        await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
    assert info.value.age_seconds is not None
    assert info.value.age_seconds > 1.5
    assert "max_staleness_seconds" in str(info.value)

    fresh_consul_agent.restart()
    # Back in sync: the watch's retries reach the agent again (a dev agent restarts empty).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(StaleAnswer):
            served = await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
            if served.source == "consul":
                break
        await asyncio.sleep(0.05)
    assert served.source == "consul"
    assert served.value is None  # the dev agent's KV is empty after a restart


async def test_a_query_nobody_reads_is_dropped_and_its_watch_stopped(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent, cache={"idle_seconds": 1.0})
    runtime = runtime_of(handler)
    key = unique_key()
    await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
    assert runtime.long_polls.tasks == 1
    await asyncio.sleep(2.8)  # idle after 1 s; its last round asked to block at least 1 s
    assert len(runtime.cache) == 0
    assert runtime.long_polls.tasks == 0


async def test_past_max_entries_reads_go_to_consul_each_time(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent, cache={"max_entries": 1})
    runtime = runtime_of(handler)
    one, two = unique_key(), unique_key()
    assert (await runtime.cache.get(one, key_fetch(one), key_first(runtime, one))).cached
    served = await runtime.cache.get(two, key_fetch(two), key_first(runtime, two))
    assert (served.cached, served.source) == (False, "consul")
    assert len(runtime.cache) == 1


# -- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_runs_closers_while_the_pool_works_then_stops_every_watch(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent)
    runtime = runtime_of(handler)
    key, marker = unique_key(), unique_key()
    await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))
    order: list[str] = []

    async def first_added() -> None:
        order.append("first")

    async def second_added() -> None:
        # Envelopes are refused by now, but the pool still takes work: write directly.
        async def put(client: Any, _: None) -> Any:
            return await settle(client.kv.put(marker, "closed"))

        await runtime.long_polls.query(put, None, wait_seconds=1.0)
        order.append("second")

    runtime.add_closer(first_added)
    runtime.add_closer(second_added)
    await handler.shutdown()
    assert order == ["second", "first"]  # newest first, like a stack of cleanups
    assert runtime.long_polls.tasks == 0
    assert len(runtime.cache) == 0
    check = HandlerConsul()
    await check.initialize({"host": "127.0.0.1", "port": consul_agent.port})
    try:
        assert (await check.execute(kv_get(marker))).result["value"] == "closed"
    finally:
        await check.shutdown()


async def test_shutdown_ends_blocking_queries_in_flight_at_once(
    make_tuned_handler: MakeHandler, consul_agent: ConsulAgent
) -> None:
    """A watch asked to block for 60 s: shutdown() shuts its socket down, so the long-poll
    thread is free within a second, not at the end of the wait."""
    # Other tests' handlers may still have watch threads winding down: count only ours.
    before = set(threading.enumerate())
    handler = await make_tuned_handler(consul_agent)
    runtime = runtime_of(handler)
    key = unique_key()
    await runtime.cache.get(key, key_fetch(key), key_first(runtime, key))  # a watch, 60 s
    held = BlockingQuery(runtime.long_polls, key_fetch(key), index=10**12)
    pending = asyncio.ensure_future(held.next(wait_seconds=60.0))
    await asyncio.sleep(0.3)
    assert runtime.long_polls.pool.snapshot()["busy"] == 2
    workers = [
        t for t in set(threading.enumerate()) - before if t.name.startswith("handler-consul-watch-")
    ]
    assert len(workers) == 2
    started = time.monotonic()
    await handler.shutdown()
    for worker in workers:
        await asyncio.to_thread(worker.join, 5)
    assert [t.name for t in workers if t.is_alive()] == []
    assert time.monotonic() - started < 1.5
    assert pending.done()
    assert type(pending.exception()).__name__ in {"PoolClosed", "TransportConnectionError"}
    assert runtime.long_polls.tasks == 0


async def test_a_blocking_query_that_starts_its_read_after_the_abort_ends_at_once(
    consul_agent: ConsulAgent,
) -> None:
    """A worker can be between its checkout and its first read when shutdown aborts the
    requests in flight; it must not slip through and block for its whole wait."""
    from handler_consul import ConsulSettings
    from handler_consul._runtime import build_client
    from handler_consul._transport import TransportConnectionError

    client = build_client(ConsulSettings(host=consul_agent.host, port=consul_agent.port))
    key = unique_key()
    consul_agent.request("PUT", f"/v1/kv/{key}", b"v")
    index = int(consul_agent.request("GET", f"/v1/kv/{key}").headers["X-Consul-Index"])
    try:
        client.http.abort_in_flight()  # before this request reaches its read
        started = time.monotonic()
        with pytest.raises(TransportConnectionError) as caught:
            await asyncio.to_thread(client.kv.get, key, index=index, wait="30s")
        assert time.monotonic() - started < 2.0
        assert caught.value.request_sent is True
    finally:
        client.http.close()
