"""What ``initialize()`` builds from the settings, and how it is taken apart again.

settings → token (from a token file, read now) → SSL context → transport → client → pool →
retry budget → :class:`Attempts`. ``io`` picks the pair the rest is built on: a blocking
transport under a pool of worker threads, or an asyncio transport under a bulkhead on the loop
(docs/patterns/io_modes.md). A runtime is replaced as a whole on re-initialize:
envelopes admitted before hold a reference to the old one and finish on it, and the token
file is read again, so a rotated token is picked up by the next initialize().
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Literal

from handler_consul._bulkhead import AsyncBulkhead, CallSlots
from handler_consul._cache import QueryCache
from handler_consul._check_policy import DEFAULT_CHECK_POLICY, CheckPolicy
from handler_consul._client import ConsulClient
from handler_consul._clock import Clock, Sleep
from handler_consul._errors import (
    ContextFields,
    InfraError,
)
from handler_consul._log import handler_log
from handler_consul._longpoll import MAX_WAIT_SECONDS, LongPolls
from handler_consul._operations import (
    call_leader,
    call_leader_async,
    call_operation,
    call_operation_async,
)
from handler_consul._pool import BoundedThreadPool
from handler_consul._retry import Attempts, RetryBudget
from handler_consul._settings import ConsulSettings, is_header_safe_token
from handler_consul._settings_env import configuration_error
from handler_consul._translate import translate
from handler_consul._transport import ConsulTransport, TransportConfig
from handler_consul._transport.aio import AsyncConsulTransport

__all__ = ["Runtime", "build_client", "build_runtime", "read_token"]

_UNCOUNTED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)
# A Consul token is a UUID; anything near this size is not a token file (or is /dev/zero).
_TOKEN_FILE_MAX_BYTES = 4096


@dataclass(slots=True)
class Runtime:
    """Everything initialize() builds; replaced as a whole on re-initialize."""

    settings: ConsulSettings
    transport: ConsulTransport | AsyncConsulTransport
    client: ConsulClient
    pool: CallSlots  # BoundedThreadPool (io="threads") or AsyncBulkhead (io="asyncio")
    attempts: Attempts
    # Kept out of repr: traceback renderers (Sentry, --showlocals) repr every frame local.
    token: str | None = field(repr=False)
    long_polls: LongPolls
    long_attempts: Attempts  # the same retry rules and budget, over the long-poll pool
    cache: QueryCache
    target: str = ""  # the breaker name, computed once rather than per envelope
    check_policy: CheckPolicy = DEFAULT_CHECK_POLICY  # likewise, from the settings
    disposed: bool = False
    # What the pool runs for the leader probe: call_leader in a worker, or its coroutine twin.
    leader: Callable[[ConsulClient, float], str | Awaitable[str]] = call_leader
    # Scratch space for loop-side operations that lives as long as this runtime.
    state: dict[str, Any] = field(default_factory=dict)
    # Run at the start of shutdown(), newest first, while the pools still take work.
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the handler shuts down, before its pools close (releasing
        locks, deregistering maintained services). Bounded by the shutdown grace period."""
        self._closers.append(closer)

    async def run_closers(self) -> None:
        """Every closer, newest first, all within ``shutdown_grace_seconds``; a failing one
        is logged and the rest still run."""
        closers, self._closers = self._closers[::-1], []
        if not closers:
            return

        async def run_all() -> None:
            for closer in closers:
                try:
                    await closer()
                except Exception as exc:
                    handler_log.warning(
                        "shutdown: a cleanup step failed: %s",
                        type(exc).__name__,
                        extra={"target": self.target},
                    )

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run_all(), self.settings.shutdown_grace_seconds)

    async def probe_leader(self, fields: ContextFields) -> tuple[str, InfraError | None]:
        """GET /v1/status/leader in the pool: the leader's address, or the translated error."""
        timeout = self.settings.timeout_seconds
        try:
            deadline = time.monotonic() + timeout
            leader: str = await self.pool.run(self.leader, self.client, deadline, timeout=timeout)
        except _UNCOUNTED:
            raise
        except BaseException as exc:  # translated: the caller decides whether to raise it
            return "", translate(exc, fields, attempts=1, token=self.token)
        return leader, None

    def dispose(self) -> None:
        """Refuse new calls and close idle connections; never joins a thread. Idempotent."""
        if self.disposed:
            return
        self.disposed = True
        self.attempts.closing = True
        self.long_attempts.closing = True
        self.cache.close()
        self.long_polls.close()
        self.pool.close()
        self.transport.close()


