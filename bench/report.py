"""Targets, headline, RESULTS.md, results.json and the throughput plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PASS, SHORT, INFO, NOT_RUN = "PASS", "SHORT", "INFO", "NOT RUN"


def json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _target(tid: str, text: str, measured: Any, unit: str, ok: Any, threshold: str) -> dict:
    m = _num(measured)
    if m is None:
        status = NOT_RUN
    elif ok is None:
        status = INFO
    else:
        status = PASS if ok(m) else SHORT
    return {
        "id": tid,
        "target": text,
        "threshold": threshold,
        "measured": m,
        "unit": unit,
        "status": status,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    comp = results.get("comparison") or {}
    derived = comp.get("derived") or {}
    cells = comp.get("cells") or {}
    pool = (comp.get("config") or {}).get("default_pool", 10)
    out = []
    for op in ("kv_get", "kv_put"):
        out.append(
            _target(
                f"{op}.vs_consul2",
                f"{op} throughput vs python-consul2 (default transport), pool {pool}, 64 in flight",
                derived.get(f"{op}.c64.vs_consul2"),
                "x",
                lambda m: m >= 2.5,
                ">= 2.5x",
            )
        )
    for op in ("kv_get", "kv_put"):
        out.append(
            _target(
                f"{op}.vs_bare",
                f"{op} throughput vs the bare transport, pool {pool}, 64 in flight",
                derived.get(f"{op}.c64.vs_bare"),
                "x",
                lambda m: m >= 0.9,
                ">= 0.9x",
            )
        )
    for op in ("kv_get", "kv_put"):
        cell = cells.get(f"handler{pool}.{op}.c256") or {}
        out.append(
            _target(
                f"{op}.loop_lag_p99",
                f"{op} event-loop lag p99, 256 in flight, pool {pool}",
                (cell.get("median") or {}).get("lag_p99_ms"),
                "ms",
                lambda m: m <= 5.0,
                "<= 5 ms",
            )
        )
    rej = (comp.get("rejection") or {}).get("median_of_rounds") or {}
    out.append(
        _target(
            "rejection_p99",
            "open-breaker rejection p99"
            + (
                f" (timing control of the same median on this machine: p99 "
                f"{_us(rej.get('control_p99_us'))} µs)"
                if _num(rej.get("control_p99_us")) is not None
                else ""
            ),
            rej.get("p99_us"),
            "µs",
            lambda m: m <= 20.0,
            "<= 20 µs",
        )
    )
    out += _asyncio_targets(comp, pool)
    for section, mode in (("rss", "threads"), ("rss_asyncio", "asyncio")):
        rss = results.get(section) or {}
        cp, total = rss.get("checkpoint"), rss.get("envelopes")
        span = f"envelope {cp:,} and {total:,}" if cp and total else "envelope 100k and 1M"
        out.append(
            _target(
                "rss_growth" if mode == "threads" else "rss_growth.asyncio",
                f"RSS growth between {span}, {mode} mode",
                rss.get("growth_mb"),
                "MB",
                lambda m: m < 5.0,
                "< 5 MB",
            )
        )
    for op in ("kv_get", "kv_put"):
        for mode in ("", ".threads", ".asyncio"):
            best = derived.get(f"{op}.ceiling_best_cell{mode}")
            which = {"": "the handler", ".threads": "threads mode", ".asyncio": "asyncio mode"}
            out.append(
                _target(
                    f"{op}.ceiling_fraction{mode}",
                    f"{op}: fraction of the agent's wrk ceiling {which[mode]} reaches"
                    + (f" (best: {best})" if best else ""),
                    derived.get(f"{op}.ceiling_fraction{mode}"),
                    "",
                    None,
                    "reported",
                )
            )
    return out


def _asyncio_targets(comp: dict[str, Any], pool: int) -> list[dict[str, Any]]:
    """The asyncio mode against the threads mode and raw aiohttp, same bound, 64 in flight;
    its loop lag beside the threads mode's at 256 in flight."""
    derived = comp.get("derived") or {}
    cells = comp.get("cells") or {}
    aio = (comp.get("config") or {}).get("default_aio_pool", 10)
    out = []
    for op in ("kv_get", "kv_put"):
        out.append(
            _target(
                f"{op}.asyncio_vs_threads",
                f"{op} throughput, asyncio mode (bound {aio}) vs threads mode (pool {pool}), "
                "64 in flight",
                derived.get(f"{op}.c64.aio{aio}/handler{pool}"),
                "x",
                lambda m: m >= 3.0,
                ">= 3x",
            )
        )
        out.append(
            _target(
                f"{op}.asyncio_vs_aiohttp",
                f"{op} throughput, asyncio mode vs raw aiohttp, both bound {aio}, 64 in flight",
                derived.get(f"{op}.c64.aio{aio}/aiohttp{aio}"),
                "x",
                lambda m: m >= 1.5,
                ">= 1.5x",
            )
        )
        out.append(
            _target(
                f"{op}.asyncio_vs_aiohttp_decoded",
                f"{op} throughput, asyncio mode vs raw aiohttp that also decodes the answer "
                f"(JSON, base64) as the handler does, both bound {aio}, 64 in flight",
                derived.get(f"{op}.c64.aio{aio}/aiohttpd{aio}"),
                "x",
                None,
                "reported",
            )
        )
        cell = cells.get(f"aio{aio}.{op}.c256") or {}
        out.append(
            _target(
                f"{op}.loop_lag_p99.asyncio",
                f"{op} event-loop lag p99, 256 in flight, asyncio mode, bound {aio}",
                (cell.get("median") or {}).get("lag_p99_ms"),
                "ms",
                lambda m: m <= 5.0,
                "<= 5 ms",
            )
        )
    return out


