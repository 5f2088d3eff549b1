"""Envelope in, response out: ids echoed or generated, a frozen response with an exact JSON
wire form, an ``Envelope`` model accepted like a dict; and the hot-path constructors that skip
pydantic's generic machinery build the same objects validation would."""

from __future__ import annotations

import json
import uuid

import pydantic
import pytest
from support import envelope, uniq

from handler_consul import Envelope, HandlerResponse
from handler_consul._envelope import new_correlation_id


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
    ids = [new_correlation_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:200]:
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value
        assert value == uuid.UUID(int=value.int, version=4)
        assert hash(value) == hash(uuid.UUID(str(value)))


# -- envelope in, response out, through a real agent -----------------------------------------


async def test_response_echoes_ids_and_has_a_json_wire_form(handler):
    key = f"{uniq('resp')}/k"
    correlation_id = uuid.uuid4()
    envelope_id = uuid.uuid4()
    response = await handler.execute(
        {
            "operation": "consul.kv_put",
            "payload": {"key": key, "value": "30"},
            "correlation_id": str(correlation_id),
            "envelope_id": str(envelope_id),
            "timeout_seconds": 5.0,
        }
    )
    assert isinstance(response, HandlerResponse)
    assert response.correlation_id == correlation_id
    assert response.envelope_id == envelope_id
    assert response.attempts == 1
    assert isinstance(response.duration_ms, float)
    assert response.duration_ms > 0
    wire = response.model_dump(mode="json")
    assert wire == {
        "status": "success",
        "operation": "consul.kv_put",
        "correlation_id": str(correlation_id),
        "envelope_id": str(envelope_id),
        "result": {"key": key, "applied": True},
        "attempts": 1,
        "duration_ms": response.duration_ms,
    }
    assert json.loads(json.dumps(wire)) == wire


async def test_correlation_id_is_generated_when_absent(handler):
    first = await handler.execute(envelope("kv_get", key=f"{uniq('gen')}/k"))
    second = await handler.execute(envelope("kv_get", key=f"{uniq('gen')}/k"))
    assert isinstance(first.correlation_id, uuid.UUID)
    assert first.correlation_id.version == 4
    assert first.correlation_id != second.correlation_id
    assert first.envelope_id is None
    assert first.model_dump(mode="json")["envelope_id"] is None


async def test_response_is_frozen(handler):
    response = await handler.execute(envelope("kv_get", key=f"{uniq('frz')}/k"))
    with pytest.raises(Exception, match="frozen"):
        response.attempts = 2  # type: ignore[misc]


async def test_envelope_model_works_like_a_dict(handler):
    key = f"{uniq('model')}/k"
    correlation_id = uuid.uuid4()
    put_response = await handler.execute(
        Envelope(
            operation="consul.kv_put",
            payload={"key": key, "value": "from-model"},
            correlation_id=correlation_id,
        )
    )
    assert put_response.result == {"key": key, "applied": True}
    assert put_response.correlation_id == correlation_id
    from_model = await handler.execute(Envelope(operation="consul.kv_get", payload={"key": key}))
    from_dict = await handler.execute({"operation": "consul.kv_get", "payload": {"key": key}})
    assert from_model.result == from_dict.result
    assert from_model.result["value"] == "from-model"
