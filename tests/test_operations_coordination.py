"""consul.kv_delete, consul.txn and the session operations, answered by a real Consul agent:
what each deletes or applies (read back from the agent itself), CAS misses, the whole-tree
guard, transactions that apply all or nothing and name the failing operation, sessions whose
TTL, lock-delay and behaviour Consul really holds, and kv_put's acquire/release with them."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from harness import ConsulAgent
from support import execute_ok, uniq

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def agent_get(agent: ConsulAgent, key: str) -> dict[str, Any] | None:
    """The entry as the agent itself holds it (None when missing), bypassing the handler."""
    resp = agent.request("GET", f"/v1/kv/{key}")
    if resp.status == 404:
        return None
    assert resp.status == 200, resp.text
    entry: dict[str, Any] = resp.json()[0]
    return entry


def agent_put(agent: ConsulAgent, key: str, value: bytes = b"v") -> int:
    assert agent.request("PUT", f"/v1/kv/{key}", value).status == 200
    entry = agent_get(agent, key)
    assert entry is not None
    return int(entry["ModifyIndex"])


def agent_keys(agent: ConsulAgent, prefix: str) -> list[str]:
    resp = agent.request("GET", f"/v1/kv/{prefix}?keys")
    if resp.status == 404:
        return []
    keys: list[str] = resp.json()
    return keys


def session_info(agent: ConsulAgent, session_id: str) -> dict[str, Any] | None:
    resp = agent.request("GET", f"/v1/session/info/{session_id}")
    assert resp.status == 200, resp.text
    found = resp.json()
    return found[0] if found else None


# -- kv_delete -------------------------------------------------------------------------------


async def test_delete_one_key_leaves_its_neighbours(handler, consul_agent):
    prefix = uniq("del")
    for name in ("a", "ab", "a/child"):
        agent_put(consul_agent, f"{prefix}/{name}")
    result = await execute_ok(handler, "kv_delete", key=f"{prefix}/a")
    assert result == {"key": f"{prefix}/a", "deleted": True}
    assert agent_keys(consul_agent, prefix) == [f"{prefix}/a/child", f"{prefix}/ab"]


async def test_delete_of_a_missing_key_is_deleted_true(handler, consul_agent):
    key = f"{uniq('del')}/never"
    assert await execute_ok(handler, "kv_delete", key=key) == {"key": key, "deleted": True}
    assert agent_get(consul_agent, key) is None


async def test_recursive_delete_takes_the_prefix_only(handler, consul_agent):
    prefix = uniq("del")
    for name in ("dir/x", "dir/y/z", "dirt", "other"):
        agent_put(consul_agent, f"{prefix}/{name}")
    result = await execute_ok(handler, "kv_delete", key=f"{prefix}/dir/", recurse=True)
    assert result == {"key": f"{prefix}/dir/", "deleted": True}
    assert agent_keys(consul_agent, prefix) == [f"{prefix}/dirt", f"{prefix}/other"]


async def test_cas_delete_matches_the_modify_index_only(handler, consul_agent):
    key = f"{uniq('del')}/cas"
    index = agent_put(consul_agent, key, b"one")
    agent_put(consul_agent, key, b"two")  # the index moved on
    assert await execute_ok(handler, "kv_delete", key=key, cas=index) == {
        "key": key,
        "deleted": False,
    }
    current = agent_get(consul_agent, key)
    assert current is not None
    assert base64.b64decode(current["Value"]) == b"two"
    result = await execute_ok(handler, "kv_delete", key=key, cas=current["ModifyIndex"])
    assert result == {"key": key, "deleted": True}
    assert agent_get(consul_agent, key) is None


async def test_deleting_the_whole_tree_with_confirm_root(make_handler, fresh_consul_agent):
    """On a private agent: every key goes, in one envelope that says so twice."""
    handler = await make_handler(fresh_consul_agent)
    for key in ("a", "b/c", "d/e/f"):
        agent_put(fresh_consul_agent, key)
    result = await execute_ok(handler, "kv_delete", key="", recurse=True, confirm_root=True)
    assert result == {"key": "", "deleted": True}
    assert agent_keys(fresh_consul_agent, "") == []


# -- txn -------------------------------------------------------------------------------------


def op(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"verb": verb, "key": key, **fields}


async def test_txn_sets_and_reads_in_one_index(handler, consul_agent):
    prefix = uniq("txn")
    result = await execute_ok(
        handler,
        "txn",
        operations=[
            op("set", f"{prefix}/a", value="1"),
            op(
                "set",
                f"{prefix}/b",
                value=base64.b64encode(b"\xff\x00").decode(),
                encoding="base64",
            ),
            op("set", f"{prefix}/c", value="3", flags=7),
            op("get", f"{prefix}/a"),
            op("get-tree", f"{prefix}/"),
        ],
    )
    assert result["applied"] is True
    assert set(result) == {"applied", "results", "index"}
    entries = result["results"]
    index = result["index"]
    assert isinstance(index, int)
    # set x3 (no values: Consul leaves them out), get, then get-tree's three entries.
    assert [(e["key"], e["value"], e["encoding"]) for e in entries] == [
        (f"{prefix}/a", None, None),
        (f"{prefix}/b", None, None),
        (f"{prefix}/c", None, None),
        (f"{prefix}/a", "1", "utf-8"),
        (f"{prefix}/a", "1", "utf-8"),
        (f"{prefix}/b", "/wA=", "base64"),
        (f"{prefix}/c", "3", "utf-8"),
    ]
    assert {e["modify_index"] for e in entries} == {index}
    assert entries[2]["flags"] == 7
    stored = agent_get(consul_agent, f"{prefix}/b")
    assert stored is not None
    assert base64.b64decode(stored["Value"]) == b"\xff\x00"
    assert stored["ModifyIndex"] == index


async def test_txn_empty_values_read_back_as_empty_text(handler):
    key = f"{uniq('txn')}/empty"
    result = await execute_ok(handler, "txn", operations=[op("set", key, value=""), op("get", key)])
    assert [(e["value"], e["encoding"]) for e in result["results"]] == [(None, None), ("", "utf-8")]


async def test_txn_rollback_names_every_failing_operation_and_applies_nothing(
    handler, consul_agent
):
    prefix = uniq("txn")
    index = agent_put(consul_agent, f"{prefix}/guard")
    agent_put(consul_agent, f"{prefix}/exists")
    result = await execute_ok(
        handler,
        "txn",
        operations=[
            op("set", f"{prefix}/new", value="x"),
            op("check-index", f"{prefix}/guard", index=index + 1000),
            op("delete", f"{prefix}/exists"),
            op("check-not-exists", f"{prefix}/guard"),
        ],
    )
    assert result["applied"] is False
    assert set(result) == {"applied", "errors"}
    assert [e["op_index"] for e in result["errors"]] == [1, 3]
    assert "index" in result["errors"][0]["what"]
    # Nothing applied: the new key is absent, the deleted one still there.
    assert agent_get(consul_agent, f"{prefix}/new") is None
    assert agent_get(consul_agent, f"{prefix}/exists") is not None


async def test_txn_cas_delete_cas_and_check_index(handler, consul_agent):
    prefix = uniq("txn")
    a = agent_put(consul_agent, f"{prefix}/a")
    b = agent_put(consul_agent, f"{prefix}/b")
    result = await execute_ok(
        handler,
        "txn",
        operations=[
            op("check-index", f"{prefix}/a", index=a),
            op("cas", f"{prefix}/a", value="next", index=a),
            op("delete-cas", f"{prefix}/b", index=b),
            op("cas", f"{prefix}/c", value="created", index=0),
        ],
    )
    assert result["applied"] is True
    keys = [e["key"] for e in result["results"]]
    assert keys == [f"{prefix}/a", f"{prefix}/a", f"{prefix}/c"]
    assert result["results"][0]["modify_index"] == a  # the check saw the entry before the cas
    assert result["index"] == result["results"][1]["modify_index"] > a
    assert agent_get(consul_agent, f"{prefix}/b") is None
    created = agent_get(consul_agent, f"{prefix}/c")
    assert created is not None
    assert base64.b64decode(created["Value"]) == b"created"


async def test_txn_delete_tree_and_an_index_of_none(handler, consul_agent):
    prefix = uniq("txn")
    for name in ("t/1", "t/2", "keep"):
        agent_put(consul_agent, f"{prefix}/{name}")
    result = await execute_ok(handler, "txn", operations=[op("delete-tree", f"{prefix}/t/")])
    assert result == {"applied": True, "results": [], "index": None}
    assert agent_keys(consul_agent, prefix) == [f"{prefix}/keep"]


async def test_txn_lock_check_session_and_unlock_with_a_real_session(handler, consul_agent):
    key = f"{uniq('txn')}/lock"
    created = await execute_ok(handler, "session_create", ttl="30s")
    session = created["session_id"]
    try:
        locked = await execute_ok(
            handler,
            "txn",
            operations=[
                op("lock", key, value="me", session=session),
                op("check-session", key, session=session),
            ],
        )
        assert locked["applied"] is True
        assert [(e["session"], e["lock_index"]) for e in locked["results"]] == [
            (session, 1),
            (session, 1),
        ]
        unlocked = await execute_ok(
            handler, "txn", operations=[op("unlock", key, value="free", session=session)]
        )
        assert unlocked["applied"] is True
        assert unlocked["results"][0]["session"] is None
        held = agent_get(consul_agent, key)
        assert held is not None
        assert "Session" not in held or held["Session"] in (None, "")
        assert base64.b64decode(held["Value"]) == b"free"
    finally:
        await execute_ok(handler, "session_destroy", session_id=session)


async def test_txn_64_operations_fail_together_on_one_stale_check_index(handler, consul_agent):
    """The must-show pair: 63 sets and one stale check-index apply nothing and name the
    check; the same 64 with a current index apply all at one Raft index."""
    prefix = uniq("txn64")
    guard = f"{prefix}/guard"
    index = agent_put(consul_agent, guard)
    sets = [op("set", f"{prefix}/k{i:02d}", value=str(i)) for i in range(63)]
    failing = await execute_ok(
        handler,
        "txn",
        operations=[*sets[:40], op("check-index", guard, index=index + 1), *sets[40:]],
    )
    assert failing == {
        "applied": False,
        "errors": [{"op_index": 40, "what": failing["errors"][0]["what"]}],
    }
    assert agent_keys(consul_agent, f"{prefix}/k") == []
    passing = await execute_ok(
        handler, "txn", operations=[*sets[:40], op("check-index", guard, index=index), *sets[40:]]
    )
    assert passing["applied"] is True
    assert len(passing["results"]) == 64
    written = [e for e in passing["results"] if e["key"] != guard]
    assert len(written) == 63
    assert {e["modify_index"] for e in written} == {passing["index"]}
    stored = consul_agent.request("GET", f"/v1/kv/{prefix}/k?recurse").json()
    assert len(stored) == 63
    assert {entry["ModifyIndex"] for entry in stored} == {passing["index"]}


# -- sessions --------------------------------------------------------------------------------


async def test_session_create_holds_what_was_asked(handler, consul_agent):
    name = uniq("sess")
    created = await execute_ok(
        handler,
        "session_create",
        name=name,
        ttl="1m30s",
        behavior="delete",
        lock_delay="0s",
        checks=[],
    )
    session = created["session_id"]
    assert set(created) == {"session_id"}
    try:
        info = session_info(consul_agent, session)
        assert info is not None
        assert (info["Name"], info["TTL"], info["Behavior"], info["LockDelay"]) == (
            name,
            "90s",
            "delete",
            0,
        )
        assert not info.get("NodeChecks")
        assert not info.get("Checks")
    finally:
        await execute_ok(handler, "session_destroy", session_id=session)


async def test_session_create_defaults_are_consuls(handler, consul_agent):
    session = (await execute_ok(handler, "session_create"))["session_id"]
    try:
        info = session_info(consul_agent, session)
        assert info is not None
        assert (info["Behavior"], info["LockDelay"], info["TTL"]) == ("release", 15 * 10**9, "")
        assert info["NodeChecks"] == ["serfHealth"]
        assert (
            info["Node"]
            == consul_agent.request("GET", "/v1/agent/self").json()["Config"]["NodeName"]
        )
    finally:
        await execute_ok(handler, "session_destroy", session_id=session)


async def test_session_renew_and_destroy(handler, consul_agent):
    session = (await execute_ok(handler, "session_create", ttl="10s"))["session_id"]
    renewed = await execute_ok(handler, "session_renew", session_id=session)
    assert renewed == {"session_id": session, "renewed": True}
    destroyed = await execute_ok(handler, "session_destroy", session_id=session)
    assert destroyed == {"session_id": session, "destroyed": True}
    assert session_info(consul_agent, session) is None
    gone = await execute_ok(handler, "session_renew", session_id=session)
    assert gone == {"session_id": session, "renewed": False}
    # Destroying again is harmless: Consul answers true for a session it does not know.
    again = await execute_ok(handler, "session_destroy", session_id=session)
    assert again == {"session_id": session, "destroyed": True}


async def test_kv_put_acquire_and_release_with_created_sessions(handler, consul_agent):
    key = f"{uniq('lock')}/leader"
    mine = (await execute_ok(handler, "session_create", ttl="30s"))["session_id"]
    theirs = (await execute_ok(handler, "session_create", ttl="30s"))["session_id"]
    try:
        put = await execute_ok(handler, "kv_put", key=key, value="me", acquire=mine)
        assert put == {"key": key, "applied": True}
        taken = await execute_ok(handler, "kv_put", key=key, value="them", acquire=theirs)
        assert taken == {"key": key, "applied": False}
        released = await execute_ok(handler, "kv_put", key=key, value="free", release=mine)
        assert released == {"key": key, "applied": True}
        now = await execute_ok(handler, "kv_put", key=key, value="them", acquire=theirs)
        assert now == {"key": key, "applied": True}
        held = agent_get(consul_agent, key)
        assert held is not None
        assert (held["Session"], held["LockIndex"]) == (theirs, 2)
    finally:
        for session in (mine, theirs):
            await execute_ok(handler, "session_destroy", session_id=session)


@pytest.mark.parametrize(("behavior", "survives"), [("release", True), ("delete", False)])
async def test_destroying_a_session_releases_or_deletes_its_keys(
    handler, consul_agent, behavior, survives
):
    key = f"{uniq('lock')}/{behavior}"
    session = (await execute_ok(handler, "session_create", behavior=behavior, lock_delay="0s"))[
        "session_id"
    ]
    await execute_ok(handler, "kv_put", key=key, value="held", acquire=session)
    await execute_ok(handler, "session_destroy", session_id=session)
    held = agent_get(consul_agent, key)
    if survives:
        assert held is not None
        assert not held.get("Session")
    else:
        assert held is None
