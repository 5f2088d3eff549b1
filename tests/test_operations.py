"""Every operation and every result shape of the contract, answered by a real Consul agent."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from support import envelope, uniq

from handler_consul import Envelope, HandlerConsul, HandlerResponse

pytestmark = pytest.mark.usefixtures("clean_consul_env")

UINT64_MAX = 2**64 - 1


async def run(handler: HandlerConsul, operation: str, **payload: Any) -> dict[str, Any]:
    response = await handler.execute(envelope(operation, **payload))
    assert response.status == "success"
    assert response.operation == f"consul.{operation}"
    return dict(response.result)


async def put(handler: HandlerConsul, key: str, value: Any, **kw: Any) -> dict[str, Any]:
    return await run(handler, "kv_put", key=key, value=value, **kw)


async def get(handler: HandlerConsul, key: str, **kw: Any) -> dict[str, Any]:
    return await run(handler, "kv_get", key=key, **kw)


def agent_service(agent: Any, service_id: str) -> dict[str, Any] | None:
    resp = agent.request("GET", f"/v1/agent/service/{service_id}")
    if resp.status == 404:
        return None
    assert resp.status == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def agent_check(agent: Any, service_id: str) -> dict[str, Any]:
    resp = agent.request("GET", "/v1/agent/checks")
    assert resp.status == 200
    (check,) = [c for c in resp.json().values() if c["ServiceID"] == service_id]
    return dict(check)


def found_entry(key: str, value: str, encoding: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The exact single-key kv_get result for a key written once, without lock or flags."""
    return {
        "key": key,
        "found": True,
        "value": value,
        "encoding": encoding,
        "flags": 0,
        "modify_index": entry["modify_index"],
        "create_index": entry["modify_index"],
        "lock_index": 0,
        "session": None,
        "index": entry["modify_index"],
    }


# -- register / deregister -----------------------------------------------------------------


async def test_register_full_definition_lands_on_the_agent(handler, consul_agent):
    sid = uniq("full")
    result = await run(
        handler,
        "register",
        service_id=sid,
        name="payments-api",
        address="10.1.2.3",
        port=8443,
        tags=["v1", "primary"],
        meta={"version": "1.2.3", "team_name": "core-pay"},
        weights={"passing": 7, "warning": 2},
        enable_tag_override=True,
        check={"ttl": "30s", "deregister_critical_service_after": "10m", "name": "ttl-chk"},
    )
    assert result == {"service_id": sid, "name": "payments-api", "registered": True}

    service = agent_service(consul_agent, sid)
    assert service is not None
    assert service["ID"] == sid
    assert service["Service"] == "payments-api"
    assert service["Address"] == "10.1.2.3"
    assert service["Port"] == 8443
    assert service["Tags"] == ["v1", "primary"]
    assert service["Meta"] == {"version": "1.2.3", "team_name": "core-pay"}
    assert service["Weights"] == {"Passing": 7, "Warning": 2}
    assert service["EnableTagOverride"] is True
    check = agent_check(consul_agent, sid)
    assert check["Type"] == "ttl"
    assert check["Name"] == "ttl-chk"
    assert check["ServiceName"] == "payments-api"


async def test_register_port_zero_and_no_tag_override_are_sent_not_dropped(handler, consul_agent):
    sid = uniq("zero")
    await run(handler, "register", service_id=sid, name="zero", port=0)
    service = agent_service(consul_agent, sid)
    assert service is not None
    assert service["Port"] == 0
    assert service["EnableTagOverride"] is False
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    assert service["Tags"] == []
    assert service["Meta"] == {}


async def test_register_without_service_id_uses_the_name(handler, consul_agent):
    name = uniq("byname")
    result = await run(handler, "register", name=name)
    assert result == {"service_id": name, "name": name, "registered": True}
    assert agent_service(consul_agent, name) is not None


@pytest.mark.parametrize(
    ("kind", "check_type"),
    [("http", "http"), ("tcp", "tcp"), ("grpc", "grpc")],
)
async def test_register_interval_checks(handler, consul_agent, kind, check_type):
    sid = uniq(kind)
    target = {
        "http": "http://127.0.0.1:9/health",
        "tcp": consul_agent.http_addr,
        "grpc": f"{consul_agent.http_addr}/health",
    }[kind]
    check = {kind: target, "interval": "15s", "timeout": "3s"}
    result = await run(handler, "register", service_id=sid, name="chk", port=1, check=check)
    assert result == {"service_id": sid, "name": "chk", "registered": True}
    landed = agent_check(consul_agent, sid)
    assert landed["Type"] == check_type
    assert landed["Interval"] == "15s"
    assert landed["Timeout"] == "3s"


