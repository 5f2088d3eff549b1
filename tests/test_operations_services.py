"""consul.register and consul.deregister, answered by a real Consul agent: every field of a
service definition lands on the agent, checks of every kind, upserts, deregistering what is
there and what is not, and the reference handler's payloads unchanged."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support import execute_ok, uniq

pytestmark = pytest.mark.usefixtures("clean_consul_env")


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


# -- register / deregister -------------------------------------------------------------------


async def test_register_full_definition_lands_on_the_agent(handler, consul_agent):
    sid = uniq("full")
    result = await execute_ok(
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
    await execute_ok(handler, "register", service_id=sid, name="zero", port=0)
    service = agent_service(consul_agent, sid)
    assert service is not None
    assert service["Port"] == 0
    assert service["EnableTagOverride"] is False
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    assert service["Tags"] == []
    assert service["Meta"] == {}


async def test_register_without_service_id_uses_the_name(handler, consul_agent):
    name = uniq("byname")
    result = await execute_ok(handler, "register", name=name)
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
    result = await execute_ok(handler, "register", service_id=sid, name="chk", port=1, check=check)
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
    await execute_ok(handler, "register", service_id=sid, name="m", check=check)
    landed = agent_check(consul_agent, sid)
    assert landed["Type"] == "http"
    assert landed["Notes"] == "head probe"
    assert landed["Interval"] == "20s"


async def test_register_is_an_upsert(handler, consul_agent):
    sid = uniq("upsert")
    await execute_ok(handler, "register", service_id=sid, name="u", port=1, tags=["a"])
    await execute_ok(handler, "register", service_id=sid, name="u", port=2, tags=["b"])
    service = agent_service(consul_agent, sid)
    assert service is not None
    assert (service["Port"], service["Tags"]) == (2, ["b"])


async def test_deregister_true_then_false(handler, consul_agent):
    sid = uniq("dereg")
    await execute_ok(handler, "register", service_id=sid, name="d")
    assert await execute_ok(handler, "deregister", service_id=sid) == {
        "service_id": sid,
        "deregistered": True,
    }
    assert agent_service(consul_agent, sid) is None
    assert await execute_ok(handler, "deregister", service_id=sid) == {
        "service_id": sid,
        "deregistered": False,
    }


async def test_deregister_never_registered_is_false(handler):
    sid = uniq("never")
    assert await execute_ok(handler, "deregister", service_id=sid) == {
        "service_id": sid,
        "deregistered": False,
    }


# -- the reference handler's payloads --------------------------------------------------------


# Envelopes exactly as callers of the reference handler send them (``consul_service_id``).
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
