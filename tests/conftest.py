"""Fixtures: real Consul agents, a cluster, toxiproxy, proxies, and handlers under test.

Fixtures (all start real processes on 127.0.0.1; all are stopped at session end):

- ``consul_bin`` / ``toxiproxy_bin`` (session): binary paths from scripts/*-bin. If no binary
  can be had the test FAILS with the reason; Consul-facing tests never skip.
- ``consul_agent`` (session): a shared ``consul agent -dev``. Use unique keys per test.
- ``fresh_consul_agent`` (function): a private dev agent, free to kill/restart.
- ``acl_agent`` (session): dev agent with ACLs on, default deny; ``.management_token``,
  ``.mint_token(rules_hcl) -> secret``.
- ``consul_cluster`` (function): three servers; ``leader()``, ``followers()``,
  ``kill_leader()``, ``restart(agent)``, ``wait_for_leader(exclude=None, timeout=30)``.
- ``two_datacenters`` (function): single-server agents ``.dc1`` and ``.dc2``, WAN-joined.
- ``toxiproxy_server`` (session), ``toxiproxy_for(agent_or_addr) -> Toxiproxy`` (function
  factory), ``toxiproxy`` (function, in front of ``consul_agent``).
- ``counting_proxy`` (function, in front of ``consul_agent``), ``counting_proxy_for``.
- ``small_value_agent`` (1 KiB values, so 413) and ``two_connection_agent`` (429 past two
  connections per client): private dev agents with one limit set.

Product fixtures (helpers are in tests/support/, imported as ``support``):

- ``io_mode`` (autouse): the I/O mode under test. Every test runs twice, as ``[threads]`` and
  ``[asyncio]`` (``CONSUL_IO`` is set for it, so even a handler a test builds itself runs in
  that mode), except in the modules of ``IO_INDEPENDENT_MODULES`` and tests marked
  ``io_independent`` (nothing they check goes through the I/O layer) or ``threads_only``
  (they check worker threads), each with its reason.
- ``clean_consul_env``: no CONSUL_* variable of the developer's shell reaches a test.
- ``make_handler(target, **settings)`` with the product defaults, ``handler`` (on the shared
  agent), ``make_tuned_handler(target, **over)`` with ``support.tuned`` settings (quick
  timeouts, millisecond backoff, a breaker that only opens when the test says so).
- ``direct(target, **settings)``: the handler's client and transport without the handler, in
  the test's I/O mode (``await client(lambda c: c.kv.get("k"))``).
- ``dead_port``: a reserved loopback port nothing listens on.
- ``debug_logs`` / ``info_logs``: a ``support.LogCollector`` on the root logger.
- ``gates`` and ``make_pool(workers, ...)``: a BoundedThreadPool whose workers the test holds.
- the misbehaving HTTP servers at the end of this file.

A failing test gets each live harness process's log tail attached to its report.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import (
    AclConsulAgent,
    BinaryUnavailable,
    ConsulAgent,
    ConsulCluster,
    CountingProxy,
    NotBuiltYet,
    Toxiproxy,
    ToxiproxyServer,
    TwoDatacenters,
)

_KINDS = {"consul": "consul_bin", "toxiproxy": "toxiproxy_bin"}
_binaries: dict[str, str | BinaryUnavailable] = {}
_reported: set[str] = set()  # kinds whose version line has been printed


def _lookup(kind: str, *, build: bool) -> str | BinaryUnavailable:
    cached = _binaries.get(kind)
    if isinstance(cached, str) or (cached is not None and not isinstance(cached, NotBuiltYet)):
        return cached
    try:
        _binaries[kind] = harness.resolve(kind, build=build)
    except BinaryUnavailable as exc:
        _binaries[kind] = exc
    return _binaries[kind]


def _binary(kind: str) -> str:
    found = _lookup(kind, build=True)
    if isinstance(found, BinaryUnavailable):
        pytest.fail(f"no {kind} binary, so this test cannot run: {found}", pytrace=False)
    return found


# ---- hooks -------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI cancelling the job) becomes a KeyboardInterrupt, so pytest tears down and
    # every agent is stopped; agents run in their own process groups and never see it.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):

        def _on_sigterm(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _on_sigterm)


def _describe(kind: str, found: str | BinaryUnavailable) -> str:
    if isinstance(found, NotBuiltYet):
        return f"{kind}: not built yet; built before the first test that needs it"
    if isinstance(found, BinaryUnavailable):
        return f"{kind}: UNAVAILABLE: {found}"
    _reported.add(kind)
    return f"{kind}: {harness.version(kind, found)} ({found})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The Consul and toxiproxy versions in use (without building anything here)."""
    return [_describe(kind, _lookup(kind, build=False)).splitlines()[0] for kind in _KINDS]


