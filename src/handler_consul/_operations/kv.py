"""consul.kv_get and consul.kv_put: payload models and the functions that run them.

The functions run in a worker thread and call python-consul2's ``kv`` endpoint. They
normalise what python-consul2 returns: the index header as an ``int`` (it hands back the
header string), a missing key as ``found: false`` (it returns a truthy ``(index, None)``),
and values as text when they are UTF-8 and base64 otherwise.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from handler_consul._client import ConsulClient
from handler_consul._operations.settle import settle
from handler_consul._results import (
    KvEntry,
    KvGetKeysResult,
    KvGetRecurseResult,
    KvGetResult,
    KvPutResult,
)
from handler_consul._validation import (
    MAX_VALUE_BYTES,
    UINT64_MAX,
    Datacenter,
    KvKey,
    KvPrefix,
    SessionId,
    check_text,
)

__all__ = [
    "KvEntry",
    "KvGetKeysResult",
    "KvGetPayload",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutPayload",
    "KvPutResult",
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
    consistency: Literal["default", "stale", "consistent"] = "default"
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
        encoding = info.data.get("encoding", "utf-8")
        if isinstance(value, bytes) and encoding != "utf-8":
            raise ValueError("encoding applies to text values only; bytes are sent as they are")
        if isinstance(value, str):
            check_text(value)
        # UTF-8 takes at most 4 bytes a character: short text needs no encoding to be checked
        # here (kv_put encodes it once, for the request).
        short_text = (
            isinstance(value, str) and encoding == "utf-8" and len(value) * 4 <= MAX_VALUE_BYTES
        )
        if not short_text and len(_value_bytes(value, encoding)) > MAX_VALUE_BYTES:
            raise ValueError(f"must be at most {MAX_VALUE_BYTES} bytes (Consul's limit)")
        return value

    @model_validator(mode="after")
    def _locks(self) -> KvPutPayload:
        if self.acquire is not None and self.release is not None:
            raise ValueError("acquire and release are mutually exclusive")
        return self

    def data(self) -> bytes:
        """The bytes to store."""
        return _value_bytes(self.value, self.encoding)


def _value_bytes(value: str | bytes, encoding: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
    return value.encode("utf-8")


def _index(raw: Any) -> int:
    """python-consul2 returns X-Consul-Index as the header string (or None)."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _decode_value(raw: bytes | None) -> tuple[str, Literal["utf-8", "base64"]]:
    if raw is None:
        # Consul stores an empty value as null; give back what was written: "".
        return "", "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _entry(item: dict[str, Any]) -> KvEntry:
    value, encoding = _decode_value(item.get("Value"))
    return {
        "key": item["Key"],
        "value": value,
        "encoding": encoding,
        "flags": int(item.get("Flags", 0)),
        "modify_index": int(item.get("ModifyIndex", 0)),
        "create_index": int(item.get("CreateIndex", 0)),
        "lock_index": int(item.get("LockIndex", 0)),
        "session": item.get("Session"),
    }


async def kv_get(
    client: ConsulClient, payload: KvGetPayload
) -> KvGetResult | KvGetRecurseResult | KvGetKeysResult:
    consistency = None if payload.consistency == "default" else payload.consistency
    raw_index, data = await settle(
        client.kv.get(
            payload.key,
            recurse=payload.recurse,
            keys=payload.keys_only,
            separator=payload.separator,
            consistency=consistency,
            dc=payload.datacenter,
        )
    )
    index = _index(raw_index)
    if payload.keys_only:
        return {"prefix": payload.key, "keys": list(data or []), "index": index}
    if payload.recurse:
        items = [_entry(item) for item in data or []]
        return {"prefix": payload.key, "found": bool(items), "items": items, "index": index}
    if data is None:
        return {
            "key": payload.key,
            "found": False,
            "value": None,
            "encoding": None,
            "flags": None,
            "modify_index": None,
            "create_index": None,
            "lock_index": None,
            "session": None,
            "index": index,
        }
    entry = _entry(data)
    return {"found": True, **entry, "index": index}


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
