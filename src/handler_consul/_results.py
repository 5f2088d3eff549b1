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
    "DeregisterResult",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutResult",
    "RegisterResult",
]


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
