"""What ``initialize()`` builds from the settings, and how it is taken apart again.

settings → SSL context → transport → client → pool → retry budget → :class:`Attempts`.
A runtime is replaced as a whole on re-initialize: envelopes admitted before hold a reference
to the old one and finish on it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from handler_consul._client import ConsulClient
from handler_consul._clock import Clock, Sleep
from handler_consul._errors import (
    ContextFields,
    ErrorContext,
    InfraConfigurationError,
    InfraError,
)
from handler_consul._operations import call_leader
from handler_consul._pool import BoundedThreadPool
from handler_consul._retry import Attempts, RetryBudget
from handler_consul._settings import ConsulSettings
from handler_consul._translate import translate
from handler_consul._transport import ConsulTransport, TransportConfig
from handler_consul._validation import DEFAULT_CHECK_POLICY, CheckPolicy

__all__ = ["Runtime", "build_client", "build_runtime"]

_UNCOUNTED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


@dataclass(slots=True)
class Runtime:
    """Everything initialize() builds; replaced as a whole on re-initialize."""

    settings: ConsulSettings
    transport: ConsulTransport
    client: ConsulClient
    pool: BoundedThreadPool
    attempts: Attempts
    # Kept out of repr: traceback renderers (Sentry, --showlocals) repr every frame local.
    token: str | None = field(repr=False)
    target: str = ""  # the breaker name, computed once rather than per envelope
    check_policy: CheckPolicy = DEFAULT_CHECK_POLICY  # likewise, from the settings
    disposed: bool = False

    async def probe_leader(self, fields: ContextFields) -> tuple[str, InfraError | None]:
        """GET /v1/status/leader in the pool: the leader's address, or the translated error."""
        timeout = self.settings.timeout_seconds
        try:
            deadline = time.monotonic() + timeout
            leader = await self.pool.run(call_leader, self.client, deadline, timeout=timeout)
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
        self.pool.close()
        self.transport.close()


def build_runtime(
    settings: ConsulSettings,
    *,
    clock: Clock,
    rng: Callable[[], float],
    sleep: Sleep | None,
) -> Runtime:
    """Build every resource; a bad TLS file is an InfraConfigurationError naming its setting."""
    token = settings.token.get_secret_value() if settings.token is not None else None
    client = build_client(settings)
    pool = BoundedThreadPool(
        settings.max_concurrent_operations,
        max_wait_seconds=settings.effective_max_wait_seconds,
        max_queued=settings.max_queued_operations,
    )
    retry = settings.retry
    budget = RetryBudget(
        ratio=retry.budget_ratio, min_retries_per_second=retry.budget_min_per_second, clock=clock
    )
    attempts = Attempts(pool, client, retry, budget, token=token, clock=clock, rng=rng, sleep=sleep)
    return Runtime(
        settings,
        client.http,
        client,
        pool,
        attempts,
        token,
        settings.breaker_name,
        settings.check_policy,
    )


def build_client(settings: ConsulSettings) -> ConsulClient:
    """python-consul2's API over a transport that goes only to the configured address."""
    token = settings.token.get_secret_value() if settings.token is not None else None
    context = _ssl_context(settings) if settings.scheme == "https" else None
    config = TransportConfig(
        host=settings.host,
        port=settings.port,
        scheme=settings.scheme,
        timeout=settings.timeout_seconds,
        max_response_bytes=settings.max_response_bytes,
        verify=settings.verify_tls,
        cacert=settings.cacert,
        cert=settings.client_cert,
        key=settings.client_key,
    )
    transport = ConsulTransport(
        config, pool_size=settings.max_concurrent_operations, token=token, ssl_context=context
    )
    return ConsulClient(transport, datacenter=settings.datacenter)


def _ssl_context(settings: ConsulSettings) -> ssl.SSLContext:
    """The TLS context, or InfraConfigurationError naming the file setting that failed.

    The error is raised from nothing: the OSError's frames would otherwise travel with it,
    and one of them holds the settings (token included) as a local.
    """
    problem: InfraConfigurationError | None = None
    setting = "cacert"
    try:
        context = ssl.create_default_context(cafile=settings.cacert)
        if not settings.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if settings.client_cert:
            setting = "client_cert"
            context.load_cert_chain(settings.client_cert, settings.client_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        problem = InfraConfigurationError(
            f"invalid Consul setting {setting!r}: cannot load it ({reason})",
            context=ErrorContext(category="configuration", field=setting),
        )
    if problem is not None:
        raise problem
    return context