IO_MODES = ("threads", "asyncio")
# Test modules (by name prefix) that never reach the I/O layer through a handler: the code's
# own rules, settings, the CLI's parsing and output, the harness, the docs. They run once;
# every other test runs in both I/O modes, new ones included, unless marked.
IO_INDEPENDENT_MODULES = (
    "test_architecture",
    "test_bench_smoke",
    "test_cli",
    "test_consul_clash",
    "test_docs",
    "test_envelope",
    "test_exports",
    "test_harness",
    "test_properties",  # the validators refuse before any I/O; test_refusals runs in both
    "test_quality",
    "test_settings",
)


def _io_independent(definition: pytest.Function) -> bool:
    if definition.get_closest_marker("io_independent") is not None:
        return True
    path = definition.path
    return path.parent.name == "unit" or path.stem.startswith(IO_INDEPENDENT_MODULES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One switch for both I/O modes: ``io_mode`` (an autouse fixture) is parametrized for
    every test but the I/O-independent ones."""
    if "io_mode" not in metafunc.fixturenames or _io_independent(metafunc.definition):
        return
    modes = IO_MODES
    if metafunc.definition.get_closest_marker("threads_only") is not None:
        modes = ("threads",)
    metafunc.parametrize("io_mode", modes, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs a Consul agent (through any fixture) is marked ``consul``."""
    for item in items:
        if "consul_bin" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.consul)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries the selected tests need now, outside any test's timeout."""
    needed = {
        kind
        for item in session.items
        for kind, fixture in _KINDS.items()
        if fixture in getattr(item, "fixturenames", ())
    }
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for kind in sorted(needed):
        found = _lookup(kind, build=False)
        if isinstance(found, NotBuiltYet):
            if reporter is not None:
                reporter.write_line(f"harness: building {kind} with scripts/{kind}-bin (minutes)")
            found = _lookup(kind, build=True)
        # -q hides the header; the versions in use are printed here then (CI runs -q).
        if reporter is not None and kind not in _reported:
            reporter.write_line(_describe(kind, found))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for proc in harness.live_processes():
            report.sections.append(
                (f"{proc.kind} log tail: {proc.name}", f"{proc.describe()}\n{proc.log_tail(40)}")
            )
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    harness.stop_all()


# ---- harness fixtures --------------------------------------------------------------------
@pytest.fixture(scope="session")
def consul_bin() -> str:
    return _binary("consul")


