"""consul.discover, consul.endpoint and consul.services: healthy instances, found and picked.

``discover`` asks ``/v1/health/service/<name>`` (tags, passing, dc, near, node-meta) and
gives each instance in one flat shape (:mod:`.health`, shared with ``consul.watch``); the
discovery cache runs the same query as a blocking one and keeps the shaped instances.

With ``cache`` (the default) :func:`serve_discover` answers from the query cache: the first
read of a query goes to Consul through the breaker and retries, a blocking query in the
long-poll pool keeps it fresh from then on, and while Consul is unreachable the last good
answer is served with ``source: "cache"`` and its age, up to ``cache.max_staleness_seconds``.

``endpoint`` reads what ``discover`` reads (the same cache entry) and picks with the
handler's :class:`handler_consul._balance.Balancer`, so round-robin positions and the leases
``HandlerConsul.lease()`` holds are shared by every caller in the process. Its ``fallback``
(``"host:port"``) is answered when no instance is healthy, or when Consul is unreachable (a
connection error, a timeout, an open breaker) and the cache has nothing fresh enough; other
failures (a refused token, a rejected request) are not hidden behind it.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from handler_consul._balance import Balancer, Strategy
from handler_consul._client import ConsulClient
from handler_consul._errors import InfraConnectionError, InfraUnavailableError
from handler_consul._operations.effects import Effects
from handler_consul._operations.health import health_read, index_of
from handler_consul._operations.settle import settle
from handler_consul._results import (
    DiscoverResult,
    EndpointResult,
    ServiceInstance,
    ServicesResult,
)
from handler_consul._validation import (
    Datacenter,
    HostPort,
    NearNode,
    NodeMeta,
    ServiceName,
    Tag,
    split_host_port,
)

__all__ = [
    "BALANCER",
    "OUTAGES",
    "DiscoverPayload",
    "DiscoverResult",
    "EndpointPayload",
    "EndpointResult",
    "LeaseOptions",
    "ServicesPayload",
    "ServicesResult",
    "as_endpoint",
    "choose",
    "discover",
    "endpoint",
    "fallback_result",
    "health_query",
    "no_healthy_instance",
    "serve_discover",
    "serve_endpoint",
    "services",
]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
MAX_TAGS = 64
YIELD_EVERY = 8
_READS = "discovery_reads"


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
        tags, meta = self.tags, self.node_meta
        return (
            "health",
            self.service,
            tuple(sorted(set(tags))) if tags else (),
            self.passing_only,
            self.datacenter,
            self.near,
            tuple(sorted(meta.items())) if meta else (),
        )


class ServicesPayload(BaseModel):
    model_config = _STRICT

    datacenter: Datacenter | None = None


async def health_query(
    client: ConsulClient,
    payload: DiscoverPayload,
    index: int | None = None,
    wait: str | None = None,
) -> tuple[int, list[ServiceInstance]]:
    """``(X-Consul-Index, instances)`` of the health query ``payload`` describes."""
    return await health_read(
        client,
        payload.service,
        tags=payload.tags,
        passing=payload.passing_only,
        dc=payload.datacenter,
        near=payload.near,
        node_meta=payload.node_meta,
        index=index,
        wait=wait,
    )


async def discover(client: ConsulClient, payload: DiscoverPayload) -> DiscoverResult:
    """One uncached read: what Consul says now."""
    index, found = await health_query(client, payload)
    source: Literal["consul"] = "consul"
    return {
        "service": payload.service,
        "instances": found,
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


async def _shaped_round(
    payload: DiscoverPayload, client: ConsulClient, round_: tuple[int, str]
) -> tuple[int, list[ServiceInstance]]:
    """One blocking round of the cache's watch (``round_`` is its index and wait)."""
    return await health_query(client, payload, *round_)


def _copy(instance: ServiceInstance) -> ServiceInstance:
    # The cache's instances are shared by every caller: each gets its own mutable parts.
    copied = instance.copy()
    copied["tags"] = list(instance["tags"])
    copied["meta"] = dict(instance["meta"])
    copied["weights"] = instance["weights"].copy()
    return copied


