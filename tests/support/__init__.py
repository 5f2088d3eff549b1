"""Helpers shared by the tests. Import them from here: ``from support import kv_put, uniq``.

Test code, not product code. tests/ is on sys.path through tests/conftest.py, which also holds
the fixtures (real agents, proxies, handlers, log collectors, pools). The modules:

- ``envelopes``: envelope builders (``envelope``, ``kv_put``, ``kv_get``, ``with_deadline``,
  ``with_correlation_id``), unique names (``uniq``, ``unique_key``), and the exact error a
  test expects (``expected_context``, ``assert_json_ready``, ``exception_chain``);
- ``handlers``: the fixtures' factory types, ``FAST_RETRY``, ``tuned`` settings (retries,
  deadlines, backpressure), ``settings_for``, ``execute_ok``, what describe() shows
  (``breaker_snapshot``, ``pool_snapshot``, ``assert_nothing_counted``), ``RecordingSleep``,
  and proxies that count or record requests;
- ``observe``: event-loop lag (``LagTicker``, ``assert_loop_kept_ticking``), worker threads
  (``ThreadSampler``), breaker transitions, log records, ``wait_until`` and ``in_thread``;
- ``faults``: the steady load, the watch kept while a fault runs, and the fault summary line;
- ``secrets``: sentinel tokens and the checks that none shows anywhere;
- ``fakes`` and ``breakers``: a fake clock, RNG and transition log, and a bare breaker driven
  into each state (the unit tests);
- ``pool``: gates that hold a BoundedThreadPool's workers until the test releases them;
- ``cli``: the CLI as a subprocess;
- ``servers``: stand-in HTTP servers whose answers a test scripts;
- ``direct``: the handler's client and transport without the handler, in either I/O mode.
"""

from __future__ import annotations

from .breakers import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    acquire,
    fail,
    half_open,
    make_breaker,
    open_breaker,
)
from .cli import CLI, agent_env, clean_env, cli
from .direct import Direct, DirectFor
from .envelopes import (
    assert_json_ready,
    envelope,
    exception_chain,
    expected_context,
    kv_get,
    kv_put,
    uniq,
    unique_key,
    with_correlation_id,
    with_deadline,
)
from .fakes import FakeClock, FixedRng, TransitionLog
from .faults import (
    FaultSummary,
    Load,
    Outcome,
    Watch,
    emit,
    fast_rejections,
    is_breaker_rejection,
    kv_mix,
    puts,
    read_back,
    summarize,
    unique_prefix,
    watching,
)
from .handlers import (
    FAST_RETRY,
    OVERRUN,
    TUNED,
    CountFor,
    MakeHandler,
    ProxyFor,
    RecordingSleep,
    assert_nothing_counted,
    breaker_snapshot,
    counting_through_toxiproxy,
    execute_ok,
    pool_snapshot,
    recording_proxy,
    requests_to,
    settings_for,
    tuned,
)
from .observe import (
    LAG_MAX_MS,
    LAG_P99_MS,
    LagTicker,
    LogCollector,
    ThreadSampler,
    TransitionRecorder,
    assert_loop_kept_ticking,
    in_thread,
    install_log_collector,
    wait_until,
    worker_threads,
)
from .pool import EVENT_BOUND, Concurrency, Gates, MakePool, held
from .secrets import (
    NEEDLES,
    SENTINEL,
    SENTINEL_TEXT,
    UNKNOWN_UUID,
    assert_error_clean,
    assert_introspection_clean,
    assert_logs_clean,
    assert_no_secret,
)
from .servers import scripted_server

__all__ = [
    "CLI",
    "CLOSED",
    "EVENT_BOUND",
    "FAST_RETRY",
    "HALF_OPEN",
    "LAG_MAX_MS",
    "LAG_P99_MS",
    "NEEDLES",
    "OPEN",
    "OVERRUN",
    "SENTINEL",
    "SENTINEL_TEXT",
    "TUNED",
    "UNKNOWN_UUID",
    "Concurrency",
    "CountFor",
    "Direct",
    "DirectFor",
    "FakeClock",
    "FaultSummary",
    "FixedRng",
    "Gates",
    "LagTicker",
    "Load",
    "LogCollector",
    "MakeHandler",
    "MakePool",
    "Outcome",
    "ProxyFor",
    "RecordingSleep",
    "ThreadSampler",
    "TransitionLog",
    "TransitionRecorder",
    "Watch",
    "acquire",
    "agent_env",
    "assert_error_clean",
    "assert_introspection_clean",
    "assert_json_ready",
    "assert_logs_clean",
    "assert_loop_kept_ticking",
    "assert_no_secret",
    "assert_nothing_counted",
    "breaker_snapshot",
    "clean_env",
    "cli",
    "counting_through_toxiproxy",
    "emit",
    "envelope",
    "exception_chain",
    "execute_ok",
    "expected_context",
    "fail",
    "fast_rejections",
    "half_open",
    "held",
    "in_thread",
    "install_log_collector",
    "is_breaker_rejection",
    "kv_get",
    "kv_mix",
    "kv_put",
    "make_breaker",
    "open_breaker",
    "pool_snapshot",
    "puts",
    "read_back",
    "recording_proxy",
    "requests_to",
    "scripted_server",
    "settings_for",
    "summarize",
    "tuned",
    "uniq",
    "unique_key",
    "unique_prefix",
    "wait_until",
    "watching",
    "with_correlation_id",
    "with_deadline",
    "worker_threads",
]
