"""The contenders, each driven from one asyncio event loop with N calls in flight.

- ``consul2``: python-consul2 as people usually use it: one shared ``consul.Consul(host,
  port)`` (default requests transport) called through ``loop.run_in_executor`` on a
  ``ThreadPoolExecutor(10)``.
- ``bare``: the transport the handler uses (``handler_consul._runtime.build_client``), calling
  ``client.kv.get/put`` directly, in the same kind of executor.
- ``handler``: ``HandlerConsul.execute`` with a dict envelope, at a given pool size
  (``io="threads"``); ``aio``: the same in ``io="asyncio"`` at a given bound.
- ``abare``: the asyncio mode's transport without the handler, bounded like it.
- ``aiohttp``: raw aiohttp as people use it (one ``ClientSession``, a connector limited to
  the same bound), GET/PUT on the same key, the body read; no JSON, no envelope.
- ``consul2aio``: python-consul2's own ``consul.aio`` (``await client.kv.get``), which opens
  an aiohttp session per request. Both need the optional ``bench`` extra (aiohttp).

Each measured cell records per-call latency and, while it runs, the lag of a 5 ms ticker
task on the same loop (how late the loop wakes it up).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import math
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from handler_consul import ConsulSettings, HandlerConsul, InfraUnavailableError
from handler_consul._runtime import build_client

GET_KEY = "bench/get"
VALUE = "handler-consul-bench-value-0123456789abcdef"  # 43 bytes of UTF-8
TICK_SECONDS = 0.005

Call = Callable[[], Awaitable[Any]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Cell:
    """One contender's measurement in one round."""

    ops: int
    seconds: float
    latencies: list[float]
    lags: list[float]
    errors: int
    first_error: str | None = None
    cpu_seconds: float = math.nan  # the whole process (loop + workers), user + system
    loop_cpu_seconds: float = math.nan  # the event-loop thread only

    def summary(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "seconds": self.seconds,
            "ops_per_s": self.ops / self.seconds if self.seconds > 0 else math.nan,
            "lat_p50_us": percentile(self.latencies, 50) * 1e6,
            "lat_p99_us": percentile(self.latencies, 99) * 1e6,
            "lag_p50_ms": percentile(self.lags, 50) * 1e3 if self.lags else math.nan,
            "lag_p99_ms": percentile(self.lags, 99) * 1e3 if self.lags else math.nan,
            "lag_samples": len(self.lags),
            "cpu_us_per_op": self.cpu_seconds / self.ops * 1e6 if self.ops else math.nan,
            "loop_cpu_us_per_op": self.loop_cpu_seconds / self.ops * 1e6 if self.ops else math.nan,
            "errors": self.errors,
            "first_error": self.first_error,
        }