async def test_register_http_check_method_and_status(handler, consul_agent):
    sid = uniq("httpm")
    check = {
        "http": "http://127.0.0.1:9/health",
        "method": "HEAD",
        "interval": "20s",
        "status": "warning",
        "notes": "head probe",
    }
    await run(handler, "register", service_id=sid, name="m", check=check)
    landed = agent_check(consul_agent, sid)
    assert landed["Type"] == "http"
    assert landed["Notes"] == "head probe"
    assert landed["Interval"] == "20s"


async def test_register_is_an_upsert(handler, consul_agent):
    sid = uniq("upsert")
    await run(handler, "register", service_id=sid, name="u", port=1, tags=["a"])
    await run(handler, "register", service_id=sid, name="u", port=2, tags=["b"])
    service = agent_service(consul_agent, sid)
    assert service is not None
    assert (service["Port"], service["Tags"]) == (2, ["b"])


async def test_deregister_true_then_false(handler, consul_agent):
    sid = uniq("dereg")
    await run(handler, "register", service_id=sid, name="d")
    assert await run(handler, "deregister", service_id=sid) == {
        "service_id": sid,
        "deregistered": True,
    }
    assert agent_service(consul_agent, sid) is None
    assert await run(handler, "deregister", service_id=sid) == {
        "service_id": sid,
        "deregistered": False,
    }


async def test_deregister_never_registered_is_false(handler):
    sid = uniq("never")
    assert await run(handler, "deregister", service_id=sid) == {
        "service_id": sid,
        "deregistered": False,
    }


# The reference handler's own pattern document (shared/seeds/002_...txt), copied verbatim.
SEED_REGISTER = {
    "operation": "consul.register",
    "payload": {
        "consul_service_id": "node-effect-123",
        "name": "my-onex-node",
        "address": "192.168.1.100",
        "port": 8080,
    },
}
SEED_DEREGISTER = {
    "operation": "consul.deregister",
    "payload": {
        "consul_service_id": "node-effect-123",
    },
}


async def test_reference_handler_payloads_work_unchanged(handler, consul_agent):
    reg = await handler.execute({**SEED_REGISTER, "correlation_id": str(uuid.uuid4())})
    assert reg.result == {
        "service_id": "node-effect-123",
        "name": "my-onex-node",
        "registered": True,
    }
    service = agent_service(consul_agent, "node-effect-123")
    assert service is not None
    assert (service["Service"], service["Address"], service["Port"]) == (
        "my-onex-node",
        "192.168.1.100",
        8080,
    )
    dereg = await handler.execute({**SEED_DEREGISTER, "correlation_id": str(uuid.uuid4())})
    assert dereg.result == {"service_id": "node-effect-123", "deregistered": True}
    assert agent_service(consul_agent, "node-effect-123") is None


async def test_reference_model_example_with_tags_and_meta(handler, consul_agent):
    # ModelConsulRegisterPayload's example, as a dict (uniquified id: the agent is shared).
    sid = uniq("node-effect")
    payload = {
        "consul_service_id": sid,
        "name": "my-onex-node",
        "address": "192.168.1.100",
        "port": 8080,
        "tags": ["onex", "effect-node"],
        "meta": {"version": "1.0.0"},
    }
    response = await handler.execute({"operation": "consul.register", "payload": payload})
    assert response.result == {"service_id": sid, "name": "my-onex-node", "registered": True}
    service = agent_service(consul_agent, sid)
    assert service is not None
    assert service["Tags"] == ["onex", "effect-node"]
    assert service["Meta"] == {"version": "1.0.0"}


# -- kv_put / kv_get round trips -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["30", '{"timeout": 30}', "héllo wörld ✓ 日本語 🚀", "line1\nline2\ttab", " "],
    ids=["plain", "json", "unicode", "whitespace", "space"],
)
async def test_text_round_trip(handler, value):
    key = f"{uniq('ops')}/text"
    assert await put(handler, key, value) == {"key": key, "applied": True}
    got = await get(handler, key)
    assert got == found_entry(key, value, "utf-8", got)
    assert isinstance(got["modify_index"], int)
    assert got["modify_index"] > 0