@pytest.fixture(scope="session")
def toxiproxy_bin() -> str:
    return _binary("toxiproxy")


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data dirs and logs of session-wide processes (kept by pytest for post-mortems)."""
    return tmp_path_factory.mktemp("harness")


def _started(agent: ConsulAgent) -> ConsulAgent:
    try:
        agent.start()
    except BaseException:
        agent.close()
        raise
    return agent


@pytest.fixture(scope="session")
def consul_agent(consul_bin: str, harness_dir: Path) -> Iterator[ConsulAgent]:
    agent = _started(ConsulAgent(consul_bin, name="shared-dev", base_dir=harness_dir))
    yield agent
    agent.close()


@pytest.fixture
def fresh_consul_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    agent = _started(ConsulAgent(consul_bin, name="fresh-dev", base_dir=tmp_path))
    yield agent
    agent.close()


@pytest.fixture(scope="session")
def acl_agent(consul_bin: str, harness_dir: Path) -> Iterator[AclConsulAgent]:
    agent = _started(AclConsulAgent(consul_bin, name="shared-acl", base_dir=harness_dir))
    assert isinstance(agent, AclConsulAgent)
    yield agent
    agent.close()


@pytest.fixture
def consul_cluster(consul_bin: str, tmp_path: Path) -> Iterator[ConsulCluster]:
    cluster = ConsulCluster(consul_bin, base_dir=tmp_path).start()
    yield cluster
    cluster.close()


@pytest.fixture
def two_datacenters(consul_bin: str, tmp_path: Path) -> Iterator[TwoDatacenters]:
    federation = TwoDatacenters(consul_bin, base_dir=tmp_path).start()
    yield federation
    federation.close()


@pytest.fixture(scope="session")
def toxiproxy_server(toxiproxy_bin: str, harness_dir: Path) -> Iterator[ToxiproxyServer]:
    server = ToxiproxyServer(toxiproxy_bin, base_dir=harness_dir)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    yield server
    server.close()


@pytest.fixture
def toxiproxy_for(toxiproxy_server: ToxiproxyServer) -> Iterator[Callable[[Any], Toxiproxy]]:
    """Factory: ``toxiproxy_for(agent_or_"host:port") -> Toxiproxy``, removed after the test."""
    made: list[Toxiproxy] = []

    def make(upstream: Any) -> Toxiproxy:
        proxy = Toxiproxy(upstream, server=toxiproxy_server)
        made.append(proxy)
        return proxy

    yield make
    for proxy in reversed(made):
        proxy.close()


@pytest.fixture
def toxiproxy(toxiproxy_for: Callable[[Any], Toxiproxy], consul_agent: ConsulAgent) -> Toxiproxy:
    """A toxiproxy proxy in front of the shared ``consul_agent``."""
    return toxiproxy_for(consul_agent)


@pytest.fixture
def counting_proxy_for() -> Iterator[Callable[[Any], CountingProxy]]:
    """Factory: ``counting_proxy_for(agent_or_"host:port") -> CountingProxy`` (started)."""
    made: list[CountingProxy] = []

    def make(upstream: Any) -> CountingProxy:
        proxy = CountingProxy(upstream).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in reversed(made):
        proxy.close()


@pytest.fixture
def counting_proxy(
    counting_proxy_for: Callable[[Any], CountingProxy], consul_agent: ConsulAgent
) -> CountingProxy:
    """A counting TCP proxy in front of the shared ``consul_agent``."""
    return counting_proxy_for(consul_agent)


# ---- product fixtures below ----

# Fixtures for the product tests. Each handler made here is shut down at the end of its test;
# ``clean_consul_env`` removes every variable the settings (or python-consul2) would read, so a
# developer's shell cannot change a result.
CONSUL_ENV_VARS = (
    "CONSUL_HOST",
    "CONSUL_PORT",
    "CONSUL_SCHEME",
    "CONSUL_TOKEN",
    "CONSUL_TOKEN_FILE",
    "CONSUL_UNIX_SOCKET",
    "CONSUL_TIMEOUT",
    "CONSUL_DATACENTER",
    "CONSUL_MAX_CONCURRENT_OPERATIONS",
    "CONSUL_MAX_WAIT_SECONDS",
    "CONSUL_MAX_QUEUED_OPERATIONS",
    "CONSUL_MAX_RESPONSE_BYTES",
    "CONSUL_SHUTDOWN_GRACE_SECONDS",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
    "CONSUL_IO",
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_HTTP_AUTH",
    "CONSUL_RETRY",
    "CONSUL_BREAKER",
    "CONSUL_CHECKS",
    "CONSUL_LONG_POLL",
    "CONSUL_CACHE",
    "CONSUL_MAINTAIN",
)
_NESTED_PREFIXES = (
    "CONSUL_RETRY__",
    "CONSUL_BREAKER__",
    "CONSUL_CHECKS__",
    "CONSUL_LONG_POLL__",
    "CONSUL_CACHE__",
    "CONSUL_MAINTAIN__",
)


@pytest.fixture(autouse=True)
def io_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The I/O mode under test (``threads`` or ``asyncio``), exported as ``CONSUL_IO`` so that
    every handler the test builds runs in it; None in an I/O-independent test (the settings'
    default then applies)."""
    mode: str | None = getattr(request, "param", None)
    if mode is not None:
        monkeypatch.setenv("CONSUL_IO", mode)
    return mode