class LagTicker:
    """A task that sleeps 5 ms at a time and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = False

    async def _run(self) -> None:
        clock = time.perf_counter
        while not self._stop:
            start = clock()
            await asyncio.sleep(TICK_SECONDS)
            self.lags.append(max(0.0, clock() - start - TICK_SECONDS))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> list[float]:
        self._stop = True
        if self._task is not None:
            await self._task
        return self.lags


async def drive(call: Call, ops: int, inflight: int, *, ticker: bool = True) -> Cell:
    """Run ``ops`` calls with ``inflight`` of them outstanding at any time."""
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    remaining = ops
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal remaining, errors, first_error
        append = latencies.append
        while remaining > 0:
            remaining -= 1
            start = clock()
            try:
                await call()
            except Exception as exc:
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
            append(clock() - start)

    lag = LagTicker()
    if ticker:
        lag.start()
        await asyncio.sleep(0)
    cpu0, loop_cpu0 = time.process_time(), time.thread_time()
    start = clock()
    await asyncio.gather(*(worker() for _ in range(max(1, min(inflight, ops)))))
    seconds = clock() - start
    cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop_cpu0
    lags = await lag.stop() if ticker else []
    return Cell(ops, seconds, latencies, lags, errors, first_error, cpu, loop_cpu)


# -- contenders -------------------------------------------------------------------------


@dataclass
class Contender:
    """A named way to make kv_get / kv_put calls from the loop."""

    name: str
    label: str
    pool: int
    get: Call
    put: Call
    close: Callable[[], Awaitable[None]]
    extra: dict[str, Any] = field(default_factory=dict)
    # A contender too slow for the full count of calls per cell runs this fraction of them.
    ops_scale: float = 1.0


def _put_key(name: str) -> str:
    return f"bench/put/{name}"


async def make_consul2(host: str, port: int, threads: int = 10) -> Contender:
    import consul  # python-consul2

    with warnings.catch_warnings():
        # Its constructor builds the legacy ACL endpoint, which warns on construction.
        warnings.simplefilter("ignore", DeprecationWarning)
        client = consul.Consul(host=host, port=port)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="bench-consul2")
    loop = asyncio.get_running_loop()
    key = _put_key("consul2")
    kv = client.kv

    def get() -> Awaitable[Any]:
        return loop.run_in_executor(executor, kv.get, GET_KEY)

    def put() -> Awaitable[Any]:
        return loop.run_in_executor(executor, kv.put, key, VALUE)

    async def close() -> None:
        executor.shutdown(wait=True)
        client.http.session.close()

    return Contender(
        "consul2", f"python-consul2 (requests), pool {threads}", threads, get, put, close
    )


async def make_bare(host: str, port: int, threads: int = 10) -> Contender:
    settings = ConsulSettings(host=host, port=port, max_concurrent_operations=threads)
    client = build_client(settings)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="bench-bare")
    loop = asyncio.get_running_loop()
    key = _put_key("bare")
    kv = client.kv

    def get() -> Awaitable[Any]:
        return loop.run_in_executor(executor, kv.get, GET_KEY)

    def put() -> Awaitable[Any]:
        return loop.run_in_executor(executor, kv.put, key, VALUE)

    async def close() -> None:
        executor.shutdown(wait=True)
        client.http.close()

    return Contender("bare", f"bare transport, pool {threads}", threads, get, put, close)


async def make_async_bare(host: str, port: int, bound: int) -> Contender:
    """The asyncio mode's transport without the handler: ``await client.kv.get`` on the loop,
    at most ``bound`` requests at once (an ``asyncio.Semaphore``), as ``bare`` is for the
    threads mode. What it costs against raw aiohttp is the transport's own share."""
    settings = ConsulSettings(host=host, port=port, max_concurrent_operations=bound)
    client = build_client(settings, io="asyncio")
    limit = asyncio.Semaphore(bound)
    key = _put_key(f"abare-{bound}")
    kv = client.kv

    async def get() -> Any:
        async with limit:
            return await kv.get(GET_KEY)

    async def put() -> Any:
        async with limit:
            return await kv.put(key, VALUE)

    async def close() -> None:
        client.http.close()
        await asyncio.sleep(0)

    return Contender(f"abare{bound}", f"asyncio transport, bound {bound}", bound, get, put, close)


async def make_handler(
    host: str, port: int, pool: int, io: str = "threads"
) -> tuple[Contender, HandlerConsul]:
    handler = HandlerConsul(
        settings=ConsulSettings(
            host=host,
            port=port,
            max_concurrent_operations=pool,
            io=io,  # type: ignore[arg-type]
        )
    )
    await handler.initialize()
    name = f"handler{pool}" if io == "threads" else f"aio{pool}"
    label = (
        f"HandlerConsul threads, pool {pool}"
        if io == "threads"
        else f"HandlerConsul asyncio, bound {pool}"
    )
    key = _put_key(name)
    execute = handler.execute

    def get() -> Awaitable[Any]:
        # A fresh dict per envelope, as an orchestrator hands them in.
        return execute({"operation": "consul.kv_get", "payload": {"key": GET_KEY}})

    def put() -> Awaitable[Any]:
        return execute({"operation": "consul.kv_put", "payload": {"key": key, "value": VALUE}})

    async def close() -> None:
        await handler.shutdown()

    return Contender(name, label, pool, get, put, close), handler


def aiohttp_missing() -> str | None:
    """Why the aiohttp contenders cannot run (the optional ``bench`` extra), or None."""
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        return f"aiohttp not importable ({exc}): pip install -e '.[bench]'"
    return None


async def make_aiohttp(host: str, port: int, limit: int, *, decoded: bool = False) -> Contender:
    """Raw aiohttp. By default it reads the answer's bytes and stops there: the least an HTTP
    client can do. With ``decoded``, it also does what a kv_get or kv_put is for, as every
    other contender does (python-consul2 underneath): the JSON parsed with aiohttp's own
    ``response.json()`` and the value base64-decoded to text."""
    import aiohttp

    # One session, a connector bounded like the handler, no environment proxies (trust_env
    # is off by default): the way a careful aiohttp user calls Consul's HTTP API directly.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    name = f"aiohttpd{limit}" if decoded else f"aiohttp{limit}"
    get_url = f"http://{host}:{port}/v1/kv/{GET_KEY}"
    put_url = f"http://{host}:{port}/v1/kv/{_put_key(name)}"

    async def get() -> Any:
        async with session.get(get_url) as response:
            response.raise_for_status()
            if not decoded:
                return await response.read()
            entries = await response.json()
            return base64.b64decode(entries[0]["Value"]).decode("utf-8")

    async def put() -> Any:
        async with session.put(put_url, data=VALUE) as response:
            response.raise_for_status()
            return await response.json() if decoded else await response.read()

    async def close() -> None:
        await session.close()

    label = f"raw aiohttp, limit {limit}" + (", answer decoded" if decoded else "")
    return Contender(name, label, limit, get, put, close)


