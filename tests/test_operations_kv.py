"""consul.kv_put and consul.kv_get, answered by a real Consul agent: every value shape round
trips (text, binary, base64, empty, flags up to 2**64-1), CAS and locks with real sessions,
recurse and keys_only listings, consistency modes on the wire, and every index an int."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from support import execute_ok, uniq

from handler_consul import HandlerConsul

pytestmark = pytest.mark.usefixtures("clean_consul_env")

UINT64_MAX = 2**64 - 1


async def put(handler: HandlerConsul, key: str, value: Any, **kw: Any) -> dict[str, Any]:
    return await execute_ok(handler, "kv_put", key=key, value=value, **kw)


async def get(handler: HandlerConsul, key: str, **kw: Any) -> dict[str, Any]:
    return await execute_ok(handler, "kv_get", key=key, **kw)


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


# -- recurse and keys_only -------------------------------------------------------------------


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