@pytest.fixture
def clean_consul_env(monkeypatch: pytest.MonkeyPatch, io_mode: str | None) -> None:
    import os

    for name in list(os.environ):
        upper = name.upper()
        if upper in CONSUL_ENV_VARS or upper.startswith(_NESTED_PREFIXES):
            monkeypatch.delenv(name)
    if io_mode is not None:
        # Every handler and ConsulSettings of the test reads it (an explicit ``io`` still wins).
        monkeypatch.setenv("CONSUL_IO", io_mode)


@pytest.fixture
async def make_handler(clean_consul_env: None) -> Any:
    """Factory: ``await make_handler(agent_or_proxy, **settings)`` -> an initialized handler."""
    from handler_consul import ConsulSettings, HandlerConsul

    made: list[HandlerConsul] = []

    async def make(target: Any, **settings: Any) -> HandlerConsul:
        handler = HandlerConsul(
            settings=ConsulSettings(host=target.host, port=target.port, **settings)
        )
        made.append(handler)
        await handler.initialize()
        return handler

    yield make
    for handler in reversed(made):
        await handler.shutdown()


@pytest.fixture
async def handler(make_handler: Any, consul_agent: ConsulAgent) -> Any:
    """An initialized handler on the shared dev agent."""
    return await make_handler(consul_agent)