async def test_binary_bytes_come_back_as_base64(handler, consul_agent):
    key = f"{uniq('ops')}/bin"
    raw = b"\x00\xff\xfe\x80binary\x00"
    assert await put(handler, key, raw) == {"key": key, "applied": True}
    got = await get(handler, key)
    assert got == found_entry(key, base64.b64encode(raw).decode(), "base64", got)
    # And Consul really holds the raw bytes, not their base64 text.
    assert consul_agent.request("GET", f"/v1/kv/{key}?raw").body == raw


async def test_base64_input_is_decoded_before_storing(handler, consul_agent):
    key = f"{uniq('ops')}/b64"
    encoded = base64.b64encode(b"hello").decode()
    await put(handler, key, encoded, encoding="base64")
    assert consul_agent.request("GET", f"/v1/kv/{key}?raw").body == b"hello"
    got = await get(handler, key)
    assert got == found_entry(key, "hello", "utf-8", got)


async def test_base64_input_of_binary_round_trips(handler):
    key = f"{uniq('ops')}/b64bin"
    encoded = base64.b64encode(bytes(range(256))).decode()
    await put(handler, key, encoded, encoding="base64")
    got = await get(handler, key)
    assert got == found_entry(key, encoded, "base64", got)


async def test_empty_value_round_trips_as_empty_text(handler):
    key = f"{uniq('ops')}/empty"
    assert await put(handler, key, "") == {"key": key, "applied": True}
    got = await get(handler, key)
    assert got == found_entry(key, "", "utf-8", got)


@pytest.mark.parametrize("flags", [0, 1, 42, 2**32, UINT64_MAX])
async def test_flags_round_trip_up_to_uint64_max(handler, flags):
    key = f"{uniq('ops')}/flags"
    await put(handler, key, "v", flags=flags)
    got = await get(handler, key)
    assert got == {**found_entry(key, "v", "utf-8", got), "flags": flags}
    assert type(got["flags"]) is int


async def test_overwrite_keeps_create_index(handler):
    key = f"{uniq('ops')}/over"
    await put(handler, key, "one")
    first = await get(handler, key)
    await put(handler, key, "two")
    second = await get(handler, key)
    assert second["value"] == "two"
    assert second["create_index"] == first["create_index"]
    assert second["modify_index"] > first["modify_index"]


async def test_kv_get_not_found(handler):
    key = f"{uniq('ops')}/missing"
    got = await get(handler, key)
    index = got.pop("index")
    assert got == {
        "key": key,
        "found": False,
        "value": None,
        "encoding": None,
        "flags": None,
        "modify_index": None,
        "create_index": None,
        "lock_index": None,
        "session": None,
    }
    assert type(index) is int
    assert index > 0


# -- CAS and locks ---------------------------------------------------------------------------


async def test_cas_success_and_miss(handler):
    key = f"{uniq('cas')}/k"
    await put(handler, key, "v1")
    index = (await get(handler, key))["modify_index"]
    assert await put(handler, key, "v2", cas=index) == {"key": key, "applied": True}
    # The same (now stale) index misses and leaves the value alone.
    assert await put(handler, key, "v3", cas=index) == {"key": key, "applied": False}
    assert (await get(handler, key))["value"] == "v2"


async def test_cas_zero_is_create_only(handler):
    key = f"{uniq('cas')}/create"
    assert await put(handler, key, "first", cas=0) == {"key": key, "applied": True}
    assert await put(handler, key, "second", cas=0) == {"key": key, "applied": False}
    assert (await get(handler, key))["value"] == "first"


def create_session(agent: Any) -> str:
    resp = agent.request("PUT", "/v1/session/create", {"TTL": "60s", "Behavior": "release"})
    assert resp.status == 200, resp.text
    session_id: str = resp.json()["ID"]
    return session_id


def destroy_session(agent: Any, session_id: str) -> None:
    agent.request("PUT", f"/v1/session/destroy/{session_id}")


async def test_acquire_and_release_with_a_real_session(handler, consul_agent):
    key = f"{uniq('lock')}/leader"
    mine = create_session(consul_agent)
    theirs = create_session(consul_agent)
    try:
        assert await put(handler, key, "me", acquire=mine) == {"key": key, "applied": True}
        got = await get(handler, key)
        assert got["session"] == mine
        assert got["lock_index"] == 1
        assert got["value"] == "me"
        # Held: another session cannot take it, and cannot release it.
        assert await put(handler, key, "them", acquire=theirs) == {"key": key, "applied": False}
        assert await put(handler, key, "them", release=theirs) == {"key": key, "applied": False}
        assert (await get(handler, key))["session"] == mine
        # The holder releases it; the other session may then acquire it.
        assert await put(handler, key, "free", release=mine) == {"key": key, "applied": True}
        released = await get(handler, key)
        assert released["session"] is None
        assert released["value"] == "free"
        assert await put(handler, key, "them", acquire=theirs) == {"key": key, "applied": True}
        final = await get(handler, key)
        assert (final["session"], final["lock_index"]) == (theirs, 2)
    finally:
        destroy_session(consul_agent, mine)
        destroy_session(consul_agent, theirs)


