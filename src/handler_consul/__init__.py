"""handler-consul: an asyncio effect handler for HashiCorp Consul.

``HandlerConsul.execute(envelope)`` runs the Consul operations of its dispatch table (service
registration, KV reads and writes, transactions, sessions) through a bounded thread pool
behind a circuit breaker. This module is the
public API; every other module of the package is private. See README.md.

The names below are imported on first access (PEP 562): importing the handler pulls in
pydantic, pydantic-settings and python-consul2 (with requests), several hundred milliseconds
that ``handler-consul --help`` and any other command that does not run an envelope should not
pay. ``from handler_consul import X`` and ``from handler_consul import *`` work as before.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from handler_consul._version import __version__

if TYPE_CHECKING:
    # What type checkers see; at run time __getattr__ below imports each on first use.
    from handler_consul._breaker import BreakerState, CircuitBreaker, MixinAsyncCircuitBreaker
    from handler_consul._envelope import Envelope, HandlerResponse
    from handler_consul._errors import (
        ErrorContext,
        InfraAuthenticationError,
        InfraConfigurationError,
        InfraConflictError,
        InfraConnectionError,
        InfraConsulError,
        InfraError,
        InfraLockTimeoutError,
        InfraTimeoutError,
        InfraUnavailableError,
        InfraValidationError,
    )
    from handler_consul._handler import HandlerConsul
    from handler_consul._locks import Lease
    from handler_consul._log import CorrelationIdFilter
    from handler_consul._results import (
        CheckUpdateResult,
        DeregisterResult,
        DiscoverResult,
        EndpointResult,
        InstanceWeights,
        KvDeleteResult,
        KvEntry,
        KvGetKeysResult,
        KvGetRecurseResult,
        KvGetResult,
        KvPutResult,
        RegisterResult,
        ServiceInstance,
        ServicesResult,
        SessionCreateResult,
        SessionDestroyResult,
        SessionRenewResult,
        TxnAppliedResult,
        TxnError,
        TxnRolledBackResult,
        WatchResult,
    )
    from handler_consul._settings import BreakerSettings, ConsulSettings, RetrySettings

# A library configures no logging; the application decides where records go.
logging.getLogger("handler_consul").addHandler(logging.NullHandler())

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "CheckUpdateResult",
    "CircuitBreaker",
    "ConsulSettings",
    "CorrelationIdFilter",
    "DeregisterResult",
    "DiscoverResult",
    "EndpointResult",
    "Envelope",
    "ErrorContext",
    "HandlerConsul",
    "HandlerResponse",
    "InfraAuthenticationError",
    "InfraConfigurationError",
    "InfraConflictError",
    "InfraConnectionError",
    "InfraConsulError",
    "InfraError",
    "InfraLockTimeoutError",
    "InfraTimeoutError",
    "InfraUnavailableError",
    "InfraValidationError",
    "InstanceWeights",
    "KvDeleteResult",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutResult",
    "Lease",
    "MixinAsyncCircuitBreaker",
    "RegisterResult",
    "RetrySettings",
    "ServiceInstance",
    "ServicesResult",
    "SessionCreateResult",
    "SessionDestroyResult",
    "SessionRenewResult",
    "TxnAppliedResult",
    "TxnError",
    "TxnRolledBackResult",
    "WatchResult",
    "__version__",
]

# Public name -> the private module that defines it (must match the TYPE_CHECKING block).
_HOMES: dict[str, str] = {
    "BreakerState": "handler_consul._breaker",
    "CircuitBreaker": "handler_consul._breaker",
    "MixinAsyncCircuitBreaker": "handler_consul._breaker",
    "Envelope": "handler_consul._envelope",
    "HandlerResponse": "handler_consul._envelope",
    "ErrorContext": "handler_consul._errors",
    "InfraAuthenticationError": "handler_consul._errors",
    "InfraConfigurationError": "handler_consul._errors",
    "InfraConnectionError": "handler_consul._errors",
    "InfraConsulError": "handler_consul._errors",
    "InfraError": "handler_consul._errors",
    "InfraConflictError": "handler_consul._errors",
    "InfraLockTimeoutError": "handler_consul._errors",
    "InfraTimeoutError": "handler_consul._errors",
    "InfraUnavailableError": "handler_consul._errors",
    "InfraValidationError": "handler_consul._errors",
    "HandlerConsul": "handler_consul._handler",
    "Lease": "handler_consul._locks",
    "CorrelationIdFilter": "handler_consul._log",
    "CheckUpdateResult": "handler_consul._results",
    "DeregisterResult": "handler_consul._results",
    "DiscoverResult": "handler_consul._results",
    "EndpointResult": "handler_consul._results",
    "InstanceWeights": "handler_consul._results",
    "KvEntry": "handler_consul._results",
    "KvGetKeysResult": "handler_consul._results",
    "KvGetRecurseResult": "handler_consul._results",
    "KvGetResult": "handler_consul._results",
    "KvPutResult": "handler_consul._results",
    "RegisterResult": "handler_consul._results",
    "ServiceInstance": "handler_consul._results",
    "ServicesResult": "handler_consul._results",
    "KvDeleteResult": "handler_consul._results",
    "SessionCreateResult": "handler_consul._results",
    "SessionDestroyResult": "handler_consul._results",
    "SessionRenewResult": "handler_consul._results",
    "TxnAppliedResult": "handler_consul._results",
    "TxnError": "handler_consul._results",
    "TxnRolledBackResult": "handler_consul._results",
    "WatchResult": "handler_consul._results",
    "BreakerSettings": "handler_consul._settings",
    "ConsulSettings": "handler_consul._settings",
    "RetrySettings": "handler_consul._settings",
}

# Hidden from type checkers on purpose: a module-level __getattr__ would make mypy accept
# any attribute of the package (a typo included) as Any; the imports above type the real ones.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later lookups are plain module attributes
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