@pytest.fixture
async def direct(clean_consul_env: None, io_mode: str | None) -> Any:
    """Factory: ``direct(target, **settings) -> support.Direct``: the handler's client over
    its transport in the test's I/O mode, without the handler; closed when the test ends."""
    from support import Direct

    from handler_consul import ConsulSettings

    made: list[Direct] = []

    def make(target: Any, **settings: Any) -> Direct:
        client = Direct(
            ConsulSettings(host=target.host, port=target.port, **settings), io_mode or "threads"
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
    await asyncio.sleep(0)  # the asyncio transport closes its sockets from a loop callback


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port reserved for this test on which nothing listens (connection refused)."""
    (port,) = harness.allocate_ports(1)
    yield port
    harness.release_ports([port])


@pytest.fixture
async def make_tuned_handler(clean_consul_env: None) -> Any:
    """Factory: ``await make_tuned_handler(target, *, init=True, clock=, rng=, sleep=, **over)``.

    The handler is initialized with ``support.tuned(target, **over)``: a 2 s timeout, four
    workers, backoff in milliseconds and a breaker threshold of 100 (nested overrides merge).
    ``clock``, ``rng`` and ``sleep`` go to the constructor; ``init=False`` leaves it to the test.
    """
    from support import tuned

    from handler_consul import HandlerConsul

    made: list[HandlerConsul] = []

    async def make(target: Any, *, init: bool = True, **kwargs: Any) -> HandlerConsul:
        ctor = {k: kwargs.pop(k) for k in ("clock", "rng", "sleep") if k in kwargs}
        handler = HandlerConsul(**ctor)
        made.append(handler)
        if init:
            await handler.initialize(tuned(target, **kwargs))
        return handler

    yield make
    for handler in made:
        await asyncio.wait_for(handler.shutdown(), 10)


def _private_agent(
    consul_bin: str, tmp_path: Path, name: str, limits: dict[str, int]
) -> Iterator[ConsulAgent]:
    """A private dev agent with the given ``limits`` block, stopped when the test ends."""
    agent = ConsulAgent(consul_bin, name=name, base_dir=tmp_path, extra_config={"limits": limits})
    try:
        agent.start()
        yield agent
    finally:
        agent.close()


@pytest.fixture
def small_value_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    """A private dev agent whose ``kv_max_value_size`` is 1 KiB: a larger value earns a 413."""
    yield from _private_agent(consul_bin, tmp_path, "small-kv", {"kv_max_value_size": 1024})


@pytest.fixture
def two_connection_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    """A private dev agent that answers 429 to a client IP holding more than two connections."""
    yield from _private_agent(consul_bin, tmp_path, "two-conns", {"http_max_conns_per_client": 2})


@pytest.fixture
def debug_logs() -> Iterator[Any]:
    """A ``support.LogCollector`` of every record from every logger, ``handler_consul`` at DEBUG."""
    from support import install_log_collector

    collector, undo = install_log_collector(logging.DEBUG)
    try:
        yield collector
    finally:
        undo()


@pytest.fixture
def info_logs() -> Iterator[Any]:
    """A ``support.LogCollector`` of every record, with ``handler_consul`` at INFO."""
    from support import install_log_collector

    collector, undo = install_log_collector(logging.INFO)
    try:
        yield collector
    finally:
        undo()


@pytest.fixture
def gates() -> Iterator[Any]:
    """``support.Gates`` that hold pool workers; every gate is released when the test ends."""
    from support import Gates

    made = Gates()
    yield made
    made.release_all()


@pytest.fixture
def make_pool() -> Iterator[Callable[..., Any]]:
    """Factory: ``make_pool(workers, *, max_wait=5.0, max_queued=1000, name=...)`` -> a
    ``BoundedThreadPool``, closed when the test ends."""
    from handler_consul._pool import BoundedThreadPool

    made: list[BoundedThreadPool] = []

    def make(
        workers: int,
        *,
        max_wait: float = 5.0,
        max_queued: int = 1000,
        name: str = "handler-consul-pooltest",
    ) -> BoundedThreadPool:
        pool = BoundedThreadPool(
            workers, max_wait_seconds=max_wait, max_queued=max_queued, name=name
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


# ---- misbehaving servers (tests/harness/misbehaving.py) ----------------------------------
# Thread-based HTTP servers on 127.0.0.1 that misbehave on purpose, for transport tests:
#
# - ``trickle_headers_server``: reads a request, then header bytes one every ``.interval``
#   (0.4 s) and never ends the header block.
# - ``trickle_body_server``: full headers with ``Content-Length: 100000000``, then one body
#   byte every ``.interval``.
# - ``early_hints_server``: a 1xx before every final answer (``.mode``: "103", "100",
#   "103-only", "100-only"); final bodies are ``{"n": <sequence>}``.
# - ``oversized_body_server``: a 64 MiB body (``.size``), Content-Length or ``.chunked``.
# - ``forward_then_drop_for(agent_or_"host:port", **kwargs) -> ForwardThenDrop``: the agent
#   applies each request, the proxy withholds the answer (``.drop_next(n)``, ``.pass_through()``).
#
# Settings are attributes read per request, so a test changes them on the live server. Each
# server is closed at teardown, and teardown fails if any of its threads outlived close().
def _closed_cleanly(server: Any) -> None:
    server.close()
    leftover = server.alive_threads
    assert not leftover, f"{server!r} left threads running after close(): {leftover}"


@pytest.fixture
def trickle_headers_server() -> Iterator[harness.TrickleHeaders]:
    server = harness.TrickleHeaders().start()
    yield server
    _closed_cleanly(server)


@pytest.fixture
def trickle_body_server() -> Iterator[harness.TrickleBody]:
    server = harness.TrickleBody().start()
    yield server
    _closed_cleanly(server)


@pytest.fixture
def early_hints_server() -> Iterator[harness.EarlyHints]:
    server = harness.EarlyHints().start()
    yield server
    _closed_cleanly(server)


@pytest.fixture
def oversized_body_server() -> Iterator[harness.OversizedBody]:
    server = harness.OversizedBody().start()
    yield server
    _closed_cleanly(server)


@pytest.fixture
def forward_then_drop_for() -> Iterator[Callable[..., harness.ForwardThenDrop]]:
    """Factory: ``forward_then_drop_for(agent_or_"host:port", **kwargs) -> ForwardThenDrop``
    (started; kwargs as ``ForwardThenDrop``: ``drop=None``, ``close_with="rst"``)."""
    made: list[harness.ForwardThenDrop] = []

    def make(upstream: Any, **kwargs: Any) -> harness.ForwardThenDrop:
        proxy = harness.ForwardThenDrop(upstream, **kwargs).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in reversed(made):
        proxy.close()
    for proxy in made:
        _closed_cleanly(proxy)


# ---- end of misbehaving servers ----------------------------------------------------------


@pytest.fixture(params=["default-loop", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Runs a scenario to completion on asyncio's default loop, then on uvloop (the asyncio
    transport's tests)."""
    import uvloop

    runner: Callable[[Coroutine[Any, Any, Any]], Any] = (
        asyncio.run if request.param == "default-loop" else uvloop.run
    )
    return runner
