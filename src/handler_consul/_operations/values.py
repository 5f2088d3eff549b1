"""Values, entries and reads as the KV operations take and give them (kv, txn, watch).

A value goes in as text (UTF-8), base64 text, or bytes, and is stored as bytes; it comes back
as text when it is UTF-8 and as base64 otherwise, with ``encoding`` saying which.
:func:`kv_read` is the one KV read: kv_get's, a cached read's and a watch round's, so all
three give the same shapes. It normalises what python-consul2 returns: the index header as
an ``int`` (it hands back the header string), a missing key as ``found: false`` (it returns
a truthy ``(index, None)``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from handler_consul._operations.health import index_of
from handler_consul._operations.settle import settle
from handler_consul._results import KvEntry, KvGetKeysResult, KvGetRecurseResult, KvGetResult
from handler_consul._validation import MAX_VALUE_BYTES, check_text

__all__ = [
    "KvQuery",
    "KvRead",
    "check_value",
    "decode_value",
    "entry",
    "index_of",
    "kv_read",
    "value_bytes",
]

KvReadResult = KvGetResult | KvGetRecurseResult | KvGetKeysResult


class KvQuery(Protocol):
    """What a KV read needs to know (kv_get's payload, or a watch's)."""

    @property
    def key(self) -> str: ...
    @property
    def recurse(self) -> bool: ...
    @property
    def keys_only(self) -> bool: ...
    @property
    def separator(self) -> str | None: ...
    @property
    def consistency(self) -> str: ...
    @property
    def datacenter(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class KvRead:
    """A KV read that is not kv_get's payload (a watch's key or prefix)."""

    key: str
    recurse: bool = False
    keys_only: bool = False
    separator: str | None = None
    consistency: str = "default"
    datacenter: str | None = None


def check_value(value: str | bytes, encoding: str) -> str | bytes:
    """A value to store: valid text, valid base64 when so encoded, within Consul's size."""
    if isinstance(value, bytes) and encoding != "utf-8":
        raise ValueError("encoding applies to text values only; bytes are sent as they are")
    if isinstance(value, str):
        check_text(value)
    # UTF-8 takes at most 4 bytes a character: short text needs no encoding to be checked
    # here (the operation encodes it once, for the request).
    short_text = (
        isinstance(value, str) and encoding == "utf-8" and len(value) * 4 <= MAX_VALUE_BYTES
    )
    if not short_text and len(value_bytes(value, encoding)) > MAX_VALUE_BYTES:
        raise ValueError(f"must be at most {MAX_VALUE_BYTES} bytes (Consul's limit)")
    return value


def value_bytes(value: str | bytes, encoding: str) -> bytes:
    """The bytes a value stands for (``ValueError`` for bad base64)."""
    if isinstance(value, bytes):
        return value
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
    return value.encode("utf-8")


def decode_value(raw: bytes | None) -> tuple[str, Literal["utf-8", "base64"]]:
    """Stored bytes as the handler gives them back: text if UTF-8, else base64."""
    if raw is None:
        # Consul stores an empty value as null; give back what was written: "".
        return "", "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def entry(item: dict[str, Any]) -> KvEntry:
    """One of Consul's KV entries (its ``Value`` already base64-decoded) as a KvEntry."""
    value, encoding = decode_value(item.get("Value"))
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


async def kv_read(
    client: Any, query: KvQuery, index: int = 0, wait: str | None = None
) -> tuple[int, KvReadResult]:
    """One KV read: ``(X-Consul-Index, result)``; with ``index`` (above 0) and ``wait`` it
    is a blocking query. ``client`` is a ConsulClient (typed loosely: this module sits below
    it). The result's own ``index`` is the header's."""
    consistency = query.consistency if query.consistency in ("stale", "consistent") else None
    key, recurse, keys_only = query.key, query.recurse, query.keys_only
    raw_index, data = await settle(
        client.kv.get(
            key,
            index=index or None,
            wait=wait,
            recurse=recurse,
            keys=keys_only,
            separator=query.separator,
            consistency=consistency,
            dc=query.datacenter,
        )
    )
    at = index_of(raw_index)
    if keys_only:
        return at, {"prefix": key, "keys": list(data or []), "index": at}
    if recurse:
        items = [entry(item) for item in data or []]
        return at, {"prefix": key, "found": bool(items), "items": items, "index": at}
    if data is None:
        return at, {
            "key": key,
            "found": False,
            "value": None,
            "encoding": None,
            "flags": None,
            "modify_index": None,
            "create_index": None,
            "lock_index": None,
            "session": None,
            "index": at,
        }
    found = {"found": True, **entry(data), "index": at}
    return at, cast(KvGetResult, found)
