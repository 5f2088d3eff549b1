"""python-consul2's API over our transport, wired from the transport alone.

``consul_base.Consul.__init__`` reads ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_SSL``,
``CONSUL_HTTP_SSL_VERIFY`` and ``CONSUL_HTTP_TOKEN`` and lets them override what it is given,
and it constructs the legacy-ACL endpoint, which emits a DeprecationWarning. The handler's
settings already resolved those variables with the documented precedence, so the client
below never runs that constructor: it wires up only the endpoint classes the operations use.
The token lives in the transport's header and the client's own ``token`` stays ``None``, so
python-consul2 never adds a token of its own anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from handler_consul._consul import consul_base
from handler_consul._transport import ConsulTransport, HTTPStatusError
from handler_consul._transport.aio import AsyncConsulTransport

__all__ = ["ConsulClient"]


class ConsulClient(consul_base.Consul):  # type: ignore[misc]  # python-consul2 ships no types
    """The endpoints the operations use: kv, agent, status, health, catalog, session, and
    :meth:`txn`."""

    def __init__(
        self, transport: ConsulTransport | AsyncConsulTransport, *, datacenter: str | None
    ) -> None:
        # Deliberately not calling super().__init__: see the module docstring.
        self.http = transport
        self.token = None
        self.dc = datacenter
        self.consistency = "default"
        self.scheme = transport.scheme
        self.kv = consul_base.Consul.KV(self)
        self.agent = consul_base.Consul.Agent(self)
        self.status = consul_base.Consul.Status(self)
        self.health = consul_base.Consul.Health(self)
        self.catalog = consul_base.Consul.Catalog(self)
        self.session = consul_base.Consul.Session(self)

    def __repr__(self) -> str:
        return f"ConsulClient({self.http!r}, datacenter={self.dc!r})"

    def register_service(self, definition: dict[str, Any]) -> Any:
        """PUT /v1/agent/service/register with the full service definition.

        python-consul2 0.1.5's ``agent.service.register`` has no ``weights`` and drops
        falsy fields (``port=0``, ``enable_tag_override=False``), so the definition is sent
        as the handler built it. Its ``CB.bool`` would read a 404 as ``False``; a
        registration cannot legitimately 404, so that is the transport's status error.
        Returns what the transport returns (``None``, or an awaitable in asyncio mode).
        """
        path = "/v1/agent/service/register"
        return self.http.put(
            _require_ok("PUT", path), path=path, data=json.dumps(definition, separators=(",", ":"))
        )

    def health_service(
        self,
        service: str,
        *,
        tags: Sequence[str] = (),
        passing: bool = False,
        dc: str | None = None,
        near: str | None = None,
        node_meta: Mapping[str, str] | None = None,
        index: int | None = None,
        wait: str | None = None,
    ) -> Any:
        """GET /v1/health/service/<service>: ``(X-Consul-Index, entries)``.

        python-consul2's ``health.service`` takes one tag; Consul takes ``tag`` repeated
        and keeps the instances that carry every one, which is what ``tags`` means here.
        ``index`` and ``wait`` make it a blocking query.
        """
        params: list[tuple[str, Any]] = [("tag", tag) for tag in tags]
        if passing:
            params.append(("passing", "1"))
        dc = dc or self.dc
        if dc:
            params.append(("dc", dc))
        if near:
            params.append(("near", near))
        params.extend(("node-meta", f"{key}:{value}") for key, value in (node_meta or {}).items())
        if index:
            params.append(("index", index))
            if wait:
                params.append(("wait", wait))
        return self.http.get(
            consul_base.CB.json(index=True), path=f"/v1/health/service/{service}", params=params
        )

    def update_check(self, check_id: str, status: str, output: str) -> Any:
        """PUT /v1/agent/check/update/<check_id>: set a TTL check's status and output.

        The body form (rather than python-consul2's ``ttl_pass``, whose note travels in the
        query string) carries an output of any length Consul keeps. A 404 is a check the
        agent does not know: python-consul2's ``NotFound``, which says which check.
        """
        path = f"/v1/agent/check/update/{check_id}"

        def callback(response: consul_base.Response) -> bool:
            if response.code == 404:
                raise consul_base.NotFound(f"unknown check {check_id!r} on this agent")
            return _require_ok("PUT", path)(response) is None

        body = json.dumps({"Status": status, "Output": output}, separators=(",", ":"))
        return self.http.put(callback, path=path, data=body)

    def txn(self, operations: bytes) -> Any:
        """PUT /v1/txn with the operations already encoded: ``(status, body)``, where status
        is 200 (applied) or 409 (rolled back; the body says which operation failed).

        python-consul2 0.1.5's ``txn.put`` sends no ``dc`` and lets its callback raise on the
        409 that carries the answer, so the request is made here.
        """
        params = [("dc", self.dc)] if self.dc else None
        return self.http.put(_TxnAnswer(), path="/v1/txn", params=params, data=operations)


class _TxnAnswer:
    """The txn callback: Consul's 409 is an answer (a rollback), so the transport passes it
    through whole instead of raising with a shortened body."""

    accept_statuses = frozenset({409})

    def __call__(self, response: consul_base.Response) -> tuple[int, Any]:
        if response.code not in (200, 409):
            raise HTTPStatusError(response.code, response.body, method="PUT", path="/v1/txn")
        return response.code, json.loads(response.body)


def _require_ok(method: str, path: str) -> Any:
    def callback(response: consul_base.Response) -> None:
        if response.code != 200:
            raise HTTPStatusError(response.code, response.body, method=method, path=path)

    return callback