# -- recurse and keys_only ---------------------------------------------------------------------


async def test_recurse_returns_items_sorted_as_consul_does(handler):
    prefix = f"{uniq('rec')}/"
    for name, value in [("b", "2"), ("a", "1"), ("c/d", "4"), ("bb", "3")]:
        await put(handler, prefix + name, value)
    await put(handler, prefix + "raw", b"\xff\x00")
    got = await get(handler, prefix, recurse=True)
    assert set(got) == {"prefix", "found", "items", "index"}
    assert got["prefix"] == prefix
    assert got["found"] is True
    assert type(got["index"]) is int
    keys = [item["key"] for item in got["items"]]
    assert keys == sorted(keys)
    assert keys == [prefix + n for n in ("a", "b", "bb", "c/d", "raw")]
    values = {
        item["key"][len(prefix) :]: (item["value"], item["encoding"]) for item in got["items"]
    }
    assert values == {
        "a": ("1", "utf-8"),
        "b": ("2", "utf-8"),
        "bb": ("3", "utf-8"),
        "c/d": ("4", "utf-8"),
        "raw": ("/wA=", "base64"),
    }
    for item in got["items"]:
        assert set(item) == {
            "key",
            "value",
            "encoding",
            "flags",
            "modify_index",
            "create_index",
            "lock_index",
            "session",
        }
        for field in ("flags", "modify_index", "create_index", "lock_index"):
            assert type(item[field]) is int
        assert item["session"] is None
    assert got["index"] == max(item["modify_index"] for item in got["items"])


async def test_recurse_on_empty_prefix_is_not_found(handler):
    prefix = f"{uniq('rec-none')}/"
    got = await get(handler, prefix, recurse=True)
    index = got.pop("index")
    assert got == {"prefix": prefix, "found": False, "items": []}
    assert type(index) is int


async def test_keys_only_with_and_without_separator(handler):
    prefix = f"{uniq('keys')}/"
    for name in ("x", "dir/one", "dir/two", "y"):
        await put(handler, prefix + name, "v")
    flat = await get(handler, prefix, keys_only=True)
    assert flat["prefix"] == prefix
    assert flat["keys"] == [prefix + n for n in ("dir/one", "dir/two", "x", "y")]
    assert type(flat["index"]) is int
    assert set(flat) == {"prefix", "keys", "index"}
    folded = await get(handler, prefix, keys_only=True, separator="/")
    assert folded["keys"] == [prefix + "dir/", prefix + "x", prefix + "y"]
    assert set(folded) == {"prefix", "keys", "index"}


async def test_keys_only_on_empty_prefix(handler):
    prefix = f"{uniq('keys-none')}/"
    got = await get(handler, prefix, keys_only=True)
    index = got.pop("index")
    assert got == {"prefix": prefix, "keys": []}
    assert type(index) is int


@pytest.mark.parametrize(
    ("consistency", "query"),
    [("default", None), ("stale", "stale"), ("consistent", "consistent")],
)
async def test_consistency_modes_reach_consul(
    make_handler, counting_proxy, consul_agent, consistency, query
):
    handler = await make_handler(counting_proxy)
    key = f"{uniq('cons')}/k"
    assert consul_agent.request("PUT", f"/v1/kv/{key}", b"v").status == 200
    counting_proxy.reset()
    got = await get(handler, key, consistency=consistency)
    assert got["value"] == "v"
    (path,) = counting_proxy.paths
    assert path.startswith(f"/v1/kv/{key}")
    params = path.partition("?")[2].split("&") if "?" in path else []
    if query is None:
        assert "stale" not in params
        assert "consistent" not in params
    else:
        assert query in params or any(p.startswith(f"{query}=") for p in params)


async def test_every_index_is_an_int(handler):
    prefix = f"{uniq('idx')}/"
    await put(handler, prefix + "k", "v")
    results = [
        await get(handler, prefix + "k"),
        await get(handler, prefix + "missing"),
        await get(handler, prefix, recurse=True),
        await get(handler, prefix, keys_only=True),
    ]
    for result in results:
        assert type(result["index"]) is int, result
        assert result["index"] > 0


# -- envelope in, response out ---------------------------------------------------------------


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
