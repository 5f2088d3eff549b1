"""HTTP to Consul: the transport python-consul2's endpoint classes run over, and its errors."""

from handler_consul._transport.blocking import ConsulTransport, TransportConfig
from handler_consul._transport.errors import (
    HTTPStatusError,
    ResponseTooLarge,
    TransportConnectionError,
    TransportError,
    TransportTimeout,
)
from handler_consul._transport.inflight import InFlight

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
