"""Which KV-coordination writes are re-sent after an unknown outcome, proved at a proxy that
lets the agent apply a request and then withholds its answer (harness.ForwardThenDrop).

Never re-sent: a CAS delete (its second answer would be false whether or not the first
applied), a transaction that writes, a session creation (a second session nobody would know
of). Re-sent: a plain delete, a read-only transaction, a renewal, a destroy.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from harness import ConsulAgent
from support import envelope, uniq

from handler_consul import InfraConnectionError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def stored(agent: ConsulAgent, key: str) -> bytes | None:
    resp = agent.request("GET", f"/v1/kv/{key}")
    if resp.status == 404:
        return None
    return base64.b64decode(resp.json()[0]["Value"] or "")


def put(agent: ConsulAgent, key: str, value: bytes = b"v") -> int:
    assert agent.request("PUT", f"/v1/kv/{key}", value).status == 200
    return int(agent.request("GET", f"/v1/kv/{key}").json()[0]["ModifyIndex"])


def sessions(agent: ConsulAgent) -> set[str]:
    return {s["ID"] for s in agent.request("GET", "/v1/session/list").json()}


async def dropped_once(make_handler: Any, agent: ConsulAgent, forward_then_drop_for: Any) -> Any:
    proxy = forward_then_drop_for(agent, drop=0)
    handler = await make_handler(proxy, retry={"initial_delay_seconds": 0.0})
    proxy.drop_next(1)
    return proxy, handler


async def assert_not_resent(proxy: Any, handler: Any, env: dict[str, Any]) -> None:
    forwarded = proxy.forwarded
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(env)
    context = caught.value.context
    assert (context.request_sent, context.outcome_unknown, context.attempts) == (True, True, 1)
    assert proxy.forwarded == forwarded + 1  # the one request, applied and unanswered


async def assert_resent(proxy: Any, handler: Any, env: dict[str, Any]) -> dict[str, Any]:
    forwarded = proxy.forwarded
    response = await handler.execute(env)
    assert response.attempts == 2
    assert proxy.forwarded == forwarded + 2
    return dict(response.result)


async def test_a_cas_delete_applied_then_unanswered_is_not_resent(
    make_handler, consul_agent, forward_then_drop_for
):
    key = f"{uniq('drop')}/cas-delete"
    index = put(consul_agent, key)
    proxy, handler = await dropped_once(make_handler, consul_agent, forward_then_drop_for)
    await assert_not_resent(proxy, handler, envelope("kv_delete", key=key, cas=index))
    assert [line.split()[0] for line in proxy.dropped_request_lines] == ["DELETE"]
    assert stored(consul_agent, key) is None  # it was applied


async def test_a_plain_delete_applied_then_unanswered_is_resent(
    make_handler, consul_agent, forward_then_drop_for
):
    key = f"{uniq('drop')}/delete"
    put(consul_agent, key)
    proxy, handler = await dropped_once(make_handler, consul_agent, forward_then_drop_for)
    result = await assert_resent(proxy, handler, envelope("kv_delete", key=key))
    assert result == {"key": key, "deleted": True}
    assert stored(consul_agent, key) is None


async def test_a_writing_transaction_applied_then_unanswered_is_not_resent(
    make_handler, consul_agent, forward_then_drop_for
):
    prefix = uniq("drop")
    index = put(consul_agent, f"{prefix}/counter", b"1")
    ops = [
        {"verb": "check-index", "key": f"{prefix}/counter", "index": index},
        {"verb": "set", "key": f"{prefix}/counter", "value": "2"},
    ]
    proxy, handler = await dropped_once(make_handler, consul_agent, forward_then_drop_for)
    await assert_not_resent(proxy, handler, envelope("txn", operations=ops))
    assert [line.split()[0:2] for line in proxy.dropped_request_lines] == [["PUT", "/v1/txn"]]
    # Applied once: a re-send would have rolled back on the check and reported applied false.
    assert stored(consul_agent, f"{prefix}/counter") == b"2"


async def test_a_read_only_transaction_is_resent(make_handler, consul_agent, forward_then_drop_for):
    key = f"{uniq('drop')}/read"
    put(consul_agent, key, b"r")
    proxy, handler = await dropped_once(make_handler, consul_agent, forward_then_drop_for)
    ops = [{"verb": "get", "key": key}, {"verb": "check-not-exists", "key": f"{key}/none"}]
    result = await assert_resent(proxy, handler, envelope("txn", operations=ops))
    assert result["applied"] is True
    assert [e["value"] for e in result["results"]] == ["r"]


async def test_a_session_create_applied_then_unanswered_is_not_resent(
    make_handler, consul_agent, forward_then_drop_for
):
    before = sessions(consul_agent)
    proxy, handler = await dropped_once(make_handler, consul_agent, forward_then_drop_for)
    await assert_not_resent(proxy, handler, envelope("session_create", ttl="10s"))
    created = sessions(consul_agent) - before
    assert len(created) == 1  # the one request was applied; a re-send would have made two
    (session_id,) = created
    consul_agent.request("PUT", f"/v1/session/destroy/{session_id}")


async def test_renew_and_destroy_are_resent(make_handler, consul_agent, forward_then_drop_for):
    session_id = consul_agent.request("PUT", "/v1/session/create", {"TTL": "10s"}).json()["ID"]
    proxy, handler = await dropped_once(make_handler, consul_agent, forward_then_drop_for)
    renewed = await assert_resent(proxy, handler, envelope("session_renew", session_id=session_id))
    assert renewed == {"session_id": session_id, "renewed": True}
    proxy.drop_next(1)
    destroyed = await assert_resent(
        proxy, handler, envelope("session_destroy", session_id=session_id)
    )
    assert destroyed == {"session_id": session_id, "destroyed": True}
    assert session_id not in sessions(consul_agent)
