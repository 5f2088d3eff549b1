"""The handler under real faults, each under a steady load of envelopes.

1. a dev agent killed and restarted on the same ports;
2. toxiproxy adding latency beyond the timeout, resetting connections, black-holing them;
3. a three-server cluster losing its leader while kv_put envelopes keep coming (the handler
   on a follower, and the handler on the leader itself).

In each: every envelope ends within its deadline (plus EPSILON) with a result or a typed
InfraError; no task hangs (a hard bound on waiting for all of them); calls in flight never
exceed ``max_concurrent_operations`` (describe()["pool"] is sampled on every loop tick; in the
threads mode a sampler thread also counts OS threads named ``handler-consul-*``, and in the
asyncio mode it must count none); the breaker opens,
rejects fast without touching the pool, and closes on its own once Consul is back; in (3)
every acknowledged write reads back, ``consistency: consistent``, with the value written.

Every test runs in both I/O modes (``io_mode``). Each prints one ``FAULT-SUMMARY`` line to
the terminal (past pytest's capture) and appends it to ``$FAULT_SUMMARY_FILE`` when that is
set. Harness calls that block (kill, restart, toxiproxy's API) run in a thread so the
loop-lag figure is the handler's own. The load, the watch and the summary are in
support/faults.py.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from typing import Any

import pytest
from harness import ConsulAgent, ConsulCluster, Toxiproxy
from support import (
    Load,
    Watch,
    emit,
    fast_rejections,
    in_thread,
    kv_mix,
    puts,
    read_back,
    summarize,
    unique_prefix,
    wait_until,
    watching,
)

from handler_consul import HandlerConsul

pytestmark = [pytest.mark.slow, pytest.mark.consul]

EPSILON = 0.25  # seconds past its deadline an envelope may end (a loaded 2-CPU CI box)
HARD_BOUND = 15.0  # seconds to wait for the last envelopes before calling a task hung
WORKERS = 4
# A breaker rejection answers within this. A rejection that queued for a slot would take at
# least max_wait_seconds (0.5 s), one that waited on a request at least the timeout (1 s), so
# half of max_wait proves "fails fast" without betting on a loaded machine's scheduler
# (the rejection's own cost is measured in bench/, not here).
FAST_REJECTION = 0.25


def handler_config(port: int, **over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "timeout_seconds": 1.0,
        "max_concurrent_operations": WORKERS,
        "max_wait_seconds": 0.5,
        "shutdown_grace_seconds": 0.5,
        "retry": {"max_attempts": 2, "initial_delay_seconds": 0.05, "max_delay_seconds": 0.2},
        "breaker": {"failure_threshold": 3, "reset_timeout_seconds": 1.0},
    }
    config.update(over)
    return config


def check_bound(watch: Watch, io_mode: str) -> None:
    """Calls in flight stayed within the bound: worker threads, or coroutines on the loop."""
    assert watch.pool_busy_peak <= WORKERS
    assert watch.pool_threads_peak <= WORKERS
    if io_mode == "asyncio":
        assert watch.sampler.peak == 0  # no worker thread was ever started
        assert watch.pool_threads_peak == 0
    else:
        assert 1 <= watch.sampler.peak <= WORKERS


async def check_common(load: Load, watch: Watch, io_mode: str, *, recovered_tail: int) -> None:
    """What every fault test must show, once the load has finished."""
    pending = await load.finish(HARD_BOUND)
    assert not pending, f"{len(pending)} envelopes still running after {HARD_BOUND}s"
    assert load.outcomes, "no envelope was sent"
    assert not load.untyped(), [(o.index, repr(o.error)) for o in load.untyped()][:5]
    overruns = load.overruns(EPSILON)
    assert not overruns, [(o.index, o.operation, round(o.elapsed, 3), o.kind) for o in overruns]
    check_bound(watch, io_mode)
    # The breaker opened, rejected fast, and closed again on its own.
    assert "open" in watch.transitions.path, watch.transitions.path
    assert watch.transitions.path[-1] == "closed", watch.transitions.path
    assert watch.breaker_state() == "closed"
    rejected = fast_rejections(load)
    assert rejected, load.counts()
    assert max(o.elapsed for o in rejected) < FAST_REJECTION, max(o.elapsed for o in rejected)
    # Once Consul was back, envelopes succeeded again.
    tail = load.outcomes[-recovered_tail:]
    assert all(o.kind == "ok" for o in tail), [o.kind for o in tail]


# -- 1. agent killed and restarted under load ---------------------------------------------------


async def test_fault_agent_killed_and_restarted_under_steady_load(
    fresh_consul_agent: ConsulAgent, capsys: pytest.CaptureFixture[str], io_mode: str
) -> None:
    agent = fresh_consul_agent
    handler = HandlerConsul()
    try:
        with unique_prefix("restart") as prefix:
            async with watching(handler, handler_config(agent.http_port, io=io_mode)) as watch:
                load = Load(handler, kv_mix(prefix), rate=40, deadline=1.5).start()
                await load.run_for(1.5)
                await in_thread(agent.kill)
                await load.run_for(3.0)
                assert watch.breaker_state() == "open"
                await in_thread(agent.restart)  # same ports; waits until it has a leader
                assert await wait_until(lambda: watch.breaker_state() == "closed", timeout=10)
                await load.run_for(2.0)
                await check_common(load, watch, io_mode, recovered_tail=20)
        emit(
            summarize(f"agent-killed-and-restarted [{io_mode}]", load, watch, thread_bound=WORKERS),
            capsys,
        )
    finally:
        await handler.shutdown()


# -- 2. latency beyond the timeout, resets, a black hole ------------------------------------------


FAULTS: dict[str, Callable[[Toxiproxy], str]] = {
    "latency-beyond-timeout": lambda proxy: proxy.latency(2500),
    "connection-reset": lambda proxy: proxy.reset_peer(0),
    "black-hole": lambda proxy: proxy.timeout(0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_toxiproxy(
    fault: str,
    toxiproxy_for: Callable[[Any], Toxiproxy],
    consul_agent: ConsulAgent,
    capsys: pytest.CaptureFixture[str],
    io_mode: str,
) -> None:
    proxy = toxiproxy_for(consul_agent)
    handler = HandlerConsul()
    try:
        with unique_prefix(fault) as prefix:
            async with watching(handler, handler_config(proxy.port, io=io_mode)) as watch:
                load = Load(handler, kv_mix(prefix), rate=40, deadline=1.5).start()
                await load.run_for(1.0)
                await in_thread(FAULTS[fault], proxy)
                assert await wait_until(lambda: watch.breaker_state() == "open", timeout=5)
                await load.run_for(1.5)
                if fault == "black-hole":
                    # Hung calls fill the pool; a rejection still answers at once.
                    assert watch.pool_busy_peak == WORKERS
                await in_thread(proxy.clear)
                assert await wait_until(lambda: watch.breaker_state() == "closed", timeout=10)
                await load.run_for(1.5)
                await check_common(load, watch, io_mode, recovered_tail=20)
        emit(
            summarize(f"{fault} [{io_mode}]", load, watch, thread_bound=WORKERS),
            capsys,
        )
    finally:
        await handler.shutdown()


# -- 3. the cluster loses its leader ------------------------------------------------------------


def cluster_config(port: int, io: str) -> dict[str, Any]:
    # Writes may wait out an election (about 2.5 s on loopback): a longer deadline and
    # more attempts than the single-agent tests.
    return handler_config(
        port,
        timeout_seconds=1.5,
        max_wait_seconds=1.0,
        retry={"max_attempts": 4, "initial_delay_seconds": 0.1, "max_delay_seconds": 0.5},
        breaker={"failure_threshold": 3, "reset_timeout_seconds": 1.0},
        io=io,
    )


async def test_fault_cluster_leader_killed_while_writes_continue_via_a_follower(
    consul_cluster: ConsulCluster, capsys: pytest.CaptureFixture[str], io_mode: str
) -> None:
    follower = (await in_thread(consul_cluster.followers))[0]
    handler = HandlerConsul()
    try:
        with unique_prefix("leader-via-follower") as prefix:
            async with watching(handler, cluster_config(follower.http_port, io_mode)) as watch:
                load = Load(handler, puts(prefix), rate=25, deadline=4.0).start()
                await load.run_for(1.5)
                healthy_until = asyncio.get_running_loop().time()
                killed = await in_thread(consul_cluster.kill_leader)
                assert killed is not follower
                await load.run_for(4.0)
                await in_thread(lambda: consul_cluster.wait_for_leader(exclude=killed))
                healthy_from = asyncio.get_running_loop().time()
                await load.run_for(2.0)
                pending = await load.finish(HARD_BOUND)
                assert not pending
                assert await wait_until(lambda: watch.breaker_state() == "closed", timeout=10)
                acked, lost = await read_back(handler, load)
            healthy = (healthy_until, healthy_from)
            await check_cluster(load, watch, io_mode, acked, lost, must_open=False, healthy=healthy)
        emit(
            summarize(
                f"cluster-leader-killed (handler on a follower) [{io_mode}]",
                load,
                watch,
                thread_bound=WORKERS,
                acked_writes=acked,
                acked_lost=len(lost),
            ),
            capsys,
        )
    finally:
        await handler.shutdown()


async def test_fault_cluster_leader_killed_under_the_handler_and_restarted(
    consul_cluster: ConsulCluster, capsys: pytest.CaptureFixture[str], io_mode: str
) -> None:
    leader = await in_thread(consul_cluster.leader)
    handler = HandlerConsul()
    try:
        with unique_prefix("leader-under-handler") as prefix:
            async with watching(handler, cluster_config(leader.http_port, io_mode)) as watch:
                load = Load(handler, puts(prefix), rate=25, deadline=4.0).start()
                await load.run_for(1.5)
                healthy_until = asyncio.get_running_loop().time()
                await in_thread(leader.kill)
                await load.run_for(2.5)
                assert watch.breaker_state() == "open"
                await in_thread(consul_cluster.restart, leader)  # same ports and data dir
                assert await wait_until(lambda: watch.breaker_state() == "closed", timeout=15)
                healthy_from = asyncio.get_running_loop().time()
                await load.run_for(2.0)
                pending = await load.finish(HARD_BOUND)
                assert not pending
                acked, lost = await read_back(handler, load)
            healthy = (healthy_until, healthy_from)
            await check_cluster(load, watch, io_mode, acked, lost, must_open=True, healthy=healthy)
        emit(
            summarize(
                f"cluster-leader-killed (handler on the leader) [{io_mode}]",
                load,
                watch,
                thread_bound=WORKERS,
                acked_writes=acked,
                acked_lost=len(lost),
            ),
            capsys,
        )
    finally:
        await handler.shutdown()


async def check_cluster(
    load: Load,
    watch: Watch,
    io_mode: str,
    acked: int,
    lost: list[str],
    *,
    must_open: bool,
    healthy: tuple[float, float],
) -> None:
    assert not load.untyped()
    overruns = load.overruns(EPSILON)
    assert not overruns, [(o.index, round(o.elapsed, 3), o.kind) for o in overruns]
    check_bound(watch, io_mode)
    assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:5]}"
    # The load really ran: most envelopes started while the cluster could serve the handler
    # (before the kill, after the recovery) were acknowledged. Counted over those windows,
    # not the whole run: how long the outage lasts (a restart, an election) depends on the
    # machine's load, and every envelope in it fails fast by design.
    until, since = healthy
    served = [o for o in load.outcomes if o.started < until or o.started >= since]
    assert served
    assert acked >= 1
    assert sum(o.kind == "ok" for o in served) >= len(served) // 2, (len(served), load.counts())
    assert watch.breaker_state() == "closed"
    path = watch.transitions.path
    if must_open or path:
        # Whatever opened it, it closed again on its own.
        assert "open" in path, path
        assert path[-1] == "closed", path
    if must_open:
        rejected = fast_rejections(load)
        assert rejected, load.counts()
        assert max(o.elapsed for o in rejected) < FAST_REJECTION
    tail = load.outcomes[-10:]
    assert all(o.kind == "ok" for o in tail), [o.kind for o in tail]
    # Not an assertion on timing, a sanity check that the figures are real measurements.
    assert watch.ticker.ticks > 100
    assert statistics.fmean(o.elapsed for o in load.outcomes) > 0
