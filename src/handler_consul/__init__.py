"""handler-consul: an asyncio effect handler for HashiCorp Consul.

``HandlerConsul.execute(envelope)`` runs consul.register, consul.deregister, consul.kv_get
and consul.kv_put through a bounded thread pool behind a circuit breaker. This module is the
public API; every other module of the package is private. See README.md.
"""

import logging

from handler_consul._breaker import BreakerState, CircuitBreaker, MixinAsyncCircuitBreaker
from handler_consul._envelope import Envelope, HandlerResponse
from handler_consul._errors import (
    ErrorContext,
    InfraAuthenticationError,
    InfraConfigurationError,
    InfraConnectionError,
    InfraConsulError,
    InfraError,
    InfraTimeoutError,
    InfraUnavailableError,
    InfraValidationError,
)
from handler_consul._handler import HandlerConsul
from handler_consul._log import CorrelationIdFilter
from handler_consul._results import (
    DeregisterResult,
    KvEntry,
    KvGetKeysResult,
    KvGetRecurseResult,
    KvGetResult,
    KvPutResult,
    RegisterResult,
)
from handler_consul._settings import BreakerSettings, ConsulSettings, RetrySettings
from handler_consul._version import __version__

# A library configures no logging; the application decides where records go.
logging.getLogger("handler_consul").addHandler(logging.NullHandler())

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "ConsulSettings",
    "CorrelationIdFilter",
    "DeregisterResult",
    "Envelope",
    "ErrorContext",
    "HandlerConsul",
    "HandlerResponse",
    "InfraAuthenticationError",
    "InfraConfigurationError",
    "InfraConnectionError",
    "InfraConsulError",
    "InfraError",
    "InfraTimeoutError",
    "InfraUnavailableError",
    "InfraValidationError",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutResult",
    "MixinAsyncCircuitBreaker",
    "RegisterResult",
    "RetrySettings",
    "__version__",
]
