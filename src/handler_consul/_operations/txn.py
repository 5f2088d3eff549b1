"""consul.txn: up to 64 KV operations that Consul applies atomically, or not at all.

Each operation is checked for the fields its verb needs and refused for the ones it does not
use, naming the field (``payload.operations.3.index``): a ``set`` that carries an ``index``
is a mistake (the caller meant ``cas``), and Consul would ignore it without a word. The body
is built once, when the payload is validated, so its size is checked against Consul's limit
before anything is sent.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from handler_consul._client import ConsulClient
from handler_consul._operations.settle import settle
from handler_consul._operations.values import check_value, entry, value_bytes
from handler_consul._results import KvEntry, TxnAppliedResult, TxnError, TxnRolledBackResult
from handler_consul._validation import MAX_VALUE_BYTES, UINT64_MAX, KvPrefix, SessionId

__all__ = [
    "MAX_TXN_OPERATIONS",
    "TxnOperation",
    "TxnPayload",
    "txn",
    "txn_body",
    "txn_is_idempotent",
]

# Consul's own bounds: maxTxnOps, and txn_max_req_len (by default kv_max_value_size, 512 KiB)
# on the whole request body.
MAX_TXN_OPERATIONS = 64
MAX_TXN_BODY_BYTES = MAX_VALUE_BYTES

TxnVerb = Literal[
    "set",
    "cas",
    "get",
    "get-tree",
    "check-index",
    "check-session",
    "check-not-exists",
    "delete",
    "delete-tree",
    "delete-cas",
    "lock",
    "unlock",
]
WRITE_VERBS = frozenset({"set", "cas", "delete", "delete-tree", "delete-cas", "lock", "unlock"})
# Verbs whose key is a prefix (may be empty for get-tree); every other verb names one key.
_TREE_VERBS = frozenset({"get-tree", "delete-tree"})
# Which optional field each verb requires; any other optional field it does not use.
_REQUIRES: dict[str, frozenset[str]] = {
    "set": frozenset({"value"}),
    "cas": frozenset({"value", "index"}),
    "lock": frozenset({"value", "session"}),
    "unlock": frozenset({"value", "session"}),
    "check-index": frozenset({"index"}),
    "check-session": frozenset({"session"}),
    "delete-cas": frozenset({"index"}),
}
_USES: dict[str, frozenset[str]] = {
    verb: needed | ({"flags", "encoding"} if "value" in needed else frozenset())
    for verb, needed in _REQUIRES.items()
}
# How many entries Consul returns for each verb of an applied transaction (get-tree: any).
_RESULT_COUNT = {
    "set": 1,
    "cas": 1,
    "lock": 1,
    "unlock": 1,
    "get": 1,
    "check-index": 1,
    "check-session": 1,
}
_RETURNS_VALUE = frozenset({"get", "get-tree"})
# Writes that return the entry they wrote, which carries the transaction's Raft index.
_WRITES_RETURNING = frozenset({"set", "cas", "lock", "unlock"})


class TxnOperation(BaseModel):
    """One KV operation of a transaction. Fields are declared in the order their validators
    read each other: ``verb`` first, ``encoding`` before ``value``."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    verb: TxnVerb
    key: KvPrefix
    encoding: Literal["utf-8", "base64"] | None = Field(None, validate_default=True)
    value: str | bytes | None = Field(None, validate_default=True)
    flags: int | None = Field(None, ge=0, le=UINT64_MAX, validate_default=True)
    index: int | None = Field(None, ge=0, le=UINT64_MAX, validate_default=True)
    session: SessionId | None = Field(None, validate_default=True)

    @field_validator("key")
    @classmethod
    def _key(cls, key: str, info: ValidationInfo) -> str:
        verb = info.data.get("verb")
        if key == "" and verb not in _TREE_VERBS:
            raise ValueError("must not be empty")
        if key == "" and verb == "delete-tree":
            raise ValueError(
                "must not be empty: deleting every key is consul.kv_delete with confirm_root"
            )
        return key

    @field_validator("encoding", "value", "flags", "index", "session")
    @classmethod
    def _used_by_verb(cls, given: Any, info: ValidationInfo) -> Any:
        verb = info.data.get("verb")
        if verb is None:  # the verb itself was refused; that is the error to report
            return given
        name = info.field_name or ""
        if given is None:
            if name in _REQUIRES.get(verb, ()):
                raise ValueError(f"is required by verb {verb!r}")
            return given
        if name not in _USES.get(verb, ()):
            raise ValueError(f"is not used by verb {verb!r}")
        if name == "value":
            return check_value(given, info.data.get("encoding") or "utf-8")
        if name == "index" and given == 0 and verb != "cas":
            # Only cas gives 0 a meaning (create only); check-index and delete-cas never match.
            raise ValueError(f"must be at least 1 for verb {verb!r}")
        return given

    def consul(self) -> dict[str, Any]:
        """This operation in Consul's form (``{"KV": {...}}``, the value base64)."""
        kv: dict[str, Any] = {"Verb": self.verb, "Key": self.key}
        if self.value is not None:
            data = value_bytes(self.value, self.encoding or "utf-8")
            kv["Value"] = base64.b64encode(data).decode("ascii")
        if self.flags is not None:
            kv["Flags"] = self.flags
        if self.index is not None:
            kv["Index"] = self.index
        if self.session is not None:
            kv["Session"] = self.session
        return {"KV": kv}