async def make_consul2_aio(host: str, port: int) -> Contender:
    import consul.aio  # python-consul2's asyncio client (aiohttp)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its legacy ACL endpoint
        client = consul.aio.Consul(host=host, port=port)
    key = _put_key("consul2aio")
    kv = client.kv

    def get() -> Awaitable[Any]:
        return kv.get(GET_KEY)  # type: ignore[no-any-return]

    def put() -> Awaitable[Any]:
        return kv.put(key, VALUE)  # type: ignore[no-any-return]

    async def close() -> None:
        return None  # every request opened and closed its own session

    # A new aiohttp session (and connection) per request: a quarter of the calls per cell.
    return Contender(
        "consul2aio",
        "python-consul2 consul.aio (aiohttp)",
        0,
        get,
        put,
        close,
        ops_scale=0.25,
    )


# -- the open-breaker rejection --------------------------------------------------------


async def rejection_latencies(
    handler: HandlerConsul, samples: int, control_loops: int = 0
) -> tuple[list[float], list[float]]:
    """Time ``execute()`` raising InfraUnavailableError while the breaker is forced open.

    Alternating with each rejection, a control sample times ``control_loops`` iterations of
    constant pure-Python work (calibrated to the rejection's median): its tail is this
    machine's timing noise for an operation of that length, not the handler's.
    """
    handler.force_open_circuit()
    clock = time.perf_counter_ns
    out: list[float] = []
    control: list[float] = []
    try:
        for _ in range(samples):
            envelope = {"operation": "consul.kv_get", "payload": {"key": GET_KEY}}
            start = clock()
            try:
                await handler.execute(envelope)
            except InfraUnavailableError:
                pass
            else:
                raise RuntimeError("execute() succeeded with the breaker forced open")
            out.append((clock() - start) / 1e3)  # µs
            if control_loops:
                start = clock()
                await _constant_work(control_loops)
                control.append((clock() - start) / 1e3)
    finally:
        handler.reset_circuit()
    return out, control


async def _constant_work(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i
    return total


async def calibrate_control(target_us: float) -> int:
    """Loop count whose median duration is about ``target_us``."""
    clock = time.perf_counter_ns
    loops = 64
    for _ in range(3):
        times = []
        for _ in range(400):
            start = clock()
            await _constant_work(loops)
            times.append((clock() - start) / 1e3)
        per = percentile(times, 50)
        loops = max(1, round(loops * target_us / per)) if per > 0 else loops
    return loops


# -- RSS -------------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def rss_run(
    call: Call,
    total: int,
    checkpoint: int,
    inflight: int,
    samples: int = 20,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``total`` envelopes with ``inflight`` outstanding; RSS (after gc) at ``checkpoint``,
    at ``total`` and at ``samples`` evenly spaced points."""
    marks = sorted({checkpoint, total, *(total * i // samples for i in range(1, samples + 1))})
    curve: list[tuple[int, int]] = []
    done = 0
    errors = 0
    first_error: str | None = None
    gc.collect()
    rss_start = rss_bytes()
    start = time.perf_counter()
    segment_start = 0
    for mark in marks:
        cell = await drive(call, mark - segment_start, inflight, ticker=False)
        errors += cell.errors
        first_error = first_error or cell.first_error
        done = segment_start = mark
        gc.collect()
        curve.append((done, rss_bytes()))
        if log is not None:
            rate = done / (time.perf_counter() - start)
            log(f"  {done:,} envelopes, RSS {curve[-1][1] / 2**20:.1f} MB, {rate:.0f}/s")
    seconds = time.perf_counter() - start
    at = dict(curve)
    return {
        "envelopes": total,
        "checkpoint": checkpoint,
        "inflight": inflight,
        "seconds": seconds,
        "ops_per_s": total / seconds,
        "rss_start_mb": rss_start / 2**20,
        "rss_at_checkpoint_mb": at[checkpoint] / 2**20,
        "rss_at_end_mb": at[total] / 2**20,
        "growth_mb": (at[total] - at[checkpoint]) / 2**20,
        "curve": [{"envelopes": n, "rss_mb": b / 2**20} for n, b in curve],
        "errors": errors,
        "first_error": first_error,
    }