def _fmt(value: Any, unit: str = "") -> str:
    v = _num(value)
    if v is None:
        return "—"
    if unit == "x":
        return f"{v:.2f}×"  # noqa: RUF001
    if unit == "" and v <= 1.0:
        return f"{v * 100:.1f}%"
    if unit == "":
        return f"{v:.2f}"
    if abs(v) >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:.2f} {unit}" if abs(v) < 10 else f"{v:.1f} {unit}"


def targets_text(rows: list[dict[str, Any]]) -> str:
    lines = ["TARGETS"]
    for t in rows:
        lines.append(
            f"  [{t['status']:>7}] {t['target']}: {_fmt(t['measured'], t['unit'])} "
            f"(target {t['threshold']})"
        )
    return "\n".join(lines)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    comp = results.get("comparison") or {}
    cells = comp.get("cells") or {}
    derived = comp.get("derived") or {}
    pool = (comp.get("config") or {}).get("default_pool", 10)
    aio = (comp.get("config") or {}).get("default_aio_pool", 10)
    out: dict[str, Any] = {}
    for op in ("kv_get", "kv_put"):

        def med(cid: str, key: str) -> Any:
            return ((cells.get(cid) or {}).get("median") or {}).get(key)

        out[op] = {
            "handler_ops_per_s": med(f"handler{pool}.{op}.c64", "ops_per_s"),
            "handler_p50_us": med(f"handler{pool}.{op}.c64", "lat_p50_us"),
            "handler_p99_us": med(f"handler{pool}.{op}.c64", "lat_p99_us"),
            "consul2_ops_per_s": med(f"consul2.{op}.c64", "ops_per_s"),
            "bare_ops_per_s": med(f"bare.{op}.c64", "ops_per_s"),
            "wrk_ops_per_s": med(f"wrk.{op}.c16", "ops_per_s"),
            "vs_consul2": derived.get(f"{op}.c64.vs_consul2"),
            "vs_bare": derived.get(f"{op}.c64.vs_bare"),
            "vs_bare_256": derived.get(f"{op}.c256.vs_bare"),
            "vs_consul2_256": derived.get(f"{op}.c256.vs_consul2"),
            "overhead_latency_p50_us": derived.get(f"{op}.c1.overhead_latency_p50_us"),
            "overhead_throughput_us": derived.get(f"{op}.c64.overhead_throughput_us"),
            "lag_p99_ms_256": med(f"handler{pool}.{op}.c256", "lag_p99_ms"),
            "consul2_lag_p99_ms": med(f"consul2.{op}.c64", "lag_p99_ms"),
            "ceiling_fraction": derived.get(f"{op}.ceiling_fraction"),
            "aio_ops_per_s": med(f"aio{aio}.{op}.c64", "ops_per_s"),
            "aio_vs_threads": derived.get(f"{op}.c64.aio{aio}/handler{pool}"),
            "aio_vs_aiohttp": derived.get(f"{op}.c64.aio{aio}/aiohttp{aio}"),
            "aio_lag_p99_ms_256": med(f"aio{aio}.{op}.c256", "lag_p99_ms"),
        }
    rej = (comp.get("rejection") or {}).get("median_of_rounds") or {}
    out["rejection_p50_us"] = rej.get("p50_us")
    out["rejection_p99_us"] = rej.get("p99_us")
    out["rejection_control_p99_us"] = rej.get("control_p99_us")
    out["rss_growth_mb"] = (results.get("rss") or {}).get("growth_mb")
    out["rss_growth_mb_asyncio"] = (results.get("rss_asyncio") or {}).get("growth_mb")
    return out


