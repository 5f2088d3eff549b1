"""The envelope an orchestrator hands in and the response it gets back.

``HandlerResponse.result`` is a plain ``dict[str, Any]``, whatever the operation; its typed
accessors (``as_kv_get()``, ``as_kv_put()`` ...) give the same dict as that operation's
TypedDict, so a type checker catches ``response.as_kv_get()["valeu"]``, and refuse with a
``TypeError`` a response of another operation (or another kind of kv_get).
"""

from __future__ import annotations

import random
import uuid
from typing import Any, Literal, cast
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from handler_consul._results import (
    CheckUpdateResult,
    DeregisterResult,
    DiscoverResult,
    EndpointResult,
    KvDeleteResult,
    KvGetKeysResult,
    KvGetRecurseResult,
    KvGetResult,
    KvPutResult,
    RegisterResult,
    ServicesResult,
    SessionCreateResult,
    SessionDestroyResult,
    SessionRenewResult,
    TxnAppliedResult,
    TxnRolledBackResult,
)

__all__ = ["MAX_ENVELOPE_TIMEOUT_SECONDS", "Envelope", "HandlerResponse", "new_correlation_id"]

# An envelope may ask for a shorter or longer deadline than the default, but not one that
# would let a single envelope pin a worker for hours.
MAX_ENVELOPE_TIMEOUT_SECONDS = 3600.0


