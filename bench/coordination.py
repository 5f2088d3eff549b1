"""``scripts/bench coordination``: KV coordination side by side, in one run, on one dev agent.

Three pairs, each contender once per round in a rotated order (figures are medians across
rounds, ratios taken within a round first):

- **cached kv_get against kv_get through the pool**: ``HandlerConsul.execute`` of the same
  key, ``"consistency": "cached"`` (served from memory, kept fresh by a blocking query)
  against the default (one request in the pool of 10), 16 callers in flight for a fixed
  time. The target for the cached read is 50,000/s in one process.
- **lock rounds**: acquire and release one uncontended key, one round after the other:
  ``async with handler.lock(key)`` against python-consul2 with the session code people write
  by hand (``session.create``, ``kv.put(acquire=)``, ``kv.put(release=)``,
  ``session.destroy``) through ``loop.run_in_executor`` on a ``ThreadPoolExecutor(10)``, the
  same pool size as the handler's.
- **transactions against single puts**: 64 keys written by one ``consul.txn`` of 64 ``set``
  operations, against the same 64 keys as 64 ``consul.kv_put`` envelopes with all 64 in
  flight (the pool of 10 runs them); keys written per second.

Writes bench/results/COORDINATION.md and coordination.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import agent as agent_mod

RESULTS_DIR = Path(__file__).resolve().parent / "results"
KEY = "bench/coordination/get"
VALUE = "handler-consul-bench-value-0123456789abcdef"

Cell = Callable[[float], Awaitable[tuple[int, float]]]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench coordination", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds (each runs every contender)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per contender per round")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where to write the results")
    p.add_argument("--consul-bin", help="the consul binary (default: scripts/consul-bin's)")
    return p.parse_args(argv)


async def _for(
    seconds: float, workers: int, once: Callable[[], Awaitable[int]]
) -> tuple[int, float]:
    """Run ``once`` in ``workers`` loops for ``seconds``; (units done, seconds taken)."""
    done = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            # Not ``done += await once()``: that reads ``done`` before the await, and the
            # other loops' increments made meanwhile would be lost.
            finished = await once()
            done += finished

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(workers)))
    return done, time.perf_counter() - started


def cells(handler: Any, consul2: Any, executor: ThreadPoolExecutor) -> dict[str, Cell]:
    loop = asyncio.get_running_loop()
    cached = {"operation": "consul.kv_get", "payload": {"key": KEY, "consistency": "cached"}}
    pooled = {"operation": "consul.kv_get", "payload": {"key": KEY}}
    n = {"lock": 0, "txn": 0}

    async def get(envelope: dict[str, Any]) -> int:
        response = await handler.execute(envelope)
        assert response.result["value"] == VALUE
        return 1

    async def handler_lock() -> int:
        async with handler.lock("bench/coordination/lock-h", ttl="15s", lock_delay="0s"):
            pass
        return 1

    def consul2_round() -> None:
        session = consul2.session.create(ttl=15, lock_delay=0, behavior="release")
        assert consul2.kv.put("bench/coordination/lock-c", "", acquire=session) is True
        assert consul2.kv.put("bench/coordination/lock-c", "", release=session) is True
        consul2.session.destroy(session)

    async def consul2_lock() -> int:
        await loop.run_in_executor(executor, consul2_round)
        return 1

    def keys() -> list[str]:
        n["txn"] += 1
        return [f"bench/coordination/txn/{n['txn']}/{i:02d}" for i in range(64)]

    async def txn() -> int:
        ops = [{"verb": "set", "key": k, "value": VALUE} for k in keys()]
        response = await handler.execute(
            {"operation": "consul.txn", "payload": {"operations": ops}}
        )
        assert response.result["applied"] is True
        return 64

    async def puts() -> int:
        envelopes = [
            {"operation": "consul.kv_put", "payload": {"key": k, "value": VALUE}} for k in keys()
        ]
        done = await asyncio.gather(*(handler.execute(e) for e in envelopes))
        assert all(r.result["applied"] for r in done)
        return 64

    return {
        "kv_get cached": lambda s: _for(s, 16, lambda: get(cached)),
        "kv_get through the pool": lambda s: _for(s, 16, lambda: get(pooled)),
        "lock round: handler.lock": lambda s: _for(s, 1, handler_lock),
        "lock round: python-consul2 by hand": lambda s: _for(s, 1, consul2_lock),
        "64 keys: one consul.txn": lambda s: _for(s, 1, txn),
        "64 keys: 64 consul.kv_put": lambda s: _for(s, 1, puts),
    }


PAIRS = [
    ("kv_get cached", "kv_get through the pool", "reads/s"),
    ("lock round: handler.lock", "lock round: python-consul2 by hand", "rounds/s"),
    ("64 keys: one consul.txn", "64 keys: 64 consul.kv_put", "keys/s"),
]


async def run(agent: Any, args: argparse.Namespace, consul_version: str) -> dict[str, Any]:
    import consul

    from handler_consul import ConsulSettings, HandlerConsul

    agent.request("PUT", f"/v1/kv/{KEY}", VALUE.encode())
    settings = ConsulSettings(host=agent.host, port=agent.port)
    consul2 = consul.Consul(host=agent.host, port=agent.port)
    executor = ThreadPoolExecutor(10)
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    try:
        async with HandlerConsul(settings=settings) as handler:
            table = cells(handler, consul2, executor)
            await handler.execute(
                {"operation": "consul.kv_get", "payload": {"key": KEY, "consistency": "cached"}}
            )
            names = list(table)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                this_round: dict[str, float] = {}
                for name in order:
                    done, seconds = await table[name](args.seconds)
                    this_round[name] = done / seconds
                    rates.setdefault(name, []).append(done / seconds)
                    print(f"round {r + 1}: {name}: {done / seconds:,.0f}/s", flush=True)
                for ours, theirs, _ in PAIRS:
                    ratios.setdefault(ours, []).append(this_round[ours] / this_round[theirs])
    finally:
        executor.shutdown(wait=True)
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len_cpus()} CPUs, Python {platform.python_version()}",
        "consul": consul_version,
        "rounds": args.rounds,
        "seconds_per_cell": args.seconds,
        "median_per_second": {name: statistics.median(v) for name, v in rates.items()},
        "all_rounds": rates,
        "median_ratio": {name: statistics.median(v) for name, v in ratios.items()},
    }


def len_cpus() -> int:
    return os.cpu_count() or 0


def render(results: dict[str, Any]) -> str:
    med, ratio = results["median_per_second"], results["median_ratio"]
    lines = [
        "# KV coordination: side by side",
        "",
        f"One run of `scripts/bench coordination` ({results['when']}; {results['machine']}; "
        f"{results['consul']}; "
        f"{results['rounds']} rounds of {results['seconds_per_cell']:g} s per contender, medians; "
        "ratios paired within each round). See bench/coordination.py for what each cell does.",
        "",
        "| contender | median | against | median | ratio (paired) |",
        "|---|---:|---|---:|---:|",
    ]
    for ours, theirs, unit in PAIRS:
        lines.append(
            f"| {ours} | {med[ours]:,.0f} {unit} | {theirs} | {med[theirs]:,.0f} {unit} "
            f"| {ratio[ours]:.2f}x |"
        )
    target = "met" if med["kv_get cached"] >= 50_000 else "NOT met"
    lines += ["", f"Cached kv_get target (50,000/s in one process): {target}.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    binary = agent_mod.consul_binary(args.consul_bin)
    with agent_mod.dev_agent(binary) as agent:
        results = asyncio.run(run(agent, args, agent_mod.consul_version(binary)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coordination.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "COORDINATION.md").write_text(render(results))
    print(render(results))
    return 0