def build_runtime(
    settings: ConsulSettings,
    *,
    clock: Clock,
    rng: Callable[[], float],
    sleep: Sleep | None,
) -> Runtime:
    """Build every resource; a bad token or TLS file is an InfraConfigurationError naming its
    setting and where that was set."""
    token = read_token(settings)
    client = build_client(settings, token=token, io=settings.io)
    pool: CallSlots
    call: Callable[..., Any]
    leader: Callable[[ConsulClient, float], str | Awaitable[str]]
    if settings.io == "asyncio":
        pool = AsyncBulkhead(
            settings.max_concurrent_operations,
            max_wait_seconds=settings.effective_max_wait_seconds,
            max_queued=settings.max_queued_operations,
        )
        call, leader = call_operation_async, call_leader_async
    else:
        pool = BoundedThreadPool(
            settings.max_concurrent_operations,
            max_wait_seconds=settings.effective_max_wait_seconds,
            max_queued=settings.max_queued_operations,
        )
        call, leader = call_operation, call_leader
    retry = settings.retry
    budget = RetryBudget(
        ratio=retry.budget_ratio, min_retries_per_second=retry.budget_min_per_second, clock=clock
    )
    attempts = Attempts(
        pool, client, retry, budget, token=token, clock=clock, rng=rng, sleep=sleep, call=call
    )
    long_poll = settings.long_poll
    # Long polls keep their own thread pool and blocking transport in either io mode: a
    # blocking query holds its connection for up to its wait, under its own bound
    # (max_watches), never a slot of the operations' bulkhead (docs/patterns/io_modes.md).
    long_client = build_client(
        settings,
        token=token,
        io="threads",
        pool_size=long_poll.max_watches,
        # The transport's own cap: the longest wait Consul allows, its jitter, one timeout.
        timeout=MAX_WAIT_SECONDS * 17 / 16 + settings.timeout_seconds,
    )
    long_polls = LongPolls(long_client, long_poll, request_timeout=settings.timeout_seconds)
    long_attempts = Attempts(
        long_polls.pool,
        long_client,
        retry,
        budget,
        token=token,
        clock=clock,
        rng=rng,
        sleep=sleep,
        long_polls=True,
    )
    return Runtime(
        settings,
        client.http,
        client,
        pool,
        attempts,
        token,
        long_polls,
        long_attempts,
        QueryCache(long_polls, settings.cache),
        settings.breaker_name,
        settings.check_policy,
        leader=leader,
    )


def build_client(
    settings: ConsulSettings,
    *,
    token: str | EllipsisType | None = ...,
    io: Literal["threads", "asyncio"] = "threads",
    pool_size: int | None = None,
    timeout: float | None = None,
) -> ConsulClient:
    """python-consul2's API over a transport that goes only to the configured address.

    ``token`` is the one the caller has already read with :func:`read_token` (so a token
    file is read once per build); without it, it is read here. ``io="asyncio"`` gives a
    client whose calls are coroutines, for the event loop; the default blocks, for a worker
    thread (the runtime passes ``settings.io``; direct requests always use a thread).
    """
    if isinstance(token, EllipsisType):
        token = read_token(settings)
    context = _ssl_context(settings) if settings.scheme == "https" else None
    config = TransportConfig(
        host=settings.host,
        port=settings.port,
        scheme=settings.scheme,
        timeout=settings.timeout_seconds if timeout is None else timeout,
        max_response_bytes=settings.max_response_bytes,
        verify=settings.verify_tls,
        cacert=settings.cacert,
        cert=settings.client_cert,
        key=settings.client_key,
        unix_socket=settings.unix_socket,
        server_name=settings.tls_server_name,
    )
    transport_class = AsyncConsulTransport if io == "asyncio" else ConsulTransport
    transport = transport_class(
        config,
        pool_size=settings.max_concurrent_operations if pool_size is None else pool_size,
        token=token,
        ssl_context=context,
    )
    return ConsulClient(transport, datacenter=settings.datacenter)


