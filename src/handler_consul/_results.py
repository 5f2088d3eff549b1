"""What each operation gives back: ``HandlerResponse.result``, as TypedDicts.

They live below everything else so the operations that build them and the response that
carries them (:mod:`handler_consul._envelope`, with its typed accessors ``as_kv_get()`` ...)
share one definition. They are ``typing_extensions.TypedDict``: pydantic validates and
describes a TypedDict only from there on Python < 3.12, and ``TypeAdapter(KvGetResult)`` must
work on every Python the package supports.
"""

from __future__ import annotations

from typing import Literal

from typing_extensions import TypedDict

__all__ = [
    "CheckUpdateResult",
    "DeregisterResult",
    "DiscoverResult",
    "EndpointResult",
    "HealthStatus",
    "InstanceWeights",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutResult",
    "RegisterResult",
    "ServiceInstance",
    "ServicesResult",
]

# A check's status as Consul reports it; an instance's is the worst of its checks'.
HealthStatus = Literal["passing", "warning", "critical"]


class KvEntry(TypedDict):
    """One key of a recursive ``consul.kv_get``. ``value`` is text when it is UTF-8, else
    base64 (``encoding`` says which); Consul's empty value comes back as ``""``."""

    key: str
    value: str | None
    encoding: Literal["utf-8", "base64"] | None
    flags: int
    modify_index: int
    create_index: int
    lock_index: int
    session: str | None


class KvGetResult(TypedDict):
    """A single-key ``consul.kv_get``. A missing key is ``found: False`` with every field of
    the entry ``None``; ``index`` is the ``X-Consul-Index`` of the answer, as an integer."""

    key: str
    found: bool
    value: str | None
    encoding: Literal["utf-8", "base64"] | None
    flags: int | None
    modify_index: int | None
    create_index: int | None
    lock_index: int | None
    session: str | None
    index: int


class KvGetRecurseResult(TypedDict):
    """``consul.kv_get`` with ``recurse``: every entry under ``prefix``, sorted by key."""

    prefix: str
    found: bool
    items: list[KvEntry]
    index: int


class KvGetKeysResult(TypedDict):
    """``consul.kv_get`` with ``keys_only``: the key names under ``prefix``."""

    prefix: str
    keys: list[str]
    index: int


class KvPutResult(TypedDict):
    """``consul.kv_put``. ``applied`` is False when a ``cas``, ``acquire`` or ``release``
    condition did not hold; a plain put is always applied."""

    key: str
    applied: bool


class RegisterResult(TypedDict):
    """``consul.register``: the ID Consul uses (the name when none was given)."""

    service_id: str
    name: str
    registered: bool


class DeregisterResult(TypedDict):
    """``consul.deregister``. ``deregistered`` is False when the agent did not know the ID."""

    service_id: str
    deregistered: bool


class InstanceWeights(TypedDict):
    """Consul's ``Weights`` of a service instance: its share of traffic while passing, and
    while warning."""

    passing: int
    warning: int


class ServiceInstance(TypedDict):
    """One instance of a service, as ``consul.discover`` gives it. ``address`` is the
    service's own address, else its node's; ``status`` is the worst of its checks (an
    instance without checks is ``passing``)."""

    id: str
    service: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weights: InstanceWeights
    node: str
    datacenter: str
    status: HealthStatus


class DiscoverResult(TypedDict):
    """``consul.discover``: the instances that match, and where the answer came from.

    ``source`` is ``consul`` for an answer read just now and ``cache`` for one served from
    the discovery cache; ``age_seconds`` is how long ago Consul gave it (0 when fresh).
    """

    service: str
    instances: list[ServiceInstance]
    index: int
    source: Literal["consul", "cache"]
    age_seconds: float


class EndpointResult(TypedDict):
    """``consul.endpoint``: one healthy instance picked by the strategy, or the fallback
    (``source: fallback``, no ``instance_id`` and no age)."""

    service: str
    address: str
    port: int
    instance_id: str | None
    source: Literal["consul", "cache", "fallback"]
    age_seconds: float | None


class CheckUpdateResult(TypedDict):
    """``consul.check_update``: the TTL check now has ``status``."""

    check_id: str
    status: HealthStatus
    updated: bool


class ServicesResult(TypedDict):
    """``consul.services``: every service in the catalog with the tags its instances use."""

    services: dict[str, list[str]]
    index: int