def _ops(v: Any) -> str:
    n = _num(v)
    return "—" if n is None else f"{n:,.0f}"


def _us(v: Any) -> str:
    n = _num(v)
    if n is None:
        return "—"
    return f"{n:,.0f}" if abs(n) >= 100 else f"{n:.1f}"


def _ms(v: Any) -> str:
    n = _num(v)
    return "—" if n is None else f"{n:.2f}"


# Contenders in the order tables and the plot list them (by name prefix).
_ORDER = ("wrk", "consul2aio", "consul2", "aiohttp", "abare", "bare", "handler", "aio")


def _rank(contender: str) -> int:
    return next((i for i, p in enumerate(_ORDER) if contender.startswith(p)), len(_ORDER))


def _cell_sort_key(item: tuple[str, dict[str, Any]]) -> tuple[Any, ...]:
    c = item[1]
    return (c["op"], _rank(c["contender"]), c.get("pool") or 0, c.get("inflight") or 0)


def _side_by_side(comp: dict[str, Any]) -> list[str]:
    """One table per op: every contender's ops/s (and loop lag p99) at each in-flight count."""
    cells = comp.get("cells") or {}
    levels = sorted({c["inflight"] for c in cells.values() if c["kind"] == "python"})
    if not levels:
        return []
    L = [
        "## Both I/O modes side by side",
        "",
        "ops/s, medians of rounds (event-loop lag p99 in ms in brackets), every contender in "
        "the same rounds against the same agent.",
        "",
    ]
    for op in ("kv_get", "kv_put"):
        rows: dict[str, dict[int, dict[str, Any]]] = {}
        labels: dict[str, str] = {}
        for _, c in sorted(
            ((k, v) for k, v in cells.items() if v["kind"] == "python" and v["op"] == op),
            key=_cell_sort_key,
        ):
            rows.setdefault(c["contender"], {})[c["inflight"]] = c["median"]
            labels[c["contender"]] = c["label"]
        L += [
            f"| {op} | " + " | ".join(f"{n} in flight" for n in levels) + " |",
            "|---|" + "---:|" * len(levels),
        ]
        for name, by_level in rows.items():
            values = []
            for n in levels:
                m = by_level.get(n) or {}
                values.append(f"{_ops(m.get('ops_per_s'))} ({_ms(m.get('lag_p99_ms'))})")
            L.append(f"| {labels[name]} | " + " | ".join(values) + " |")
        L.append("")
    derived = comp.get("derived") or {}
    pairs = sorted({k.split(".", 2)[2] for k in derived if "/" in k})
    if pairs:
        L += [
            "Paired ratios of ops/s (within each round, then the median):",
            "",
            "| op | ratio | " + " | ".join(f"{n} in flight" for n in levels) + " |",
            "|---|---|" + "---:|" * len(levels),
        ]
        for op in ("kv_get", "kv_put"):
            for pair in pairs:
                vals = [_fmt(derived.get(f"{op}.c{n}.{pair}"), "x") for n in levels]
                L.append(f"| {op} | {pair} | " + " | ".join(vals) + " |")
        L.append("")
    return L


