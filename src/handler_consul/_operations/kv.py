"""consul.kv_get, consul.kv_put and consul.kv_delete: payload models and their functions.

The functions run in a worker thread and call python-consul2's ``kv`` endpoint. They
normalise what python-consul2 returns: the index header as an ``int`` (it hands back the
header string), a missing key as ``found: false`` (it returns a truthy ``(index, None)``),
and values as text when they are UTF-8 and base64 otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from handler_consul._client import ConsulClient
from handler_consul._operations.settle import settle
from handler_consul._operations.values import check_value, kv_read, value_bytes
from handler_consul._results import (
    KvDeleteResult,
    KvEntry,
    KvGetKeysResult,
    KvGetRecurseResult,
    KvGetResult,
    KvPutResult,
)
from handler_consul._validation import (
    UINT64_MAX,
    Datacenter,
    KvKey,
    KvPrefix,
    SessionId,
)

__all__ = [
    "KvDeletePayload",
    "KvDeleteResult",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetPayload",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutPayload",
    "KvPutResult",
    "kv_delete",
    "kv_delete_is_idempotent",
    "kv_get",
    "kv_put",
    "kv_put_is_idempotent",
]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")


class KvGetPayload(BaseModel):
    """Read one key, every key under a prefix (``recurse``), or key names only (``keys_only``).

    The modes are declared before ``key`` so the key's own validator can see them and name
    ``payload.key`` when it is empty for a single-key read.
    """

    model_config = _STRICT

    recurse: bool = False
    keys_only: bool = False
    key: KvPrefix
    separator: str | None = Field(None, min_length=1, max_length=16)
    # "cached": served from memory, kept fresh by a blocking query (see _operations/watch.py).
    consistency: Literal["default", "stale", "consistent", "cached"] = "default"
    datacenter: Datacenter | None = None

    @field_validator("key")
    @classmethod
    def _key_for_mode(cls, key: str, info: ValidationInfo) -> str:
        if key == "" and not (info.data.get("recurse") or info.data.get("keys_only")):
            raise ValueError("must not be empty unless recurse or keys_only is set")
        return key

    @field_validator("separator")
    @classmethod
    def _separator(cls, separator: str | None, info: ValidationInfo) -> str | None:
        if separator is None:
            return None
        if not separator.isprintable():
            raise ValueError("must be printable")
        if not info.data.get("keys_only"):
            raise ValueError("is only meaningful with keys_only")
        return separator

    @model_validator(mode="after")
    def _modes(self) -> KvGetPayload:
        if self.recurse and self.keys_only:
            raise ValueError("recurse and keys_only are mutually exclusive")
        return self


class KvPutPayload(BaseModel):
    """Write one key; ``cas``, ``acquire`` and ``release`` make it conditional.

    ``encoding`` is declared before ``value`` so the value's validator knows how to decode it.
    """

    model_config = _STRICT

    key: KvKey
    encoding: Literal["utf-8", "base64"] = "utf-8"
    value: str | bytes
    flags: int | None = Field(None, ge=0, le=UINT64_MAX)
    cas: int | None = Field(None, ge=0, le=UINT64_MAX)
    acquire: SessionId | None = None
    release: SessionId | None = None
    datacenter: Datacenter | None = None

    @field_validator("value")
    @classmethod
    def _value(cls, value: str | bytes, info: ValidationInfo) -> str | bytes:
        return check_value(value, info.data.get("encoding", "utf-8"))

    @model_validator(mode="after")
    def _locks(self) -> KvPutPayload:
        if self.acquire is not None and self.release is not None:
            raise ValueError("acquire and release are mutually exclusive")
        return self

    def data(self) -> bytes:
        """The bytes to store."""
        return value_bytes(self.value, self.encoding)


class KvDeletePayload(BaseModel):
    """Delete one key, or every key under a prefix (``recurse``); ``cas`` makes a single-key
    delete conditional. The whole tree (an empty key with ``recurse``) also needs
    ``confirm_root``: one envelope must not wipe a datacenter's KV store by accident.

    Fields are declared in the order their validators read each other.
    """

    model_config = _STRICT

    recurse: bool = False
    key: KvPrefix
    confirm_root: bool = Field(False, validate_default=True)
    # Consul deletes with a CAS index only when it is above 0 (0 never matches).
    cas: int | None = Field(None, ge=1, le=UINT64_MAX)

    @field_validator("key")
    @classmethod
    def _key_for_mode(cls, key: str, info: ValidationInfo) -> str:
        if key == "" and not info.data.get("recurse"):
            raise ValueError("must not be empty unless recurse is set")
        return key

    @field_validator("confirm_root")
    @classmethod
    def _confirm_root(cls, confirm: bool, info: ValidationInfo) -> bool:
        root = info.data.get("key") == "" and info.data.get("recurse") is True
        if root and not confirm:
            raise ValueError(
                "must be true to delete every key (an empty key with recurse); nothing was deleted"
            )
        if confirm and not root and "key" in info.data:
            raise ValueError("is only meaningful with an empty key and recurse")
        return confirm

    @field_validator("cas")
    @classmethod
    def _cas_one_key(cls, cas: int | None, info: ValidationInfo) -> int | None:
        # Consul would silently drop recurse and CAS-delete the one key named.
        if cas is not None and info.data.get("recurse"):
            raise ValueError("applies to one key: not with recurse")
        return cas


async def kv_get(
    client: ConsulClient, payload: KvGetPayload
) -> KvGetResult | KvGetRecurseResult | KvGetKeysResult:
    _, result = await kv_read(client, payload)
    return result


async def kv_put(client: ConsulClient, payload: KvPutPayload) -> KvPutResult:
    applied = await settle(
        client.kv.put(
            payload.key,
            payload.data(),
            cas=payload.cas,
            flags=payload.flags,
            acquire=payload.acquire,
            release=payload.release,
            dc=payload.datacenter,
        )
    )
    return {"key": payload.key, "applied": applied is True}


def kv_put_is_idempotent(payload: KvPutPayload) -> bool:
    """A plain put can be re-sent; a CAS or lock write is never blindly re-sent."""
    return payload.cas is None and payload.acquire is None and payload.release is None


async def kv_delete(client: ConsulClient, payload: KvDeletePayload) -> KvDeleteResult:
    deleted = await settle(
        client.kv.delete(payload.key, recurse=payload.recurse or None, cas=payload.cas)
    )
    return {"key": payload.key, "deleted": deleted is True}


def kv_delete_is_idempotent(payload: KvDeletePayload) -> bool:
    """A plain delete can be re-sent (the second one deletes nothing and answers true); a
    CAS delete cannot: its second answer would be false whether or not the first applied."""
    return payload.cas is None
