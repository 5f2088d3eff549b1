"""``scripts/bench --discovery``: service discovery, cached and not, side by side.

Against the bench's own dev agent, with three instances of one service registered (TTL checks
passing, weights 1/2/7), in one process and one run, interleaved round by round:

- ``discover.cached``: ``consul.discover`` answered from the handler's query cache;
- ``endpoint.cached``: ``consul.endpoint`` (round robin) over the same cache entry;
- ``discover.uncached``: ``consul.discover`` with ``cache: false``, one request each through
  the handler's pool (10 workers);
- ``consul2.health``: python-consul2's ``health.service(name, passing=True)`` on its default
  transport, through a ``ThreadPoolExecutor(10)`` (the same pool size).

Each at 1 and 64 envelopes in flight. Then the change-visibility latency: instances added,
gone critical and deregistered at the agent, and the time from the agent's answer until a
cached ``consul.discover`` shows the change, both with the changes spaced out (each one alone)
and back to back (the blocking-query rate limit then adds its pause).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench.agent import loadavg
from handler_consul import ConsulSettings, HandlerConsul

SERVICE = "bench-web"
WEIGHTS = (1, 2, 7)
TARGET_CACHED_OPS_PER_S = 50_000
INFLIGHT = (1, 64)


def register_instances(agent: Any) -> None:
    for n, weight in enumerate(WEIGHTS):
        body = {
            "ID": f"{SERVICE}-{n}",
            "Name": SERVICE,
            "Port": 7000 + n,
            "Weights": {"Passing": weight, "Warning": 1},
            "Check": {"TTL": "1h", "Status": "passing"},
        }
        resp = agent.request("PUT", "/v1/agent/service/register", body)
        if resp.status != 200:
            raise RuntimeError(f"could not register {body['ID']}: {resp.status} {resp.text}")


async def contenders(
    host: str, port: int
) -> tuple[dict[str, Callable[[], Awaitable[Any]]], Callable[[], Awaitable[None]], HandlerConsul]:
    import consul  # python-consul2

    handler = HandlerConsul(settings=ConsulSettings(host=host, port=port))
    await handler.initialize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = consul.Consul(host=host, port=port)
    executor = ThreadPoolExecutor(10, thread_name_prefix="bench-consul2")
    loop = asyncio.get_running_loop()
    execute = handler.execute
    health = client.health

    def discover_cached() -> Awaitable[Any]:
        return execute({"operation": "consul.discover", "payload": {"service": SERVICE}})

    def endpoint_cached() -> Awaitable[Any]:
        return execute({"operation": "consul.endpoint", "payload": {"service": SERVICE}})

    def discover_uncached() -> Awaitable[Any]:
        payload = {"service": SERVICE, "cache": False}
        return execute({"operation": "consul.discover", "payload": payload})

    def consul2_health() -> Awaitable[Any]:
        return loop.run_in_executor(executor, lambda: health.service(SERVICE, passing=True))

    async def close() -> None:
        await handler.shutdown()
        executor.shutdown(wait=True)
        client.http.session.close()

    calls = {
        "discover.cached": discover_cached,
        "endpoint.cached": endpoint_cached,
        "discover.uncached": discover_uncached,
        "consul2.health": consul2_health,
    }
    return calls, close, handler


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def throughput(
    calls: dict[str, Callable[[], Awaitable[Any]]],
    rounds: int,
    cached_ops: int,
    uncached_ops: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    cells = [(name, n) for name in calls for n in INFLIGHT]
    per_round: dict[str, list[dict[str, Any]]] = {f"{name}.c{n}": [] for name, n in cells}
    for name, n in cells:  # warm-up: connections, threads, the cache entry
        await C.drive(calls[name], 200, n, ticker=False)
    for r in range(rounds):
        shift = r % len(cells)
        order = cells[shift:] + cells[:shift]
        for name, n in order if r % 2 == 0 else reversed(order):
            ops = cached_ops if name.endswith(".cached") else uncached_ops
            summary = (await C.drive(calls[name], ops, n)).summary()
            per_round[f"{name}.c{n}"].append(summary)
        log(
            f"bench: discovery round {r + 1}/{rounds}: "
            + ", ".join(
                f"{k} {v[-1]['ops_per_s']:,.0f}/s" for k, v in per_round.items() if k.endswith("c1")
            )
        )
    out: dict[str, Any] = {}
    for key, summaries in per_round.items():
        median = {
            k: _median([s[k] for s in summaries])
            for k in ("ops_per_s", "lat_p50_us", "lat_p99_us", "lag_p99_ms", "cpu_us_per_op")
        }
        out[key] = {
            "median": median,
            "errors": sum(s["errors"] for s in summaries),
            "first_error": next((s["first_error"] for s in summaries if s["first_error"]), None),
            "rounds": [s["ops_per_s"] for s in summaries],
        }
    return out


async def visibility(
    handler: HandlerConsul, agent: Any, changes: int, spaced_seconds: float
) -> dict[str, Any]:
    """Change-visibility latency: spaced out, then back to back."""
    results = {}
    for mode, pause in (("spaced", spaced_seconds), ("back_to_back", 0.0)):
        name = f"bench-fresh-{mode}"
        latencies = await _changes(handler, agent, name, changes, pause)
        latencies.sort()
        results[mode] = {
            "changes": len(latencies),
            "pause_between_s": pause,
            "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": C.percentile(latencies, 99) * 1e3,
            "max_ms": latencies[-1] * 1e3,
        }
    return results


def _at_agent(agent: Any, method: str, path: str, body: Any) -> float:
    resp = agent.request(method, path, body)
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: {resp.status} {resp.text}")
    return time.monotonic()


async def _changes(
    handler: HandlerConsul, agent: Any, name: str, count: int, pause: float
) -> list[float]:
    envelope = {"operation": "consul.discover", "payload": {"service": name}}

    async def seen(expected: set[str]) -> float:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            result = (await handler.execute(envelope)).result
            if {i["id"] for i in result["instances"]} == expected:
                return time.monotonic()
            await asyncio.sleep(0.0005)
        raise RuntimeError(f"the cache never showed {sorted(expected)}")

    expected: set[str] = set()
    await seen(expected)
    latencies = []
    for n in range(count):
        sid = f"{name}-{n // 3}"
        if n % 3 == 0:
            body = {"ID": sid, "Name": name, "Check": {"TTL": "1h", "Status": "passing"}}
            path, method = "/v1/agent/service/register", "PUT"
            expected.add(sid)
        elif n % 3 == 1:
            body = {"Status": "critical"}
            path, method = f"/v1/agent/check/update/service:{sid}", "PUT"
            expected.discard(sid)
        else:
            body, method = None, "PUT"
            path = f"/v1/agent/service/deregister/{sid}"
        if pause:
            await asyncio.sleep(pause)
        changed = await asyncio.to_thread(_at_agent, agent, method, path, body)
        latencies.append(await seen(expected) - changed)
    return latencies


async def run(args: Any, agent: Any, log: Callable[[str], None]) -> dict[str, Any]:
    register_instances(agent)
    load_before = loadavg()
    calls, close, handler = await contenders(agent.host, agent.http_port)
    try:
        started = time.perf_counter()
        cells = await throughput(calls, args.rounds, args.cached_ops, args.uncached_ops, log)
        fresh = await visibility(handler, agent, args.changes, args.spaced_seconds)
        elapsed = time.perf_counter() - started
    finally:
        await close()
    cached_ops = ("discover.cached", "endpoint.cached")
    best_cached = {
        op: max(cells[f"{op}.c{n}"]["median"]["ops_per_s"] for n in INFLIGHT) for op in cached_ops
    }
    # What one CPU-second buys: less sensitive than ops/s to neighbours on a shared machine.
    per_cpu_second = {
        op: max(1e6 / cells[f"{op}.c{n}"]["median"]["cpu_us_per_op"] for n in INFLIGHT)
        for op in cached_ops
    }
    return {
        "command": args.command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "rounds": args.rounds,
            "cached_ops": args.cached_ops,
            "uncached_ops": args.uncached_ops,
            "inflight": list(INFLIGHT),
            "pool": 10,
            "changes": args.changes,
        },
        "elapsed_s": elapsed,
        "load_before": load_before,
        "load_after": loadavg(),
        "cells": cells,
        "visibility": fresh,
        "target": {
            "cached_ops_per_s": TARGET_CACHED_OPS_PER_S,
            "best": best_cached,
            "per_cpu_second": per_cpu_second,
            "met": all(v >= TARGET_CACHED_OPS_PER_S for v in best_cached.values()),
        },
    }


def write_markdown(result: dict[str, Any], machine: dict[str, Any], path: Path) -> None:
    cells = result["cells"]
    lines = [
        "# Service discovery: cached and uncached, side by side",
        "",
        f"`{result['command']}` on {result['date']} ({machine.get('cpu', '?')}, "
        f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}, "
        f"{machine.get('consul', '?')}). Medians of {result['config']['rounds']} interleaved "
        "rounds; three instances of one service; pool 10 for every contender that has one. "
        f"Load average before / after: {result.get('load_before')} / {result.get('load_after')}.",
        "",
        "| contender | in flight | ops/s | latency p50 µs | p99 µs | loop lag p99 ms | CPU µs/op |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "discover.cached": "`consul.discover`, cached",
        "endpoint.cached": "`consul.endpoint`, cached",
        "discover.uncached": "`consul.discover`, `cache: false` (one request each)",
        "consul2.health": "python-consul2 `health.service`, ThreadPoolExecutor(10)",
    }
    for op, label in labels.items():
        for n in result["config"]["inflight"]:
            m = cells[f"{op}.c{n}"]["median"]
            lines.append(
                f"| {label} | {n} | {m['ops_per_s']:,.0f} | {m['lat_p50_us']:,.1f} | "
                f"{m['lat_p99_us']:,.1f} | {m['lag_p99_ms']:.2f} | {m['cpu_us_per_op']:.1f} |"
            )
    target = result["target"]
    verdict = "met" if target["met"] else "NOT met"
    lines += [
        "",
        f"Target: cached envelopes at least {target['cached_ops_per_s']:,}/s in one process: "
        f"**{verdict}** (best: "
        + ", ".join(f"{k} {v:,.0f}/s" for k, v in target["best"].items())
        + "). Per CPU-second of the process (1 / its CPU time per envelope; less sensitive "
        "than wall-clock throughput to other work on a shared machine, not immune to it): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in target["per_cpu_second"].items())
        + ".",
        "",
        "## Change visibility",
        "",
        "From the agent's answer to a change (instance added, gone critical, deregistered) "
        "until a cached `consul.discover` shows it.",
        "",
        "| changes | pause between | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, v in result["visibility"].items():
        lines.append(
            f"| {v['changes']} {mode.replace('_', ' ')} | {v['pause_between_s'] * 1e3:.0f} ms | "
            f"{v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['max_ms']:.1f} |"
        )
    lines += [
        "",
        "Back to back, a change made while the watch pauses after a round that returned at once "
        "(`long_poll.min_interval_seconds`, 20 ms: Consul's advice against hot loops) waits for "
        "the pause to end.",
        "",
    ]
    path.write_text("\n".join(lines))


def dump(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


def summary(result: dict[str, Any]) -> str:
    """The lines ``scripts/bench --discovery`` prints: the target and the visibility."""
    target = result["target"]
    verdict = "PASS" if target["met"] else "SHORT"
    best = ", ".join(f"{k} {v:,.0f}/s" for k, v in target["best"].items())
    per_cpu = ", ".join(f"{k} {v:,.0f}" for k, v in target["per_cpu_second"].items())
    lines = [
        f"  [{verdict:>7}] cached envelopes >= {target['cached_ops_per_s']:,}/s: {best}",
        f"  [   INFO] cached envelopes per CPU-second: {per_cpu}",
    ]
    for mode, v in result["visibility"].items():
        lines.append(
            f"  [   INFO] change visibility, {mode.replace('_', ' ')}: "
            f"p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
        )
    return "\n".join(lines)