class Envelope(BaseModel):
    """One operation request. ``payload`` is checked against the operation's own model.

    Strict: ``"5"`` is not a timeout and ``1`` is not an operation. The IDs alone accept
    their text form, since that is how UUIDs travel in JSON.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    operation: str = Field(min_length=1, max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict)
    correlation_id: UUID | None = Field(None, strict=False)
    envelope_id: UUID | None = Field(None, strict=False)
    timeout_seconds: float | None = Field(None, gt=0, le=MAX_ENVELOPE_TIMEOUT_SECONDS)


class HandlerResponse(BaseModel):
    """A successful outcome; failures are raised as InfraError subclasses instead."""

    model_config = ConfigDict(frozen=True)

    status: Literal["success"] = "success"
    operation: str
    correlation_id: UUID
    envelope_id: UUID | None = None
    result: dict[str, Any]
    attempts: int
    duration_ms: float

    @classmethod
    def trusted(
        cls,
        operation: str,
        correlation_id: UUID,
        envelope_id: UUID | None,
        result: dict[str, Any],
        attempts: int,
        duration_ms: float,
    ) -> HandlerResponse:
        """Build from values the handler produced itself, without validation.

        What ``model_construct`` does, minus its per-field loop over defaults and aliases
        (~3 µs per envelope on the event loop in bench profiles). tests/test_envelope.py
        checks that the result equals ``model_construct``'s, so a pydantic upgrade that
        changes the model's internals fails a test rather than misbehaving.
        """
        response = _new(cls)
        _set(
            response,
            "__dict__",
            {
                "status": "success",
                "operation": operation,
                "correlation_id": correlation_id,
                "envelope_id": envelope_id,
                "result": result,
                "attempts": attempts,
                "duration_ms": duration_ms,
            },
        )
        _set(response, "__pydantic_fields_set__", set(_ALL_RESPONSE_FIELDS))
        _set(response, "__pydantic_extra__", None)
        _set(response, "__pydantic_private__", None)
        return response

    # -- typed results -------------------------------------------------------------------
    # Each returns ``self.result`` itself (no copy, no validation: the handler built it), typed
    # as what its operation returns; a response of anything else is a TypeError naming the
    # accessor that fits it.

    def as_kv_get(self) -> KvGetResult:
        """The result of a single-key ``consul.kv_get`` (neither recurse nor keys_only)."""
        return cast(KvGetResult, self._result_for("as_kv_get"))

    def as_kv_get_recurse(self) -> KvGetRecurseResult:
        """The result of a ``consul.kv_get`` with ``recurse``: ``items`` under ``prefix``."""
        return cast(KvGetRecurseResult, self._result_for("as_kv_get_recurse"))

    def as_kv_get_keys(self) -> KvGetKeysResult:
        """The result of a ``consul.kv_get`` with ``keys_only``: ``keys`` under ``prefix``."""
        return cast(KvGetKeysResult, self._result_for("as_kv_get_keys"))

    def as_kv_put(self) -> KvPutResult:
        """The result of a ``consul.kv_put``."""
        return cast(KvPutResult, self._result_for("as_kv_put"))

    def as_kv_delete(self) -> KvDeleteResult:
        """The result of a ``consul.kv_delete``."""
        return cast(KvDeleteResult, self._result_for("as_kv_delete"))

    def as_txn(self) -> TxnAppliedResult | TxnRolledBackResult:
        """The result of a ``consul.txn``: applied (``results``) or rolled back (``errors``);
        ``applied`` tells them apart for a type checker too."""
        return cast(TxnAppliedResult | TxnRolledBackResult, self._result_for("as_txn"))

    def as_session_create(self) -> SessionCreateResult:
        """The result of a ``consul.session_create``."""
        return cast(SessionCreateResult, self._result_for("as_session_create"))

    def as_session_renew(self) -> SessionRenewResult:
        """The result of a ``consul.session_renew``."""
        return cast(SessionRenewResult, self._result_for("as_session_renew"))

    def as_session_destroy(self) -> SessionDestroyResult:
        """The result of a ``consul.session_destroy``."""
        return cast(SessionDestroyResult, self._result_for("as_session_destroy"))

    def as_register(self) -> RegisterResult:
        """The result of a ``consul.register``."""
        return cast(RegisterResult, self._result_for("as_register"))

    def as_deregister(self) -> DeregisterResult:
        """The result of a ``consul.deregister``."""
        return cast(DeregisterResult, self._result_for("as_deregister"))

    def as_discover(self) -> DiscoverResult:
        """The result of a ``consul.discover``."""
        return cast(DiscoverResult, self._result_for("as_discover"))

    def as_endpoint(self) -> EndpointResult:
        """The result of a ``consul.endpoint``."""
        return cast(EndpointResult, self._result_for("as_endpoint"))

    def as_services(self) -> ServicesResult:
        """The result of a ``consul.services``."""
        return cast(ServicesResult, self._result_for("as_services"))

    def as_check_update(self) -> CheckUpdateResult:
        """The result of a ``consul.check_update``."""
        return cast(CheckUpdateResult, self._result_for("as_check_update"))

    def _result_for(self, accessor: str) -> dict[str, Any]:
        result = self.result
        if _fits(accessor, self.operation, result):
            return result
        fitting = next((a for a in _ACCESSORS if _fits(a, self.operation, result)), None)
        kind = self.operation
        if kind == "consul.kv_get":
            kind = _KV_GET_KINDS.get(fitting or "", "consul.kv_get of unknown shape")
        hint = f"; use {fitting}()" if fitting else ""
        raise TypeError(f"{accessor}() on a response of {kind}{hint}")


# accessor -> (operation, a key only that shape of result has, or None when it has one shape)
_ACCESSORS: dict[str, tuple[str, str | None]] = {
    "as_kv_get": ("consul.kv_get", "key"),
    "as_kv_get_recurse": ("consul.kv_get", "items"),
    "as_kv_get_keys": ("consul.kv_get", "keys"),
    "as_kv_put": ("consul.kv_put", None),
    "as_kv_delete": ("consul.kv_delete", None),
    "as_txn": ("consul.txn", None),
    "as_session_create": ("consul.session_create", None),
    "as_session_renew": ("consul.session_renew", None),
    "as_session_destroy": ("consul.session_destroy", None),
    "as_register": ("consul.register", None),
    "as_deregister": ("consul.deregister", None),
    "as_discover": ("consul.discover", None),
    "as_endpoint": ("consul.endpoint", None),
    "as_services": ("consul.services", None),
    "as_check_update": ("consul.check_update", None),
}
_KV_GET_KINDS = {
    "as_kv_get": "a single-key consul.kv_get",
    "as_kv_get_recurse": "a consul.kv_get with recurse",
    "as_kv_get_keys": "a consul.kv_get with keys_only",
}


def _fits(accessor: str, operation: str, result: dict[str, Any]) -> bool:
    expected, marker = _ACCESSORS[accessor]
    return operation == expected and (marker is None or marker in result)


_new = object.__new__
_set = object.__setattr__
_ALL_RESPONSE_FIELDS = frozenset(HandlerResponse.model_fields)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def new_correlation_id() -> UUID:
    """A random version-4 UUID without a syscall and without ``UUID.__init__``.

    ``uuid.uuid4()`` reads os.urandom, which releases the GIL; getting it back behind busy
    worker threads cost ~100 µs per envelope in profiles. Correlation IDs need uniqueness,
    not secrecy, so the process-wide Mersenne Twister is enough. The version and variant
    bits are set exactly as ``UUID(int=..., version=4)`` sets them (tests compare the two).
    """
    value = _new(UUID)
    _set_int(value, (_random_bits(128) & _UUID4_CLEAR) | _UUID4_SET)
    _set_is_safe(value, _UNKNOWN_SAFETY)
    return value


# UUID's slots, set through their descriptors: half the cost of object.__setattr__.
_set_int = UUID.int.__set__  # type: ignore[attr-defined,misc]
_set_is_safe = UUID.is_safe.__set__  # type: ignore[attr-defined,misc]
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown
_random_bits = random.getrandbits
