"""python-consul2's API over our transport, built from ConsulSettings and nothing else.

``consul.base.Consul.__init__`` reads ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_SSL``,
``CONSUL_HTTP_SSL_VERIFY`` and ``CONSUL_HTTP_TOKEN`` and lets them override what it is given,
and it constructs the legacy-ACL endpoint, which emits a DeprecationWarning. The handler's
settings already resolved those variables with the documented precedence, so the client
below never runs that constructor: it wires up only the endpoint classes the operations use.
The token lives in the transport's header and the client's own ``token`` stays ``None``, so
python-consul2 never adds a token of its own anywhere.
"""

from __future__ import annotations

import json
from typing import Any

import consul.base

from handler_consul.settings import ConsulSettings
from handler_consul.transport import ConsulTransport

__all__ = ["ConsulClient", "build_client"]


class ConsulClient(consul.base.Consul):  # type: ignore[misc]  # python-consul2 ships no types
    """The endpoints the handler uses: kv, agent, status, catalog."""

    def __init__(self, transport: ConsulTransport, *, datacenter: str | None) -> None:
        # Deliberately not calling super().__init__: see the module docstring.
        self.http = transport
        self.token = None
        self.dc = datacenter
        self.consistency = "default"
        self.scheme = transport.scheme
        self.kv = consul.base.Consul.KV(self)
        self.agent = consul.base.Consul.Agent(self)
        self.status = consul.base.Consul.Status(self)
        self.catalog = consul.base.Consul.Catalog(self)

    def __repr__(self) -> str:
        return f"ConsulClient({self.http!r}, datacenter={self.dc!r})"

    def register_service(self, definition: dict[str, Any]) -> bool:
        """PUT /v1/agent/service/register with the full service definition.

        python-consul2 0.1.5's ``agent.service.register`` has no ``weights`` and drops
        falsy fields (``port=0``, ``enable_tag_override=False``), so the definition is sent
        as the handler built it, through python-consul2's own response handling.
        """
        result: bool = self.http.put(
            consul.base.CB.bool(),
            path="/v1/agent/service/register",
            data=json.dumps(definition, separators=(",", ":")),
        )
        return result


def build_client(settings: ConsulSettings) -> ConsulClient:
    """A client whose every request goes to the configured address with the configured token."""
    token = settings.token.get_secret_value() if settings.token is not None else None
    transport = ConsulTransport(
        host=settings.host,
        port=settings.port,
        scheme=settings.scheme,
        timeout=settings.timeout_seconds,
        pool_size=settings.max_concurrent_operations,
        token=token,
        verify=settings.verify_tls,
        cacert=settings.cacert,
        cert=settings.client_cert,
        key=settings.client_key,
    )
    return ConsulClient(transport, datacenter=settings.datacenter)