async def _discovered(
    effects: Effects, payload: DiscoverPayload, query: tuple[Any, ...]
) -> DiscoverResult:
    """The answer, cached unless ``cache`` is false. A cached answer's instances are the
    cache's own, shared with every caller: not to be handed out as they are."""
    if not payload.cache:
        return await effects.call(discover, payload)
    cached = await effects.cached(
        query,
        partial(_shaped_round, payload),
        partial(effects.call, health_query, payload),
    )
    # An answer from memory never suspends: a caller reading in a tight loop would hold the
    # event loop for the whole loop. Every YIELD_EVERY-th one lets the loop run (~0.3 µs a
    # read on average; a tight loop holds the event loop for ~8 reads, about 0.15 ms).
    reads = effects.state.get(_READS, 0) + 1
    effects.state[_READS] = reads
    if reads % YIELD_EVERY == 0:
        await asyncio.sleep(0)
    return {
        "service": payload.service,
        "instances": cached.value,
        "index": cached.index,
        "source": cached.source,
        "age_seconds": cached.age_seconds,
    }


async def serve_discover(effects: Effects, payload: DiscoverPayload) -> DiscoverResult:
    """Cached unless ``cache`` is false; see the module docstring."""
    found = await _discovered(effects, payload, payload.query_key())
    if payload.cache:
        found["instances"] = [_copy(i) for i in found["instances"]]
    return found


# Where the handler keeps its Balancer in the runtime's state.
BALANCER = "balancer"
# What an outage looks like from here: the fallback stands in for these only.
OUTAGES = (InfraConnectionError, InfraUnavailableError)


class EndpointPayload(DiscoverPayload):
    """``consul.discover``'s filters, a strategy and an optional fallback."""

    strategy: Literal["round_robin", "random", "weighted"] = "round_robin"
    fallback: HostPort | None = None


def fallback_result(service: str, fallback: str) -> EndpointResult:
    host, port = split_host_port(fallback)
    return {
        "service": service,
        "address": host,
        "port": port,
        "instance_id": None,
        "source": "fallback",
        "age_seconds": None,
    }


def as_endpoint(service: str, picked: ServiceInstance, found: DiscoverResult) -> EndpointResult:
    return {
        "service": service,
        "address": picked["address"],
        "port": picked["port"],
        "instance_id": picked["id"],
        "source": found["source"],
        "age_seconds": found["age_seconds"],
    }


def choose(
    balancer: Balancer,
    query: tuple[Any, ...],
    payload: DiscoverPayload,
    found: DiscoverResult,
    strategy: Strategy,
    fallback: str | None,
) -> EndpointResult | None:
    """The picked instance as an endpoint, the fallback when none is healthy, else None."""
    picked = balancer.pick(query, found["instances"], strategy)
    if picked is None:
        return fallback_result(payload.service, fallback) if fallback is not None else None
    return as_endpoint(payload.service, picked, found)


class LeaseOptions(BaseModel):
    """``HandlerConsul.lease()``'s own keywords; the filters are discover's payload."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    strategy: Strategy = "round_robin"
    fallback: HostPort | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=3600)


def no_healthy_instance(service: str) -> str:
    return f"no healthy instance of {service!r} and no fallback"


async def serve_endpoint(effects: Effects, payload: EndpointPayload) -> EndpointResult:
    query = payload.query_key()
    try:
        # The cache's own instances: the endpoint copies only the picked one's scalars.
        found = await _discovered(effects, payload, query)
    except OUTAGES:
        if payload.fallback is None:
            raise
        return fallback_result(payload.service, payload.fallback)
    balancer = effects.state.get(BALANCER)
    if not isinstance(balancer, Balancer):
        balancer = effects.state[BALANCER] = Balancer()
    chosen = choose(balancer, query, payload, found, payload.strategy, payload.fallback)
    if chosen is None:
        raise effects.error(
            InfraUnavailableError, f"consul.endpoint: {no_healthy_instance(payload.service)}"
        )
    return chosen


async def endpoint(client: ConsulClient, payload: EndpointPayload) -> EndpointResult:
    """The one-request form (no cache, no shared rotation): the first healthy instance.

    The handler runs :func:`serve_endpoint`; this gives the operation its result type in
    ``handler-consul schema`` and picks without state where no handler state exists.
    """
    found = await discover(client, payload)
    balancer, query = Balancer(), payload.query_key()
    chosen = choose(balancer, query, payload, found, payload.strategy, payload.fallback)
    if chosen is None:
        raise LookupError(no_healthy_instance(payload.service))
    return chosen