def read_token(settings: ConsulSettings) -> str | None:
    """The token: the ``token`` setting, or what ``token_file`` holds, read now.

    A missing, unreadable, empty or unusable file is an InfraConfigurationError naming
    ``token_file`` and where it was set; the message never shows what the file holds.
    """
    if settings.token is not None:
        return settings.token.get_secret_value()
    if settings.token_file is None:
        return None
    token, problem = read_token_file(settings.token_file)
    if problem is not None:
        # Raised here, outside any except block: nothing chained, no OSError frames.
        raise configuration_error("token_file", settings.origin("token_file"), problem)
    return token


def shown_path(path: str) -> str:
    """How a token file is named in messages and describe(): a token pasted where its path
    should be (``CONSUL_HTTP_TOKEN_FILE=<the token>``) has no '/', and is not repeated."""
    return path if "/" in path else "the file it names"


def read_token_file(path: str) -> tuple[str | None, str | None]:
    """(token, None), or (None, why not): the reason never shows the content, nor a path
    that may be the token itself.

    Only a regular file is read, opened without blocking and read up to a cap: a FIFO with no
    writer would block the event loop for good, and /dev/zero would never end.
    """
    name = shown_path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return None, f"cannot read {name} ({exc.strerror or type(exc).__name__})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, f"{name} is not a regular file"
        data = os.read(fd, _TOKEN_FILE_MAX_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {name} ({exc.strerror or type(exc).__name__})"
    finally:
        os.close(fd)
    path = name
    if len(data) > _TOKEN_FILE_MAX_BYTES:
        return None, f"{path} is larger than a token file ({_TOKEN_FILE_MAX_BYTES} bytes)"
    # Surrounding whitespace (the newline an editor or `echo` adds) is not part of the token.
    text = data.decode("ascii", errors="replace").strip()
    if not text:
        return None, f"{path} is empty"
    if not is_header_safe_token(text):
        return None, f"{path} does not hold a token: printable ASCII without spaces"
    return text, None


def _ssl_context(settings: ConsulSettings) -> ssl.SSLContext:
    """The TLS context, or InfraConfigurationError naming the setting that failed.

    The error is raised from nothing: the OSError's frames would otherwise travel with it,
    and one of them holds the settings (token included) as a local.
    """
    setting, cafiles, problem = _ca_files(settings)
    context: ssl.SSLContext | None = None
    loading = cafiles[0] if cafiles else None
    try:
        if problem is None:
            # A CA file replaces the system store; without one, the system store is used.
            context = ssl.create_default_context(cafile=loading)
            for loading in cafiles[1:]:
                context.load_verify_locations(cafile=loading)
            if not settings.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if settings.client_cert:
                setting, loading = "client_cert", None
                context.load_cert_chain(settings.client_cert, settings.client_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        what = f"{loading} from it" if setting == "capath" else "it"
        problem = f"cannot load {what} ({reason})"
    if problem is not None or context is None:
        raise configuration_error(setting, settings.origin(setting), problem or "unusable")
    return context


def _ca_files(settings: ConsulSettings) -> tuple[str, list[str], str | None]:
    """The setting in charge, the CA files to trust (none: the system's), and any problem.

    ``cacert`` takes precedence; otherwise every file of the ``capath`` tree is a PEM
    bundle, as Consul reads CONSUL_CAPATH (OpenSSL's own capath would only find
    certificates stored under hashed names).
    """
    if settings.cacert is not None or settings.capath is None:
        return "cacert", [settings.cacert] if settings.cacert is not None else [], None
    capath = settings.capath
    if not os.path.isdir(capath):
        return "capath", [], f"{capath} is not a directory"
    found: list[str] = []
    for root, dirs, names in os.walk(capath):
        dirs.sort()  # walked in a stable order
        found.extend(os.path.join(root, name) for name in sorted(names))
    if not found:
        return "capath", [], f"{capath} holds no certificate file"
    return "capath", found, None
