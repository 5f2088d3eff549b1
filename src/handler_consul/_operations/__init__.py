"""The dispatch table: operation name -> payload model, function, idempotency rule.

Adding an operation touches this table, one payload model and one function. The functions
are ``async def`` and wrap each client call in :func:`.settle.settle`, so one body serves
both I/O modes; in a worker thread :func:`call_operation` drives them without a loop. They
raise the transport's errors (or, for a response it cannot parse, python-consul2's), which the retry
loop translates at one boundary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from handler_consul._client import ConsulClient
from handler_consul._operations.discovery import (
    DiscoverPayload,
    EndpointPayload,
    ServicesPayload,
    discover,
    endpoint,
    serve_discover,
    serve_endpoint,
    services,
)
from handler_consul._operations.effects import Effects
from handler_consul._operations.kv import (
    KvDeletePayload,
    KvGetPayload,
    KvPutPayload,
    kv_delete,
    kv_delete_is_idempotent,
    kv_get,
    kv_put,
    kv_put_is_idempotent,
)
from handler_consul._operations.service import (
    CheckUpdatePayload,
    DeregisterPayload,
    RegisterPayload,
    check_update,
    deregister,
    register,
    serve_deregister,
    serve_register,
)
from handler_consul._operations.session import (
    SessionCreatePayload,
    SessionIdPayload,
    session_create,
    session_destroy,
    session_renew,
)
from handler_consul._operations.settle import run_to_completion
from handler_consul._operations.txn import TxnPayload, txn, txn_is_idempotent
from handler_consul._operations.watch import (
    WatchPayload,
    is_cached,
    serve_kv_get,
    serve_watch,
    watch_step,
)
from handler_consul._transport import InFlight
from handler_consul._transport.aio import reset_request_deadline, set_request_deadline

__all__ = [
    "OPERATIONS",
    "Effects",
    "Operation",
    "call_leader",
    "call_leader_async",
    "call_operation",
    "call_operation_async",
]


def _always(_payload: Any) -> bool:
    return True


def _never(_payload: Any) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Operation:
    """How to run one operation."""

    name: str
    payload_model: type[BaseModel]
    run: Callable[[ConsulClient, Any], Coroutine[Any, Any, Mapping[str, Any]]]
    # Whether an attempt whose outcome is unknown (sent, then no answer) may be re-sent.
    idempotent: Callable[[Any], bool] = _always
    # For operations that are not one request (cached reads, endpoint picking, watch steps):
    # runs on the loop and reaches Consul only through the envelope's Effects. ``run`` is
    # then what ``handler-consul schema`` reads the result type from.
    serve: Callable[[Effects, Any], Awaitable[Mapping[str, Any]]] | None = None
    # Whether a payload needs ``serve``; one that does not is one attempt of ``run``, as for
    # an operation without ``serve`` (a plain kv_get: no Effects to build on its way).
    served: Callable[[Any], bool] = _always


OPERATIONS: Mapping[str, Operation] = {
    op.name: op
    for op in (
        # Served on the loop: a registration with ``maintain`` is handed to the upkeep.
        Operation("consul.register", RegisterPayload, register, serve=serve_register),
        # Not re-sent after an unknown outcome: a second DELETE answers 404 whether or not
        # the first removed the service, so ``deregistered`` would be a guess. Served on the
        # loop: a maintained service's upkeep ends before it is removed.
        Operation(
            "consul.deregister", DeregisterPayload, deregister, _never, serve=serve_deregister
        ),
        # Served on the loop: "consistency": "cached" reads from memory, the rest is one
        # short request as before.
        Operation("consul.kv_get", KvGetPayload, kv_get, serve=serve_kv_get, served=is_cached),
        Operation("consul.kv_put", KvPutPayload, kv_put, kv_put_is_idempotent),
        Operation("consul.kv_delete", KvDeletePayload, kv_delete, kv_delete_is_idempotent),
        Operation("consul.txn", TxnPayload, txn, txn_is_idempotent),
        # Not re-sent after an unknown outcome: the first may have created a session that
        # nobody would know of, holding nothing but never destroyed before its TTL.
        Operation("consul.session_create", SessionCreatePayload, session_create, _never),
        Operation("consul.session_renew", SessionIdPayload, session_renew),
        Operation("consul.session_destroy", SessionIdPayload, session_destroy),
        Operation("consul.watch", WatchPayload, watch_step, serve=serve_watch),
        # Cached by default (the query cache, kept fresh by blocking queries).
        Operation("consul.discover", DiscoverPayload, discover, serve=serve_discover),
        Operation("consul.endpoint", EndpointPayload, endpoint, serve=serve_endpoint),
        Operation("consul.services", ServicesPayload, services),
        # Setting a status twice leaves it as once: safe to re-send after an unknown outcome.
        Operation("consul.check_update", CheckUpdatePayload, check_update),
    )
}


def call_operation(
    client: ConsulClient,
    operation: Operation,
    payload: Any,
    deadline: float,
    call: InFlight | None = None,
) -> Mapping[str, Any]:
    """What a worker thread runs: the operation, its requests bounded by the envelope's
    deadline (an absolute ``time.monotonic()`` instant, so a wait in the queue counts).
    ``call``, for long polls, lets the caller end the request it waits on."""
    client.http.set_request_deadline(deadline)
    if call is None:
        return run_to_completion(operation.run(client, payload))
    client.http.set_call(call)
    try:
        return run_to_completion(operation.run(client, payload))
    finally:
        client.http.set_call(None)


def call_leader(client: ConsulClient, deadline: float) -> str:
    """What a worker runs for initialize() and health_check(): GET /v1/status/leader.

    It needs no ACL permission, so a token scoped to its own keys still initializes.
    """
    client.http.set_request_deadline(deadline)
    leader = client.status.leader()
    return leader if isinstance(leader, str) else ""


async def call_operation_async(
    client: ConsulClient,
    operation: Operation,
    payload: Any,
    deadline: float,
    call: InFlight | None = None,
) -> Mapping[str, Any]:
    """What the asyncio mode awaits on the loop: the operation over the asyncio transport,
    its requests bounded by the envelope's deadline (a context variable, as the worker's
    thread-local is in threads mode). ``call`` is accepted for the same arguments as
    :func:`call_operation` and ignored: cancelling the task ends its request already (and
    long polls run on their own threads, over the blocking transport, in either mode)."""
    del call
    token = set_request_deadline(deadline)
    try:
        return await operation.run(client, payload)
    finally:
        reset_request_deadline(token)


async def call_leader_async(client: ConsulClient, deadline: float) -> str:
    """:func:`call_leader` on the loop: GET /v1/status/leader over the asyncio transport."""
    token = set_request_deadline(deadline)
    try:
        leader = await client.status.leader()
    finally:
        reset_request_deadline(token)
    return leader if isinstance(leader, str) else ""
