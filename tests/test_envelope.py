"""Hot-path constructors that skip pydantic's generic machinery must build the same objects."""

from __future__ import annotations

import uuid

import pydantic
import pytest

from handler_consul import HandlerResponse
from handler_consul._handler import _new_correlation_id


def _values() -> dict[str, object]:
    return {
        "operation": "consul.kv_get",
        "correlation_id": uuid.uuid4(),
        "envelope_id": uuid.uuid4(),
        "result": {"key": "k", "found": True, "index": 7},
        "attempts": 2,
        "duration_ms": 1.25,
    }


def test_trusted_response_equals_model_construct() -> None:
    values = _values()
    fast = HandlerResponse.trusted(**values)  # type: ignore[arg-type]
    slow = HandlerResponse.model_construct(status="success", **values)
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump(mode="json") == slow.model_dump(mode="json")
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    assert repr(fast) == repr(slow)
    # And it is what validation would have produced from the same values.
    assert fast == HandlerResponse.model_validate({"status": "success", **values})


def test_trusted_response_is_frozen_and_copyable() -> None:
    fast = HandlerResponse.trusted(**_values())  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        fast.attempts = 3  # type: ignore[misc]
    copy = fast.model_copy(update={"attempts": 5})
    assert (copy.attempts, fast.attempts) == (5, 2)
    assert fast.model_fields_set is not copy.model_fields_set


def test_correlation_ids_are_rfc4122_version_4() -> None:
    ids = [_new_correlation_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:200]:
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value
        assert value == uuid.UUID(int=value.int, version=4)
        assert hash(value) == hash(uuid.UUID(str(value)))