def write_markdown(results: dict[str, Any], path: Path) -> None:
    comp = results.get("comparison") or {}
    rss = results.get("rss") or {}
    head = results.get("headline") or headline(results)
    cfg = comp.get("config") or {}
    pool = cfg.get("default_pool", 10)
    L: list[str] = ["# handler-consul benchmark results", ""]
    L += [
        f"Generated by `{comp.get('command') or rss.get('command')}`"
        f" on {comp.get('date') or rss.get('date')} (UTC). "
        "Regenerate: `scripts/bench` (comparison, ~6 min), `scripts/bench --rss` "
        "(RSS across 1M envelopes, ~8 min), `scripts/bench --all` (both), "
        "`scripts/bench --quick` (both, small).",
        "",
    ]

    # Headline
    L += ["## Headline", ""]
    L += [
        f"Pool {pool} (the default), 64 envelopes in flight, one local dev agent, "
        f"medians of {cfg.get('rounds', '?')} interleaved rounds.",
        "",
    ]
    L += ["| | kv_get | kv_put |", "|---|---:|---:|"]
    g, p = head.get("kv_get") or {}, head.get("kv_put") or {}
    rows = [
        ("HandlerConsul ops/s", _ops(g.get("handler_ops_per_s")), _ops(p.get("handler_ops_per_s"))),
        (
            "python-consul2 (requests) ops/s, same pool",
            _ops(g.get("consul2_ops_per_s")),
            _ops(p.get("consul2_ops_per_s")),
        ),
        (
            "bare transport ops/s, same pool",
            _ops(g.get("bare_ops_per_s")),
            _ops(p.get("bare_ops_per_s")),
        ),
        (
            "Consul's ceiling (wrk, 16 connections) ops/s",
            _ops(g.get("wrk_ops_per_s")),
            _ops(p.get("wrk_ops_per_s")),
        ),
        (
            "handler vs python-consul2",
            _fmt(g.get("vs_consul2"), "x"),
            _fmt(p.get("vs_consul2"), "x"),
        ),
        (
            "handler vs bare transport",
            _fmt(g.get("vs_bare"), "x"),
            _fmt(p.get("vs_bare"), "x"),
        ),
        (
            "at 256 in flight: handler vs python-consul2 / vs bare transport",
            f"{_fmt(g.get('vs_consul2_256'), 'x')} / {_fmt(g.get('vs_bare_256'), 'x')}",
            f"{_fmt(p.get('vs_consul2_256'), 'x')} / {_fmt(p.get('vs_bare_256'), 'x')}",
        ),
        (
            "fraction of the wrk ceiling (best handler config)",
            _fmt(g.get("ceiling_fraction")),
            _fmt(p.get("ceiling_fraction")),
        ),
        (
            "latency p50 / p99 (µs)",
            f"{_us(g.get('handler_p50_us'))} / {_us(g.get('handler_p99_us'))}",
            f"{_us(p.get('handler_p50_us'))} / {_us(p.get('handler_p99_us'))}",
        ),
        (
            "per-envelope overhead over bare transport, 1 in flight, p50 latency (µs)",
            _us(g.get("overhead_latency_p50_us")),
            _us(p.get("overhead_latency_p50_us")),
        ),
        (
            "per-envelope overhead over bare transport, 64 in flight, 1/throughput (µs)",
            _us(g.get("overhead_throughput_us")),
            _us(p.get("overhead_throughput_us")),
        ),
        (
            "event-loop lag p99, 256 in flight (ms)",
            _ms(g.get("lag_p99_ms_256")),
            _ms(p.get("lag_p99_ms_256")),
        ),
        (
            "event-loop lag p99, python-consul2, 64 in flight (ms)",
            _ms(g.get("consul2_lag_p99_ms")),
            _ms(p.get("consul2_lag_p99_ms")),
        ),
        (
            "asyncio mode ops/s, same bound",
            _ops(g.get("aio_ops_per_s")),
            _ops(p.get("aio_ops_per_s")),
        ),
        (
            "asyncio mode vs threads mode / vs raw aiohttp, same bound",
            f"{_fmt(g.get('aio_vs_threads'), 'x')} / {_fmt(g.get('aio_vs_aiohttp'), 'x')}",
            f"{_fmt(p.get('aio_vs_threads'), 'x')} / {_fmt(p.get('aio_vs_aiohttp'), 'x')}",
        ),
        (
            "event-loop lag p99, 256 in flight, asyncio mode (ms)",
            _ms(g.get("aio_lag_p99_ms_256")),
            _ms(p.get("aio_lag_p99_ms_256")),
        ),
    ]
    L += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    idle = comp.get("idle_lag") or {}
    rss_text = (
        " ".join(
            f"RSS growth across {r.get('envelopes', 0):,} real kv_get envelopes in "
            f"{r.get('io', 'threads')} mode, from envelope {r.get('checkpoint', 0):,} to the "
            f"last: {_fmt(r.get('growth_mb'), 'MB')}."
            for r in (rss, results.get("rss_asyncio") or {})
            if r
        )
        or "RSS stage not run yet (`scripts/bench --rss`)."
    )
    L += [
        "",
        f"Open-breaker rejection: p50 {_us(head.get('rejection_p50_us'))} µs, "
        f"p99 {_us(head.get('rejection_p99_us'))} µs (a constant-work timing control of the "
        f"same median: p99 {_us(head.get('rejection_control_p99_us'))} µs). {rss_text} "
        "Event-loop lag with no contender running (this machine's noise floor): "
        f"p50 {_ms(idle.get('lag_p50_ms'))} ms, p99 {_ms(idle.get('lag_p99_ms'))} ms.",
        "",
    ]

    # Targets
    L += ["## Targets", "", "| target | threshold | measured | status |", "|---|---|---:|---|"]
    for t in results.get("targets") or []:
        L.append(
            f"| {t['target']} | {t['threshold']} | {_fmt(t['measured'], t['unit'])} "
            f"| **{t['status']}** |"
        )
    L.append("")

    L += _side_by_side(comp)

    # Full table
    if comp:
        L += [
            "## Every contender",
            "",
            f"Medians across {cfg.get('rounds')} rounds of {cfg.get('ops_per_cell'):,} calls "
            "per contender (wrk: "
            f"{cfg.get('wrk_seconds')} s per round). *spread* is (max - min) / median of the "
            "per-round ops/s. Latency is per call, from the caller's `await` to its result "
            "(queueing for a pool slot included). Loop lag: how late a 5 ms ticker task on "
            "the same event loop wakes up while the contender runs.",
            "",
        ]
        if cfg.get("wrk_note"):
            L += [f"wrk: {cfg['wrk_note']}.", ""]
        L += [
            "| op | contender | pool | in flight | ops/s | spread | p50 µs | p99 µs "
            "| loop lag p50 ms | loop lag p99 ms | CPU µs/op process | CPU µs/op loop thread "
            "| errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        cells = comp.get("cells") or {}
        for _, c in sorted(
            ((k, v) for k, v in cells.items() if v["kind"] not in ("rejection", "idle")),
            key=_cell_sort_key,
        ):
            m = c["median"]
            spread = (c.get("spread") or {}).get("rel")
            L.append(
                f"| {c['op']} | {c['label']} | {c.get('pool') or '—'} | {c['inflight']} "
                f"| {_ops(m.get('ops_per_s'))} "
                f"| {'—' if _num(spread) is None else f'{spread * 100:.0f}%'} "
                f"| {_us(m.get('lat_p50_us'))} | {_us(m.get('lat_p99_us'))} "
                f"| {_ms(m.get('lag_p50_ms'))} | {_ms(m.get('lag_p99_ms'))} "
                f"| {_us(m.get('cpu_us_per_op'))} | {_us(m.get('loop_cpu_us_per_op'))} "
                f"| {c.get('errors', 0)} |"
            )
        L.append("")
        d = comp.get("derived") or {}
        L += [
            "### Ratios and overhead (paired within each round, then the median)",
            "",
            "| op | in flight | handler / python-consul2 | handler / bare | "
            "bare / python-consul2 | overhead µs (1/throughput) | overhead µs (p50 latency) "
            "| overhead CPU µs/op (process) | overhead CPU µs/op (loop thread) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for op in ("kv_get", "kv_put"):
            for n in sorted(set(cfg.get("inflight", [])) & set(cfg.get("baseline_inflight", []))):
                k = f"{op}.c{n}"
                L.append(
                    f"| {op} | {n} | {_fmt(d.get(k + '.vs_consul2'), 'x')} "
                    f"| {_fmt(d.get(k + '.vs_bare'), 'x')} "
                    f"| {_fmt(d.get(k + '.bare_vs_consul2'), 'x')} "
                    f"| {_us(d.get(k + '.overhead_throughput_us'))} "
                    f"| {_us(d.get(k + '.overhead_latency_p50_us'))} "
                    f"| {_us(d.get(k + '.overhead_cpu_us'))} "
                    f"| {_us(d.get(k + '.overhead_loop_cpu_us'))} |"
                )
        L.append("")
        rej = comp.get("rejection") or {}
        mr, pooled = rej.get("median_of_rounds") or {}, rej.get("pooled") or {}
        L += [
            "### Open-breaker rejection",
            "",
            f"`force_open_circuit()`, then `await execute({{kv_get envelope dict}})` raising "
            f"`InfraUnavailableError`, timed with `perf_counter_ns`; {rej.get('samples', 0):,} "
            f"samples on pool {rej.get('pool')}. Median of per-round p50 / p99: "
            f"{_us(mr.get('p50_us'))} / {_us(mr.get('p99_us'))} µs; all samples pooled: "
            f"p50 {_us(pooled.get('p50_us'))}, p99 {_us(pooled.get('p99_us'))}, "
            f"p99.9 {_us(pooled.get('p999_us'))} µs.",
            "",
        ]
        ctl = rej.get("control") or {}
        if ctl:
            L += [
                f"Timing control: alternating with each rejection, {ctl.get('loops')} iterations "
                "of a constant pure-Python loop, calibrated so its median matches the "
                f"rejection's: median of per-round p50 / p99 {_us(mr.get('control_p50_us'))} / "
                f"{_us(mr.get('control_p99_us'))} µs (pooled p99 {_us(ctl.get('p99_us'))} µs). "
                "What the control's p99 shows above its p50 is this machine's timing noise "
                "(preemption by other processes, interrupts), not the handler's.",
                "",
            ]

    for rss in (results.get("rss") or {}, results.get("rss_asyncio") or {}):
        L += _rss_section(rss)

    notes = Path(__file__).resolve().parent / "NOTES.md"
    if notes.exists() and path.parent == notes.parent / "results":
        L += [notes.read_text().rstrip(), ""]

    L += _machine_section(results, comp)
    path.write_text("\n".join(L))


def _rss_section(rss: dict[str, Any]) -> list[str]:
    L: list[str] = []
    if rss:
        L += [
            f"## RSS across real envelopes, {rss.get('io', 'threads')} mode",
            "",
            f"`{rss.get('command')}` on {rss.get('date')}: {rss.get('envelopes', 0):,} "
            f"kv_get envelopes through HandlerConsul (pool {rss.get('pool')}, "
            f"{rss.get('inflight')} in flight) against the agent, at "
            f"{_ops(rss.get('ops_per_s'))} envelopes/s; RSS read from /proc/self/statm after "
            "`gc.collect()`.",
            "",
            f"| at start | at envelope {rss.get('checkpoint', 0):,} "
            f"| at envelope {rss.get('envelopes', 0):,} | growth | errors |",
            "|---:|---:|---:|---:|---:|",
            f"| {rss.get('rss_start_mb', 0):.1f} MB "
            f"| {rss.get('rss_at_checkpoint_mb', 0):.1f} MB "
            f"| {rss.get('rss_at_end_mb', 0):.1f} MB | {rss.get('growth_mb', 0):+.2f} MB "
            f"| {rss.get('errors', 0)} |",
            "",
            "Curve (envelopes → RSS MB): "
            + ", ".join(f"{p['envelopes']:,} → {p['rss_mb']:.1f}" for p in rss.get("curve", [])),
            "",
        ]
    return L


def _machine_section(results: dict[str, Any], comp: dict[str, Any]) -> list[str]:
    machine = results.get("machine") or {}
    rss = results.get("rss") or {}
    L = ["## Machine and run", ""]
    for k, v in machine.items():
        L.append(f"- {k}: {v}")
    if comp:
        noise = comp.get("noise") or {}
        L += [
            f"- comparison: `{comp.get('command')}`, {comp.get('date')}, "
            f"{comp.get('elapsed_s', 0):.0f} s, load average before {comp.get('load_before')} "
            f"and after {comp.get('load_after')}",
            f"- noise: median per-contender spread of ops/s across rounds "
            f"{_fmt(noise.get('median_rel_spread'))}, worst {_fmt(noise.get('max_rel_spread'))}."
            " The machine is shared (other test suites run at the same time); every ratio "
            "above is taken within a round, then the median across rounds.",
        ]
    for section in (rss, results.get("rss_asyncio") or {}):
        if section:
            L.append(
                f"- RSS stage ({section.get('io', 'threads')} mode): `{section.get('command')}`, "
                f"{section.get('date')}, {section.get('seconds', 0):.0f} s"
            )
    L.append("")
    return L


_PLOT_NAMES = {
    "consul2": "python-consul2",
    "consul2aio": "consul.aio",
    "bare": "bare transport",
    "abare": "asyncio transport",
    "aiohttp": "raw aiohttp",
    "handler": "threads mode",
    "aio": "asyncio mode",
}
# Bar colour per contender (by name prefix); anything else takes the default.
_PLOT_COLORS = {
    "wrk": "#787878",
    "consul2aio": "#f4a582",
    "consul2": "#d6604d",
    "aiohttp": "#b2abd2",
    "abare": "#a6d96a",
    "bare": "#74add1",
    "handler": "#2c7bb6",
    "aio": "#1a9641",
}
_PLOT_DEFAULT_COLOR = "#2c7bb6"
_BASELINES = ("consul2", "bare", "aiohttp", "abare")


def _prefix(contender: str) -> str:
    return next((p for p in _ORDER if contender.startswith(p)), contender)


def write_plot(results: dict[str, Any], path: Path) -> str | None:
    """Draw throughput.png (one panel of ops/s bars per op). Returns None when written, else
    the one line saying why it was skipped: matplotlib is the optional `bench` extra, so a
    missing plotting library never costs the results themselves."""
    comp = results.get("comparison") or {}
    cells = comp.get("cells") or {}
    panels = []
    for op in ("kv_get", "kv_put"):
        rows = []
        for _, c in sorted(
            ((k, v) for k, v in cells.items() if v["kind"] != "rejection" and v["op"] == op),
            key=_cell_sort_key,
        ):
            kind = _prefix(c["contender"])
            if c["contender"].startswith(_BASELINES) and c["inflight"] not in (1, 64):
                continue
            name = _PLOT_NAMES.get(kind, kind)
            if c["contender"] == "wrk":
                label = "Consul (wrk, 16 conn)"
            elif c.get("pool"):
                label = f"{name} p{c['pool']} x{c['inflight']}"
            else:
                label = f"{name} x{c['inflight']}"
            rows.append((label, kind, c["median"].get("ops_per_s") or 0.0))
        panels.append((f"{op} ops/s (median of rounds)", rows))
    title = (
        "handler-consul: ops/s against one local Consul dev agent "
        "(p = pool threads or asyncio bound, x = calls in flight)"
    )
    # Imported here, not at module level, so that the bench runs without the extra.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import StrMethodFormatter
    except ImportError as exc:
        earlier = " (the one there is from an earlier run)" if path.exists() else ""
        return (
            f"bench: plot skipped, matplotlib not importable ({exc}): {path} not written"
            f"{earlier}; to get it: pip install -e '.[bench]'"
        )

    heights = [max(len(rows), 1) for _, rows in panels]
    fig = Figure(figsize=(11, 0.3 * sum(heights) + 0.9 * len(panels) + 0.5), layout="constrained")
    # Agg set on this figure alone: no display needed, and no pyplot-wide backend switch.
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (panel_title, rows) in zip(axes, panels, strict=True):
        values = [value for _, _, value in rows]
        # Positions, not labels, on the y axis: two rows with the same label stay two bars.
        bars = ax.barh(
            range(len(rows)),
            values,
            color=[_PLOT_COLORS.get(kind, _PLOT_DEFAULT_COLOR) for _, kind, _ in rows],
        )
        ax.set_yticks(range(len(rows)), [label for label, _, _ in rows])
        ax.invert_yaxis()  # rows top to bottom in the order listed
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
        ax.set_xlim(0, max([*values, 1.0]) * 1.12)  # room for the value after the longest bar
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.tick_params(labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_title(panel_title, loc="left", fontsize=10)
        if not rows:
            ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center")
            ax.set_yticks([])
    fig.savefig(path, dpi=110)
    return None
