"""``scripts/bench``: run the benchmark stages and write bench/results/.

Stages:
- comparison (default): wrk ceiling, python-consul2 (requests, and its consul.aio), raw
  aiohttp, the bare transport, HandlerConsul in both I/O modes (threads: pool 10 and 64;
  asyncio: bound 10 and 64) with 1/16/64/256 envelopes in flight, open-breaker rejections;
  R rounds, every contender once per round in a rotated order; medians across rounds.
- ``--rss``: RSS across 1M real kv_get envelopes (RSS at 100k and at 1M), in the I/O mode
  ``--rss-io`` names (asyncio by default; each mode keeps its own section of the results).
- ``--all``: both. ``--quick``: both, at small sizes (RSS at 2k and 20k).
- ``--discovery``: service discovery (bench/discovery.py): cached ``consul.discover`` and
  ``consul.endpoint`` against uncached discover and python-consul2's ``health.service``, and
  the change-visibility latency; writes discovery.json and DISCOVERY.md, nothing else
  (with ``--quick``: small sizes).

Each stage updates its own section of results.json (the other is kept from the last run
that produced it) and re-renders RESULTS.md and throughput.png (the plot needs the
optional `bench` extra, matplotlib; without it the plot alone is skipped, with a note).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import logging
import math
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import agent as agent_mod
from bench import contenders as C
from bench import discovery, report, wrkrun

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPS = ("kv_get", "kv_put")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stage = p.add_mutually_exclusive_group()
    stage.add_argument("--rss", action="store_true", help="run only the RSS stage (1M envelopes)")
    stage.add_argument(
        "--render",
        action="store_true",
        help="only re-render RESULTS.md and throughput.png from the existing results.json",
    )
    stage.add_argument("--all", action="store_true", help="comparison, then the RSS stage")
    stage.add_argument(
        "--discovery",
        action="store_true",
        help="only the service-discovery stage (cached vs uncached vs python-consul2)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: 2 rounds, 600 ops per cell, RSS at 2k/20k (both stages)",
    )
    p.add_argument("--rounds", type=int, help="rounds (default 7; quick 2)")
    p.add_argument("--ops", type=int, help="calls per contender per round (default 2000)")
    p.add_argument("--wrk-seconds", type=float, help="wrk duration per round (default 3)")
    p.add_argument("--rejections", type=int, help="open-breaker samples in all (default 50000)")
    p.add_argument("--rss-total", type=int, help="RSS stage envelopes (default 1,000,000)")
    p.add_argument("--rss-checkpoint", type=int, help="first RSS reading (default 100,000)")
    p.add_argument("--rss-inflight", type=int, default=64, help="RSS stage in flight (64)")
    p.add_argument("--rss-pool", type=int, default=10, help="RSS stage pool size (10)")
    p.add_argument(
        "--rss-io",
        choices=("threads", "asyncio"),
        default="asyncio",
        help="RSS stage I/O mode (asyncio)",
    )
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop every contender runs on (asyncio's default loop)",
    )
    p.add_argument("--cached-ops", type=int, help="discovery: calls per cached cell (20000)")
    p.add_argument("--uncached-ops", type=int, help="discovery: calls per uncached cell (2000)")
    p.add_argument("--changes", type=int, help="discovery: changes timed per mode (60)")
    p.add_argument(
        "--spaced-seconds",
        type=float,
        default=0.1,
        help="discovery: pause before each spaced-out change (0.1)",
    )
    p.add_argument("--inflight", default="1,16,64,256", help="handler in-flight levels")
    p.add_argument(
        "--baseline-inflight",
        default="1,16,64,256",
        help="in-flight levels for python-consul2 and the bare transport",
    )
    p.add_argument("--pools", default="10,64", help="handler pool sizes (threads mode)")
    p.add_argument(
        "--aio-pools",
        default="10,64",
        help="handler bounds in asyncio mode, and the raw aiohttp contenders' limits",
    )
    p.add_argument("--no-wrk", action="store_true", help="skip the wrk ceiling")
    p.add_argument("--consul-bin", help="consul binary (default: scripts/consul-bin)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile the event-loop thread: handler vs bare kv_get/put",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 7)
    args.ops = args.ops or (600 if quick else 2000)
    args.wrk_seconds = args.wrk_seconds or (1.0 if quick else 3.0)
    args.rejections = args.rejections or (4000 if quick else 50_000)
    args.rss_total = args.rss_total or (20_000 if quick else 1_000_000)
    args.rss_checkpoint = args.rss_checkpoint or (2_000 if quick else 100_000)
    args.inflight = [int(x) for x in args.inflight.split(",")]
    args.baseline_inflight = [int(x) for x in args.baseline_inflight.split(",")]
    args.pools = [int(x) for x in args.pools.split(",")]
    args.aio_pools = [int(x) for x in args.aio_pools.split(",") if x]
    args.cached_ops = args.cached_ops or (2000 if quick else 20_000)
    args.uncached_ops = args.uncached_ops or (300 if quick else 2000)
    args.changes = args.changes or (15 if quick else 60)
    args.run_comparison = not (args.rss or args.render or args.discovery)
    args.run_rss = args.rss or args.all or (quick and not args.discovery)
    return args


def machine_info(consul_bin: str) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import consul
    import pydantic

    from handler_consul import __version__

    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gb": mem,
        "python": platform.python_version(),
        "handler_consul": __version__,
        "python_consul2": getattr(consul, "__version__", "?"),
        "pydantic": pydantic.VERSION,
        "consul": agent_mod.consul_version(consul_bin),
        "wrk": agent_mod.wrk_version(),
    }


loadavg = agent_mod.loadavg


def _scaled(ops: int, contender: C.Contender) -> int:
    return max(1, round(ops * contender.ops_scale))


def _median(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


# -- comparison ------------------------------------------------------------------------


async def comparison(args: argparse.Namespace, agent: Any, log: Any) -> dict[str, Any]:
    host, port = agent.host, agent.http_port
    resp = agent.request("PUT", f"/v1/kv/{C.GET_KEY}", C.VALUE)
    if resp.status != 200:
        raise RuntimeError(f"could not seed {C.GET_KEY}: {resp.status}")

    consul2 = await C.make_consul2(host, port, 10)
    bare = await C.make_bare(host, port, 10)
    baselines = [consul2, bare, *[await C.make_async_bare(host, port, p) for p in args.aio_pools]]
    aiohttp_note = C.aiohttp_missing()
    if aiohttp_note is None:
        baselines.append(await C.make_consul2_aio(host, port))
        baselines += [await C.make_aiohttp(host, port, pool) for pool in args.aio_pools]
        # The same work as the handler's answer (JSON, base64), at the default bound only.
        baselines.append(await C.make_aiohttp(host, port, min(args.aio_pools), decoded=True))
    else:
        log(f"bench: {aiohttp_note}; raw aiohttp and consul.aio not measured")
    handlers = {}
    for pool in args.pools:
        handlers[pool] = await C.make_handler(host, port, pool)
    aio_handlers = {}
    for pool in args.aio_pools:
        aio_handlers[pool] = await C.make_handler(host, port, pool, io="asyncio")
    runs = [*handlers.values(), *aio_handlers.values()]
    contenders = [*baselines, *(h[0] for h in runs)]

    cells: list[dict[str, Any]] = []
    use_wrk = not args.no_wrk and wrkrun.available()
    wrk_note = None
    if args.no_wrk:
        wrk_note = "skipped (--no-wrk)"
    elif not use_wrk:
        wrk_note = "wrk is not installed: `apt-get install wrk` (Debian package wrk) to measure it"
        log(f"bench: {wrk_note}; running the other contenders")
    if use_wrk:
        for op in OPS:
            cells.append(
                {
                    "id": f"wrk.{op}.c{wrkrun.CONNECTIONS}",
                    "kind": "wrk",
                    "op": op,
                    "contender": "wrk",
                    "label": f"wrk ({wrkrun.CONNECTIONS} connections)",
                    "pool": None,
                    "inflight": wrkrun.CONNECTIONS,
                }
            )
    for base in baselines:
        for op in OPS:
            for n in args.baseline_inflight:
                cells.append(
                    {
                        "id": f"{base.name}.{op}.c{n}",
                        "kind": "python",
                        "op": op,
                        "contender": base.name,
                        "label": base.label,
                        "pool": base.pool,
                        "inflight": n,
                        "obj": base,
                    }
                )
    for contender, _ in runs:
        pool = contender.pool
        for op in OPS:
            for n in args.inflight:
                cells.append(
                    {
                        "id": f"{contender.name}.{op}.c{n}",
                        "kind": "python",
                        "op": op,
                        "contender": contender.name,
                        "label": contender.label,
                        "pool": pool,
                        "inflight": n,
                        "obj": contender,
                    }
                )
    default_pool = 10 if 10 in handlers else args.pools[0]
    reject_handler = handlers[default_pool][1]
    cells.append(
        {
            "id": "rejection",
            "kind": "rejection",
            "op": "kv_get",
            "contender": f"handler{default_pool}",
            "label": "open-breaker rejection",
            "pool": default_pool,
            "inflight": 1,
        }
    )
    cells.append(
        {
            "id": "idle",
            "kind": "idle",
            "op": "-",
            "contender": "idle",
            "label": "no contender: the 5 ms ticker alone (the machine's noise floor)",
            "pool": None,
            "inflight": 0,
        }
    )
    per_round_rejections = max(1, args.rejections // args.rounds)
    idle_seconds = 0.5 if args.quick or args.ops < 1000 else 2.0

    # Warm-up: connections, threads, pydantic's first-call paths; not recorded.
    warm = min(args.ops, 300)
    for cell in cells:
        if cell["kind"] == "python":
            fn = cell["obj"].get if cell["op"] == "kv_get" else cell["obj"].put
            await C.drive(fn, _scaled(warm, cell["obj"]), cell["inflight"], ticker=False)
    warm_rej, _ = await C.rejection_latencies(reject_handler, min(per_round_rejections, 2000))
    control_loops = await C.calibrate_control(C.percentile(warm_rej, 50))
    control_all: list[float] = []

    rounds: dict[str, list[dict[str, Any]]] = {c["id"]: [] for c in cells}
    rejection_all: list[float] = []
    load_before = loadavg()
    started = time.perf_counter()
    # Cells that are compared (same op, same in-flight count) run back to back, so a paired
    # ratio compares measurements seconds apart; the groups rotate from round to round and
    # the order inside a group alternates, so no contender always runs first.
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    rank = {"wrk": 0, "python": 1, "rejection": 2, "idle": 3}
    for cell in cells:
        groups.setdefault((cell["op"], cell["kind"], cell["inflight"]), []).append(cell)
    group_list = [groups[k] for k in sorted(groups, key=lambda k: (k[0], rank.get(k[1], 9), k[2]))]
    step = max(1, len(group_list) // args.rounds)
    for r in range(args.rounds):
        shift = (r * step) % len(group_list)
        rotated = group_list[shift:] + group_list[:shift]
        order = [c for g in rotated for c in (g if r % 2 == 0 else reversed(g))]
        t_round = time.perf_counter()
        for cell in order:
            if cell["kind"] == "wrk":
                method = "GET" if cell["op"] == "kv_get" else "PUT"
                path = C.GET_KEY if method == "GET" else "bench/put/wrk"
                summary = wrkrun.run(
                    f"http://{host}:{port}/v1/kv/{path}",
                    method=method,
                    seconds=args.wrk_seconds,
                    value=C.VALUE,
                )
            elif cell["kind"] == "idle":
                ticker = C.LagTicker()
                ticker.start()
                await asyncio.sleep(idle_seconds)
                lags = await ticker.stop()
                summary = {
                    "lag_p50_ms": C.percentile(lags, 50) * 1e3,
                    "lag_p99_ms": C.percentile(lags, 99) * 1e3,
                    "lag_samples": len(lags),
                }
            elif cell["kind"] == "rejection":
                lat, ctl = await C.rejection_latencies(
                    reject_handler, per_round_rejections, control_loops
                )
                rejection_all.extend(lat)
                control_all.extend(ctl)
                summary = {
                    "samples": len(lat),
                    "p50_us": C.percentile(lat, 50),
                    "p99_us": C.percentile(lat, 99),
                    "mean_us": statistics.fmean(lat),
                    "control_p50_us": C.percentile(ctl, 50),
                    "control_p99_us": C.percentile(ctl, 99),
                }
            else:
                fn = cell["obj"].get if cell["op"] == "kv_get" else cell["obj"].put
                ops = _scaled(args.ops, cell["obj"])
                summary = (await C.drive(fn, ops, cell["inflight"])).summary()
            summary["round"] = r
            rounds[cell["id"]].append(summary)
        log(
            f"bench: round {r + 1}/{args.rounds} done in {time.perf_counter() - t_round:.1f}s "
            f"(load {loadavg()})"
        )
        for key in (
            "handler10.kv_get.c64",
            "aio10.kv_get.c64",
            "aio64.kv_get.c64",
            "aiohttp10.kv_get.c64",
            "consul2.kv_get.c64",
            "bare.kv_get.c64",
        ):
            if rounds.get(key):
                log(f"  {key}: {rounds[key][-1]['ops_per_s']:.0f} ops/s")
    elapsed = time.perf_counter() - started

    profile = None
    if args.profile:
        profile = await profile_loop(handlers[default_pool][0], bare, args, log)

    for contender in contenders:
        await contender.close()

    out_cells: dict[str, Any] = {}
    for cell in cells:
        rs = rounds[cell["id"]]
        keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and k != "round"]
        median = {k: _median([x[k] for x in rs]) for k in keys}
        entry = {k: cell[k] for k in ("kind", "op", "contender", "label", "pool", "inflight")}
        entry["median"] = median
        if "ops_per_s" in median:
            ops = [x["ops_per_s"] for x in rs]
            entry["spread"] = {
                "min": min(ops),
                "max": max(ops),
                "rel": (max(ops) - min(ops)) / median["ops_per_s"]
                if median["ops_per_s"]
                else math.nan,
            }
        entry["errors"] = sum(x.get("errors", 0) for x in rs)
        first = next((x.get("first_error") for x in rs if x.get("first_error")), None)
        if first:
            entry["first_error"] = first
        entry["rounds"] = rs
        out_cells[cell["id"]] = entry

    rejection = {
        "pool": default_pool,
        "samples": len(rejection_all),
        "median_of_rounds": out_cells["rejection"]["median"],
        "pooled": {
            "p50_us": C.percentile(rejection_all, 50),
            "p99_us": C.percentile(rejection_all, 99),
            "p999_us": C.percentile(rejection_all, 99.9),
        },
        "control": {
            "loops": control_loops,
            "what": "constant pure-Python work calibrated to the rejection's median, "
            "timed alternately with it",
            "p50_us": C.percentile(control_all, 50),
            "p99_us": C.percentile(control_all, 99),
        },
    }

    # Paired per-round figures: each ratio is taken within one round, then the median.
    def paired(a: str, b: str, fn: Any) -> float | None:
        if a not in rounds or b not in rounds:
            return None
        vals = [fn(x, y) for x, y in zip(rounds[a], rounds[b], strict=True)]
        return _median(vals)

    h = f"handler{default_pool}"
    default_aio = 10 if 10 in args.aio_pools else (args.aio_pools or [0])[0]
    derived: dict[str, Any] = {}
    for op in OPS:
        for n in sorted(set(args.inflight) & set(args.baseline_inflight)):
            hid, cid, bid = f"{h}.{op}.c{n}", f"consul2.{op}.c{n}", f"bare.{op}.c{n}"
            derived[f"{op}.c{n}.vs_consul2"] = paired(
                hid, cid, lambda x, y: x["ops_per_s"] / y["ops_per_s"]
            )
            derived[f"{op}.c{n}.vs_bare"] = paired(
                hid, bid, lambda x, y: x["ops_per_s"] / y["ops_per_s"]
            )
            derived[f"{op}.c{n}.bare_vs_consul2"] = paired(
                bid, cid, lambda x, y: x["ops_per_s"] / y["ops_per_s"]
            )
            derived[f"{op}.c{n}.overhead_throughput_us"] = paired(
                hid, bid, lambda x, y: 1e6 / x["ops_per_s"] - 1e6 / y["ops_per_s"]
            )
            derived[f"{op}.c{n}.overhead_latency_p50_us"] = paired(
                hid, bid, lambda x, y: x["lat_p50_us"] - y["lat_p50_us"]
            )
            derived[f"{op}.c{n}.overhead_cpu_us"] = paired(
                hid, bid, lambda x, y: x["cpu_us_per_op"] - y["cpu_us_per_op"]
            )
            derived[f"{op}.c{n}.overhead_loop_cpu_us"] = paired(
                hid, bid, lambda x, y: x["loop_cpu_us_per_op"] - y["loop_cpu_us_per_op"]
            )
        # Either mode against the others, same bound, paired: "a/b" is a's ops/s over b's.
        pairs = [(f"aio{p}", f"handler{p}") for p in args.aio_pools if p in handlers]
        pairs += [(f"aio{p}", f"aiohttp{p}") for p in args.aio_pools]
        pairs += [(f"abare{p}", f"aiohttp{p}") for p in args.aio_pools]
        if args.aio_pools:
            least = min(args.aio_pools)
            pairs += [(f"aio{least}", f"aiohttpd{least}"), (f"aiohttpd{least}", f"aiohttp{least}")]
        pairs += [(f"aio{p}", f"abare{p}") for p in args.aio_pools]
        pairs += [(f"aio{default_aio}", "consul2aio"), (f"aio{default_aio}", "consul2")]
        pairs += [(f"aio{max(args.aio_pools)}", f"handler{default_pool}")] if args.aio_pools else []
        for n in args.inflight:
            for a, b in pairs:
                derived[f"{op}.c{n}.{a}/{b}"] = paired(
                    f"{a}.{op}.c{n}", f"{b}.{op}.c{n}", lambda x, y: x["ops_per_s"] / y["ops_per_s"]
                )
        if use_wrk:
            wid = f"wrk.{op}.c{wrkrun.CONNECTIONS}"
            for mode, prefix in (
                ("", ("handler", "aio")),
                (".threads", ("handler",)),
                (".asyncio", ("aio",)),
            ):
                # Only cells without errors: a failed call is fast and would inflate ops/s.
                found = [
                    k
                    for k in out_cells
                    if k.split(".")[0].rstrip("0123456789") in prefix
                    and f".{op}." in k
                    and not out_cells[k]["errors"]
                ]
                if not found:
                    continue
                best = max(found, key=lambda k: out_cells[k]["median"]["ops_per_s"])
                derived[f"{op}.ceiling_fraction{mode}"] = (
                    out_cells[best]["median"]["ops_per_s"] / out_cells[wid]["median"]["ops_per_s"]
                )
                derived[f"{op}.ceiling_best_cell{mode}"] = best

    spreads = [c["spread"]["rel"] for c in out_cells.values() if "spread" in c]
    return {
        "command": args.command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "rounds": args.rounds,
            "ops_per_cell": args.ops,
            "wrk_seconds": args.wrk_seconds,
            "wrk": use_wrk,
            "wrk_note": wrk_note,
            "rejection_samples": per_round_rejections * args.rounds,
            "inflight": args.inflight,
            "baseline_inflight": args.baseline_inflight,
            "pools": args.pools,
            "aio_pools": args.aio_pools,
            "default_pool": default_pool,
            "default_aio_pool": default_aio,
            "loop": args.loop,
            "aiohttp_note": aiohttp_note,
            "tick_ms": C.TICK_SECONDS * 1e3,
        },
        "elapsed_s": elapsed,
        "load_before": load_before,
        "load_after": loadavg(),
        "noise": {
            "median_rel_spread": _median(spreads),
            "max_rel_spread": max(spreads) if spreads else math.nan,
        },
        "cells": out_cells,
        "rejection": rejection,
        "idle_lag": out_cells["idle"]["median"],
        "derived": derived,
        "profile": profile,
    }


async def profile_loop(
    handler: C.Contender, bare: C.Contender, args: argparse.Namespace, log: Any
) -> dict[str, str]:
    """cProfile of the event-loop thread (where the handler's own work runs)."""
    out: dict[str, str] = {}
    n = max(args.ops, 5000)
    for name, fn in (
        ("handler10.kv_get.c64", handler.get),
        ("bare.kv_get.c64", bare.get),
        ("handler10.kv_put.c64", handler.put),
    ):
        prof = cProfile.Profile()
        prof.enable()
        await C.drive(fn, n, 64, ticker=False)
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        out[name] = buf.getvalue()
        (args.out / f"profile-{name}.txt").write_text(f"{n} calls\n" + buf.getvalue())
        log(f"bench: wrote {args.out / f'profile-{name}.txt'}")
    return {k: f"profile-{k}.txt" for k in out}


# -- RSS -------------------------------------------------------------------------------


async def rss_stage(args: argparse.Namespace, agent: Any, log: Any) -> dict[str, Any]:
    resp = agent.request("PUT", f"/v1/kv/{C.GET_KEY}", C.VALUE)
    if resp.status != 200:
        raise RuntimeError(f"could not seed {C.GET_KEY}: {resp.status}")
    contender, _ = await C.make_handler(agent.host, agent.http_port, args.rss_pool, args.rss_io)
    log(
        f"bench: RSS stage, {args.rss_total:,} kv_get envelopes, io={args.rss_io}, "
        f"pool {args.rss_pool}, {args.rss_inflight} in flight"
    )
    try:
        result = await C.rss_run(
            contender.get, args.rss_total, args.rss_checkpoint, args.rss_inflight, log=log
        )
    finally:
        await contender.close()
    result.update(
        {
            "command": args.command,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "pool": args.rss_pool,
            "io": args.rss_io,
            "loop": args.loop,
            "operation": "consul.kv_get",
        }
    )
    log(
        f"bench: RSS {result['rss_at_checkpoint_mb']:.1f} MB at {args.rss_checkpoint:,}, "
        f"{result['rss_at_end_mb']:.1f} MB at {args.rss_total:,} "
        f"({result['ops_per_s']:.0f} envelopes/s)"
    )
    return result


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.command = "scripts/bench" + (
        ""
        if argv is None and len(sys.argv) <= 1
        else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # The breaker's transition (forced open for the rejection figure) logs a WARNING; keep
    # it off stderr. Per-envelope logging (handler_consul.envelope) is left as shipped.
    logging.getLogger("handler_consul.handler").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        results = json.loads((args.out / "results.json").read_text())
        results["targets"] = report.targets(results)
        results["headline"] = report.headline(results)
        report.write_markdown(results, args.out / "RESULTS.md")
        skipped = report.write_plot(results, args.out / "throughput.png")
        if skipped:
            log(skipped)
        print(report.targets_text(results["targets"]))
        return 0
    consul_bin = agent_mod.consul_binary(args.consul_bin)
    results_path = args.out / "results.json"
    previous: dict[str, Any] = {}
    if results_path.exists():
        try:
            previous = json.loads(results_path.read_text())
        except ValueError:
            previous = {}
    results: dict[str, Any] = {
        "schema": 1,
        "machine": machine_info(consul_bin),
        "comparison": previous.get("comparison"),
        "rss": previous.get("rss"),
        "rss_asyncio": previous.get("rss_asyncio"),
    }
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    log(
        f"bench: consul {results['machine']['consul']}, wrk: "
        f"{results['machine']['wrk'] or 'not installed'}, load {loadavg()}"
    )
    if args.discovery:
        # Its own files: the comparison's results (and the machine they were measured on)
        # stay as they are.
        with agent_mod.dev_agent(consul_bin) as agent:
            log(f"bench: dev agent on {agent.http_addr}")
            measured = asyncio.run(discovery.run(args, agent, log))
        measured["machine"] = results["machine"]
        discovery.dump(measured, args.out / "discovery.json")
        discovery.write_markdown(measured, results["machine"], args.out / "DISCOVERY.md")
        log(f"bench: wrote {args.out / 'discovery.json'}, {args.out / 'DISCOVERY.md'}")
        print(discovery.summary(measured))
        return 0
    with agent_mod.dev_agent(consul_bin) as agent:
        log(f"bench: dev agent on {agent.http_addr}")
        if args.run_comparison:
            results["comparison"] = run(comparison(args, agent, log))
        if args.run_rss:
            # Each I/O mode keeps its own RSS section: "rss" (threads), "rss_asyncio".
            section = "rss" if args.rss_io == "threads" else "rss_asyncio"
            results[section] = run(rss_stage(args, agent, log))
    results["targets"] = report.targets(results)
    results["headline"] = report.headline(results)
    results_path.write_text(json.dumps(report.json_ready(results), indent=2) + "\n")
    report.write_markdown(results, args.out / "RESULTS.md")
    skipped = report.write_plot(results, args.out / "throughput.png")
    written = [results_path, args.out / "RESULTS.md"]
    if skipped:
        log(skipped)
    else:
        written.append(args.out / "throughput.png")
    log(f"bench: wrote {', '.join(map(str, written))}")
    print(report.targets_text(results["targets"]))
    return 0
