"""Values and entries as the KV operations take and give them, shared by kv and txn.

A value goes in as text (UTF-8), base64 text, or bytes, and is stored as bytes; it comes back
as text when it is UTF-8 and as base64 otherwise, with ``encoding`` saying which.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from handler_consul._results import KvEntry
from handler_consul._validation import MAX_VALUE_BYTES, check_text

__all__ = ["check_value", "decode_value", "entry", "value_bytes"]


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