class TxnPayload(BaseModel):
    """1 to 64 operations, applied atomically."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    operations: list[TxnOperation] = Field(min_length=1, max_length=MAX_TXN_OPERATIONS)

    @field_validator("operations")
    @classmethod
    def _fits_consul(cls, operations: list[TxnOperation]) -> list[TxnOperation]:
        # Values grow by 4/3 in base64: a total already over the limit is refused before
        # anything is encoded. Then the body itself is measured, as Consul will.
        least = sum(_least_bytes(op) for op in operations)
        if least > MAX_TXN_BODY_BYTES * 3 // 4 or len(txn_body(operations)) > MAX_TXN_BODY_BYTES:
            raise ValueError(
                f"must fit in {MAX_TXN_BODY_BYTES} bytes as Consul receives them (values are "
                "sent in base64)"
            )
        return operations


def _least_bytes(op: TxnOperation) -> int:
    """A lower bound of the bytes the operation's value stands for, without decoding it."""
    if op.value is None:
        return 0
    if isinstance(op.value, str) and op.encoding == "base64":
        return max(len(op.value) * 3 // 4 - 2, 0)
    return len(op.value)


def txn_body(operations: list[TxnOperation]) -> bytes:
    """The request body: Consul's operations as compact JSON."""
    return json.dumps([op.consul() for op in operations], separators=(",", ":")).encode("ascii")


def txn_is_idempotent(payload: TxnPayload) -> bool:
    """A read-only transaction can be re-sent; one that writes never is."""
    return not any(op.verb in WRITE_VERBS for op in payload.operations)


async def txn(client: ConsulClient, payload: TxnPayload) -> TxnAppliedResult | TxnRolledBackResult:
    status, answer = await settle(client.txn(txn_body(payload.operations)))
    if status == 409:
        errors: list[TxnError] = [
            {"op_index": int(error.get("OpIndex", 0)), "what": str(error.get("What", ""))}
            for error in (answer or {}).get("Errors") or []
        ]
        return {"applied": False, "errors": errors}
    raw = [item["KV"] for item in (answer or {}).get("Results") or [] if "KV" in item]
    results = _entries(payload.operations, raw)
    return {"applied": True, "results": results, "index": _index(results)}


def _entries(operations: list[TxnOperation], raw: list[dict[str, Any]]) -> list[KvEntry]:
    """Consul's results as KvEntries, each knowing whether its verb returns the value.

    Consul returns the entries of every operation in one list, so which entry came from
    which operation is worked out (:func:`_sources`); a Consul that answers otherwise than
    this model expects gets its values shown as stored.
    """
    verbs = _sources(operations, raw)
    if verbs is None:
        return [_txn_entry(item, True) for item in raw]
    return [_txn_entry(item, verb in _RETURNS_VALUE) for item, verb in zip(raw, verbs, strict=True)]


def _sources(operations: list[TxnOperation], raw: list[dict[str, Any]]) -> list[str] | None:
    """The verb behind each entry, or None when no split of ``raw`` fits the operations.

    The rules a split must follow: every verb but get-tree returns a set number of entries,
    each the key it names; a get-tree returns its prefix's keys in strictly increasing order;
    and in a transaction that writes, an entry carries the transaction's Raft index exactly
    when an earlier operation of it wrote that key (a get-tree before a set of the same key
    shows the old entry, or none). A search tries the longest run for each get-tree first,
    memoised on failures.
    """
    keys = [str(item.get("Key", "")) for item in raw]
    written_before = _written_before(operations)
    index = None
    if raw and any(op.verb in _WRITES_RETURNING for op in operations):
        index = max(int(item.get("ModifyIndex", 0)) for item in raw)
    fresh = [index is not None and int(item.get("ModifyIndex", 0)) == index for item in raw]
    failed: set[tuple[int, int]] = set()

    def fits(i: int, start: int, end: int) -> bool:
        if index is None:
            return True
        if operations[i].verb in _WRITES_RETURNING:
            return all(fresh[start:end])
        return all(fresh[k] == (keys[k] in written_before[i]) for k in range(start, end))

    def split(i: int, position: int) -> list[str] | None:
        if i == len(operations):
            return [] if position == len(keys) else None
        if (i, position) in failed:
            return None
        op = operations[i]
        if op.verb == "get-tree":
            run = position
            while (
                run < len(keys)
                and keys[run].startswith(op.key)
                and (run == position or keys[run] > keys[run - 1])
            ):
                run += 1
            candidates = range(run, position - 1, -1)
        else:
            count = _RESULT_COUNT.get(op.verb, 0)
            named = count == 0 or (position < len(keys) and keys[position] == op.key)
            candidates = range(position + count, position + count + 1) if named else range(0)
        for end in candidates:
            if not fits(i, position, end):
                continue
            rest = split(i + 1, end)
            if rest is not None:
                return [op.verb] * (end - position) + rest
        failed.add((i, position))
        return None

    return split(0, 0)


def _written_before(operations: list[TxnOperation]) -> list[frozenset[str]]:
    """For each operation, the keys earlier operations of the transaction wrote (and did
    not delete since)."""
    out: list[frozenset[str]] = []
    written: set[str] = set()
    for op in operations:
        out.append(frozenset(written))
        if op.verb in _WRITES_RETURNING:
            written.add(op.key)
        elif op.verb in ("delete", "delete-cas"):
            written.discard(op.key)
        elif op.verb == "delete-tree":
            written = {k for k in written if not k.startswith(op.key)}
    return out


def _txn_entry(item: dict[str, Any], with_value: bool) -> KvEntry:
    raw_value = item.get("Value")
    decoded = dict(item, Value=base64.b64decode(raw_value) if raw_value is not None else None)
    result = entry(decoded)
    if not with_value:
        result["value"] = None
        result["encoding"] = None
    return result


def _index(results: list[KvEntry]) -> int | None:
    """The highest modify_index among the results: for a transaction that returns an entry
    it wrote, the Raft index it was applied at (every entry it writes carries it)."""
    return max((result["modify_index"] for result in results), default=None)
