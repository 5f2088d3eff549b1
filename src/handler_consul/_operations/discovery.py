"""consul.discover and consul.services: what the catalog knows, read through the health API.

``discover`` asks ``/v1/health/service/<name>`` (tags, passing, dc, near, node-meta) and
gives each instance in one flat shape: the service's address, else its node's; Consul's
``Weights``; and a ``status`` that is the worst of the instance's checks (node checks such as
``serfHealth`` included, as Consul's own ``passing`` filter counts them). The query itself
(:func:`health_query`) is separate from the shaping (:func:`instances`) so the discovery
cache can run the same query as a blocking one and shape what it keeps.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from handler_consul._client import ConsulClient
from handler_consul._operations.settle import settle
from handler_consul._results import (
    DiscoverResult,
    HealthStatus,
    ServiceInstance,
    ServicesResult,
)
from handler_consul._validation import Datacenter, NearNode, NodeMeta, ServiceName, Tag

__all__ = [
    "DiscoverPayload",
    "DiscoverResult",
    "ServicesPayload",
    "ServicesResult",
    "discover",
    "health_query",
    "index_of",
    "instances",
    "services",
]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
# Worst first: an instance is as healthy as its least healthy check.
_SEVERITY: dict[str, int] = {"passing": 0, "warning": 1, "critical": 2}
_STATUSES: tuple[HealthStatus, ...] = ("passing", "warning", "critical")
MAX_TAGS = 64


class DiscoverPayload(BaseModel):
    """Which instances of ``service`` to find. Every tag in ``tags`` must match."""

    model_config = _STRICT

    service: ServiceName
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    passing_only: bool = True
    datacenter: Datacenter | None = None
    near: NearNode | None = None
    node_meta: NodeMeta = Field(default_factory=dict)
    cache: bool = True

    def query_key(self) -> tuple[Any, ...]:
        """What identifies the query to Consul (``cache`` aside): one cache entry each."""
        return (
            "health",
            self.service,
            tuple(sorted(set(self.tags))),
            self.passing_only,
            self.datacenter,
            self.near,
            tuple(sorted(self.node_meta.items())),
        )


class ServicesPayload(BaseModel):
    model_config = _STRICT

    datacenter: Datacenter | None = None


def index_of(raw: Any) -> int:
    """python-consul2 hands X-Consul-Index back as the header string (or None)."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


async def health_query(
    client: ConsulClient,
    payload: DiscoverPayload,
    index: int | None = None,
    wait: str | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """``(X-Consul-Index, raw entries)`` of the health query ``payload`` describes."""
    raw_index, entries = await settle(
        client.health_service(
            payload.service,
            tags=payload.tags,
            passing=payload.passing_only,
            dc=payload.datacenter,
            near=payload.near,
            node_meta=payload.node_meta,
            index=index,
            wait=wait,
        )
    )
    return index_of(raw_index), list(entries or [])


def _status(checks: list[dict[str, Any]] | None) -> HealthStatus:
    worst = 0
    for check in checks or ():
        # A status Consul may add later is not taken for healthy.
        worst = max(worst, _SEVERITY.get(check.get("Status", ""), 2))
    return _STATUSES[worst]


def _instance(entry: dict[str, Any]) -> ServiceInstance:
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    weights = service.get("Weights") or {}
    return {
        "id": service.get("ID", ""),
        "service": service.get("Service", ""),
        "address": service.get("Address") or node.get("Address", ""),
        "port": int(service.get("Port") or 0),
        "tags": list(service.get("Tags") or []),
        "meta": dict(service.get("Meta") or {}),
        "weights": {
            "passing": int(weights.get("Passing", 1)),
            "warning": int(weights.get("Warning", 1)),
        },
        "node": node.get("Node", ""),
        "datacenter": node.get("Datacenter", ""),
        "status": _status(entry.get("Checks")),
    }


def instances(entries: list[dict[str, Any]]) -> list[ServiceInstance]:
    """Consul's health entries in the flat instance shape, in Consul's order."""
    return [_instance(entry) for entry in entries]


async def discover(client: ConsulClient, payload: DiscoverPayload) -> DiscoverResult:
    """One uncached read: what Consul says now."""
    index, entries = await health_query(client, payload)
    source: Literal["consul"] = "consul"
    return {
        "service": payload.service,
        "instances": instances(entries),
        "index": index,
        "source": source,
        "age_seconds": 0.0,
    }


async def services(client: ConsulClient, payload: ServicesPayload) -> ServicesResult:
    raw_index, data = await settle(client.catalog.services(dc=payload.datacenter))
    return {
        "services": {name: list(tags or []) for name, tags in (data or {}).items()},
        "index": index_of(raw_index),
    }
