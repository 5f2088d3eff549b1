"""Consul's health API read once and shaped once, for everything that finds instances.

``consul.discover``, ``consul.endpoint``, the discovery cache and ``consul.watch`` on a
service all read ``GET /v1/health/service/<name>`` through :func:`health_read` and get its
entries as the same flat instances: the service's address, else its node's; Consul's
``Weights``; and a ``status`` that is the worst of the instance's checks (node checks such as
``serfHealth`` included, as Consul's own ``passing`` filter counts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from handler_consul._operations.settle import settle
from handler_consul._results import HealthStatus, ServiceInstance

__all__ = ["health_read", "index_of", "instances"]

# Worst last: an instance is as healthy as its least healthy check.
_SEVERITY: dict[str, int] = {"passing": 0, "warning": 1, "critical": 2}
_STATUSES: tuple[HealthStatus, ...] = ("passing", "warning", "critical")


def index_of(raw: Any) -> int:
    """python-consul2 hands X-Consul-Index back as the header string (or None)."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


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


def instances(entries: Sequence[dict[str, Any]]) -> list[ServiceInstance]:
    """Consul's health entries in the flat instance shape, in Consul's order."""
    return [_instance(entry) for entry in entries]


async def health_read(
    client: Any,
    service: str,
    *,
    tags: Sequence[str] = (),
    passing: bool = False,
    dc: str | None = None,
    near: str | None = None,
    node_meta: Mapping[str, str] | None = None,
    index: int | None = None,
    wait: str | None = None,
) -> tuple[int, list[ServiceInstance]]:
    """``(X-Consul-Index, instances)``; with ``index`` (above 0) and ``wait`` a blocking
    query. ``client`` is a ConsulClient (typed loosely: this module sits below it)."""
    raw_index, entries = await settle(
        client.health_service(
            service,
            tags=tags,
            passing=passing,
            dc=dc,
            near=near,
            node_meta=node_meta,
            index=index or None,
            wait=wait,
        )
    )
    return index_of(raw_index), instances(entries or [])
