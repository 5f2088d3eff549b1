"""consul.session_create, consul.session_renew and consul.session_destroy.

A session is what a lock is held by: when it is invalidated (its TTL passes without a renewal,
a check it is bound to fails, it is destroyed), every key it holds is released or deleted,
as ``behavior`` says. Durations are Go durations (``"15s"``), checked against Consul's bounds
here so that a TTL of 5s is refused before anything is sent rather than answered 400.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler_consul._client import ConsulClient
from handler_consul._consul import consul_base
from handler_consul._operations.settle import settle
from handler_consul._results import SessionCreateResult, SessionDestroyResult, SessionRenewResult
from handler_consul._validation import (
    CheckId,
    LockDelay,
    NodeName,
    SessionId,
    SessionTtl,
    check_text,
    duration_seconds,
)

__all__ = [
    "SessionCreatePayload",
    "SessionIdPayload",
    "session_create",
    "session_destroy",
    "session_renew",
]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
# python-consul2 sends a lock-delay only when it differs from 15 (Consul's default).
_CONSUL_DEFAULT_LOCK_DELAY = 15


class SessionCreatePayload(BaseModel):
    """A new session. Without ``checks`` Consul binds it to the node's ``serfHealth``;
    ``checks: []`` binds it to nothing but its TTL."""

    model_config = _STRICT

    name: str | None = Field(None, min_length=1, max_length=256)
    ttl: SessionTtl | None = None
    behavior: Literal["release", "delete"] = "release"
    lock_delay: LockDelay | None = None
    checks: list[CheckId] | None = Field(None, max_length=64)
    node: NodeName | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        if name is not None and not check_text(name).isprintable():
            raise ValueError("must be printable text")
        return name


class SessionIdPayload(BaseModel):
    """The session to renew or destroy."""

    model_config = _STRICT

    session_id: SessionId


async def session_create(
    client: ConsulClient, payload: SessionCreatePayload
) -> SessionCreateResult:
    lock_delay: int | str = _CONSUL_DEFAULT_LOCK_DELAY
    if payload.lock_delay is not None:
        lock_delay = _seconds(duration_seconds(payload.lock_delay))
    session_id = await settle(
        client.session.create(
            name=payload.name,
            node=payload.node,
            checks=payload.checks,
            lock_delay=lock_delay,
            behavior=payload.behavior,
            ttl=_ttl(payload.ttl),
        )
    )
    return {"session_id": str(session_id)}


async def session_renew(client: ConsulClient, payload: SessionIdPayload) -> SessionRenewResult:
    try:
        await settle(client.session.renew(payload.session_id))
    except consul_base.NotFound:
        # Consul answers 404 for a session that expired or was destroyed.
        return {"session_id": payload.session_id, "renewed": False}
    return {"session_id": payload.session_id, "renewed": True}


async def session_destroy(client: ConsulClient, payload: SessionIdPayload) -> SessionDestroyResult:
    destroyed = await settle(client.session.destroy(payload.session_id))
    return {"session_id": payload.session_id, "destroyed": destroyed is True}


def _seconds(seconds: float) -> str:
    """Seconds as python-consul2 puts them before its ``s``: plain decimals (``"15"``,
    ``"0.5"``), never ``"1e-06"``, which Go would not parse."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") or "0"


def _ttl(ttl: str | None) -> int | float | None:
    """The TTL in seconds; python-consul2 compares it with its bounds, so a number. Within
    10s-24h a float never prints in exponent form."""
    if ttl is None:
        return None
    seconds = duration_seconds(ttl)
    return int(seconds) if seconds == int(seconds) else seconds
