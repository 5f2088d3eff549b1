"""What each operation gives back: ``HandlerResponse.result``, as TypedDicts.

They live below everything else so the operations that build them and the response that
carries them (:mod:`handler_consul._envelope`, with its typed accessors ``as_kv_get()`` ...)
share one definition. They are ``typing_extensions.TypedDict``: pydantic validates and
describes a TypedDict only from there on Python < 3.12, and ``TypeAdapter(KvGetResult)`` must
work on every Python the package supports.
"""

from __future__ import annotations

from typing import Literal, NotRequired

from typing_extensions import TypedDict

__all__ = [
    "CheckUpdateResult",
    "DeregisterResult",
    "DiscoverResult",
    "EndpointResult",
    "HealthStatus",
    "InstanceWeights",
    "KvDeleteResult",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutResult",
    "RegisterResult",
    "ServiceInstance",
    "ServicesResult",
    "SessionCreateResult",
    "SessionDestroyResult",
    "SessionRenewResult",
    "TxnAppliedResult",
    "TxnError",
    "TxnRolledBackResult",
    "WatchResult",
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
    the entry ``None``; ``index`` is the ``X-Consul-Index`` of the answer, as an integer.
    A ``"consistency": "cached"`` read also says where the answer came from (``source``:
    ``consul`` while the cache is in sync, ``cache`` while Consul is unreachable) and how old
    it is (``age_seconds``, 0 when in sync)."""

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
    # Only with "consistency": "cached".
    source: NotRequired[Literal["consul", "cache"]]
    age_seconds: NotRequired[float]


class KvGetRecurseResult(TypedDict):
    """``consul.kv_get`` with ``recurse``: every entry under ``prefix``, sorted by key (with
    ``source`` and ``age_seconds`` when cached, as for a single key)."""

    prefix: str
    found: bool
    items: list[KvEntry]
    index: int
    # Only with "consistency": "cached".
    source: NotRequired[Literal["consul", "cache"]]
    age_seconds: NotRequired[float]


class KvGetKeysResult(TypedDict):
    """``consul.kv_get`` with ``keys_only``: the key names under ``prefix`` (with ``source``
    and ``age_seconds`` when cached, as for a single key)."""

    prefix: str
    keys: list[str]
    index: int
    # Only with "consistency": "cached".
    source: NotRequired[Literal["consul", "cache"]]
    age_seconds: NotRequired[float]


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


class KvDeleteResult(TypedDict):
    """``consul.kv_delete``. ``deleted`` is False only when a ``cas`` index did not match
    (a key that did not exist is deleted: Consul answers true)."""

    key: str
    deleted: bool


class TxnAppliedResult(TypedDict):
    """A ``consul.txn`` that Consul applied, every operation at once.

    ``results`` are the entries Consul returns, in the order of the operations that return
    them: ``get`` and ``get-tree`` with their values; ``set``, ``cas``, ``lock``, ``unlock``,
    ``check-index`` and ``check-session`` with the entry as it stands but ``value`` and
    ``encoding`` None (Consul leaves values out); the deletes and ``check-not-exists``
    return nothing. ``index`` is the Raft index the transaction was applied at when it wrote
    an entry it returns, for a read-only one the highest ``modify_index`` it read, and None
    when it returned no entry (Consul's transaction endpoint sends no index header).
    """

    applied: Literal[True]
    results: list[KvEntry]
    index: int | None


class TxnError(TypedDict):
    """Why Consul rolled a transaction back: the failing operation's position in
    ``operations`` (from 0) and Consul's words."""

    op_index: int
    what: str


class TxnRolledBackResult(TypedDict):
    """A ``consul.txn`` that Consul rolled back (its 409): nothing was applied."""

    applied: Literal[False]
    errors: list[TxnError]


class SessionCreateResult(TypedDict):
    """``consul.session_create``: the new session's ID."""

    session_id: str


class SessionRenewResult(TypedDict):
    """``consul.session_renew``. ``renewed`` is False when the session no longer exists
    (expired or destroyed): create a new one."""

    session_id: str
    renewed: bool


class SessionDestroyResult(TypedDict):
    """``consul.session_destroy``. Consul answers true for an unknown session as well, so
    destroying twice is harmless."""

    session_id: str
    destroyed: bool


class WatchResult(TypedDict):
    """One ``consul.watch`` step. ``index`` is what to send with the next step (Consul's
    rules applied: 0 after the index went backwards, never below 1 otherwise); ``changed``
    is whether it moved past the index sent (a step from 0 counts as changed). ``result``
    has kv_get's shape (a single-key result for ``key``, a recursive one for ``prefix``) or,
    for ``service``, consul.discover's: ``{"service", "instances", "index", "source",
    "age_seconds"}`` with the passing instances."""

    index: int
    changed: bool
    result: KvGetResult | KvGetRecurseResult | DiscoverResult
