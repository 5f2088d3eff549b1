"""HTTP to Consul: the transport python-consul2's endpoint classes run over, and its errors."""

from handler_consul._transport.blocking import ConsulTransport, InFlight, TransportConfig
from handler_consul._transport.errors import (
    HTTPStatusError,
    ResponseTooLarge,
    TransportConnectionError,
    TransportError,
    TransportTimeout,
)

__all__ = [
    "ConsulTransport",
    "HTTPStatusError",
    "InFlight",
    "ResponseTooLarge",
    "TransportConfig",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeout",
]
