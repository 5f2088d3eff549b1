"""The dispatch table: operation name -> payload model, function, idempotency rule.

Adding an operation touches this table, one payload model and one function. The functions
are synchronous and run in the bounded worker pool; they raise python-consul2's or the
transport's exceptions, which the handler translates in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from handler_consul.client import ConsulClient
from handler_consul.operations.kv import (
    KvGetPayload,
    KvPutPayload,
    kv_get,
    kv_put,
    kv_put_is_idempotent,
)
from handler_consul.operations.service import (
    DeregisterPayload,
    RegisterPayload,
    deregister,
    register,
)

__all__ = ["OPERATIONS", "Operation"]


def _always(_payload: Any) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Operation:
    """How to run one operation."""

    name: str
    payload_model: type[BaseModel]
    run: Callable[[ConsulClient, Any], Mapping[str, Any]]
    # Whether an attempt whose outcome is unknown (sent, then timed out) may be re-sent.
    idempotent: Callable[[Any], bool] = _always
    read_only: bool = False


OPERATIONS: Mapping[str, Operation] = {
    op.name: op
    for op in (
        Operation("consul.register", RegisterPayload, register),
        Operation("consul.deregister", DeregisterPayload, deregister),
        Operation("consul.kv_get", KvGetPayload, kv_get, read_only=True),
        Operation("consul.kv_put", KvPutPayload, kv_put, kv_put_is_idempotent),
    )
}
