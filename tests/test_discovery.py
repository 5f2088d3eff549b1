"""consul.discover, consul.services and consul.check_update against a real agent, and the
``datacenter`` field that sends an envelope to another datacenter through its own breaker.

Each test registers its own service under a unique name on the shared dev agent (its node is
``shared-dev`` in ``dc1``), so the answers are exact.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from harness import ConsulAgent, CountingProxy
from support import (
    MakeHandler,
    breaker_snapshot,
    envelope,
    execute_ok,
    requests_to,
    uniq,
)

from handler_consul import (
    HandlerConsul,
    InfraConnectionError,
    InfraConsulError,
    InfraUnavailableError,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

NODE = "shared-dev"


async def register(
    handler: HandlerConsul,
    name: str,
    sid: str,
    *,
    status: str | None = "passing",
    **definition: Any,
) -> str:
    """Register ``sid`` of service ``name`` with a TTL check in ``status`` (None: no check)."""
    check = {"ttl": "10m", "status": status} if status is not None else None
    await execute_ok(handler, "register", service_id=sid, name=name, check=check, **definition)
    return sid


async def discover(handler: HandlerConsul, service: str, **payload: Any) -> dict[str, Any]:
    return await execute_ok(handler, "discover", service=service, cache=False, **payload)


def by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in result["instances"]}


def agent_version(agent: ConsulAgent) -> str:
    meta = agent.request("GET", f"/v1/catalog/node/{NODE}").json()["Node"]["Meta"]
    return str(meta["consul-version"])


# -- discover --------------------------------------------------------------------------------


async def test_discover_gives_each_instance_in_the_flat_shape(handler):
    name = uniq("shape")
    await register(
        handler,
        name,
        f"{name}-1",
        address="10.0.0.7",
        port=8443,
        tags=["v1", "blue"],
        meta={"version": "1.2"},
        weights={"passing": 5, "warning": 2},
    )
    await register(handler, name, f"{name}-2", status=None, port=9000)

    result = await discover(handler, name)

    assert set(result) == {"service", "instances", "index", "source", "age_seconds"}
    assert (result["service"], result["source"], result["age_seconds"]) == (name, "consul", 0.0)
    assert isinstance(result["index"], int)
    assert result["index"] > 0
    assert by_id(result) == {
        f"{name}-1": {
            "id": f"{name}-1",
            "service": name,
            "address": "10.0.0.7",
            "port": 8443,
            "tags": ["v1", "blue"],
            "meta": {"version": "1.2"},
            "weights": {"passing": 5, "warning": 2},
            "node": NODE,
            "datacenter": "dc1",
            "status": "passing",
        },
        # No address of its own: the node's. No check: only the node's, which passes.
        f"{name}-2": {
            "id": f"{name}-2",
            "service": name,
            "address": "127.0.0.1",
            "port": 9000,
            "tags": [],
            "meta": {},
            "weights": {"passing": 1, "warning": 1},
            "node": NODE,
            "datacenter": "dc1",
            "status": "passing",
        },
    }


async def test_status_is_the_worst_of_the_instance_checks(handler):
    name = uniq("worst")
    sid = await register(handler, name, f"{name}-1")
    for status in ("warning", "critical", "passing"):
        await execute_ok(handler, "check_update", check_id=f"service:{sid}", status=status)
        (instance,) = (await discover(handler, name, passing_only=False))["instances"]
        assert instance["status"] == status


async def test_passing_only_excludes_a_critical_instance(handler):
    name = uniq("health")
    await register(handler, name, f"{name}-ok")
    await register(handler, name, f"{name}-warn", status="warning")
    await register(handler, name, f"{name}-down", status="critical")

    default = await discover(handler, name)
    assert sorted(by_id(default)) == [f"{name}-ok"]

    everything = await discover(handler, name, passing_only=False)
    assert {i: v["status"] for i, v in by_id(everything).items()} == {
        f"{name}-ok": "passing",
        f"{name}-warn": "warning",
        f"{name}-down": "critical",
    }


async def test_a_tag_filter_narrows_the_set_and_every_tag_must_match(handler):
    name = uniq("tags")
    await register(handler, name, f"{name}-ab", tags=["a", "b"])
    await register(handler, name, f"{name}-a", tags=["a"])
    await register(handler, name, f"{name}-none")

    assert len((await discover(handler, name))["instances"]) == 3
    assert sorted(by_id(await discover(handler, name, tags=["a"]))) == [f"{name}-a", f"{name}-ab"]
    assert sorted(by_id(await discover(handler, name, tags=["a", "b"]))) == [f"{name}-ab"]
    assert (await discover(handler, name, tags=["a", "c"]))["instances"] == []


async def test_node_meta_filters_by_the_node_and_near_is_accepted(handler, consul_agent):
    name = uniq("meta")
    await register(handler, name, f"{name}-1")
    version = agent_version(consul_agent)

    matching = await discover(handler, name, node_meta={"consul-version": version})
    assert sorted(by_id(matching)) == [f"{name}-1"]
    assert (await discover(handler, name, node_meta={"consul-version": "0.0.0"}))["instances"] == []
    for near in ("_agent", NODE, "no-such-node"):
        assert sorted(by_id(await discover(handler, name, near=near))) == [f"{name}-1"]


async def test_an_unknown_service_has_no_instances(handler):
    result = await discover(handler, uniq("nobody"))
    assert result["instances"] == []
    assert result["index"] > 0


async def test_each_filter_reaches_consul_as_its_query_parameter(
    make_handler: MakeHandler, counting_proxy: CountingProxy
):
    handler = await make_handler(counting_proxy)
    name = uniq("params")
    await discover(
        handler,
        name,
        tags=["a", "b"],
        datacenter="dc1",
        near="_agent",
        node_meta={"rack": "r1:x", "zone": "z"},
    )
    await discover(handler, name, passing_only=False)

    first, second = requests_to(counting_proxy, "GET", f"/v1/health/service/{name}")
    target = urlsplit(first.split(" ")[1])
    assert parse_qsl(target.query) == [
        ("tag", "a"),
        ("tag", "b"),
        ("passing", "1"),
        ("dc", "dc1"),
        ("near", "_agent"),
        ("node-meta", "rack:r1:x"),
        ("node-meta", "zone:z"),
    ]
    # passing_only=False sends no filter at all, and no blocking-query parameters ever.
    assert urlsplit(second.split(" ")[1]).query == ""


# -- services ----------------------------------------------------------------------------------


async def test_services_lists_the_catalog_with_each_service_tags(handler):
    name = uniq("catalog")
    await register(handler, name, f"{name}-1", tags=["x"])
    await register(handler, name, f"{name}-2", tags=["y", "x"])

    for payload in ({}, {"datacenter": "dc1"}):
        result = await execute_ok(handler, "services", **payload)
        assert set(result) == {"services", "index"}
        assert sorted(result["services"][name]) == ["x", "y"]
        assert result["services"]["consul"] == []
        assert result["index"] > 0


# -- check_update --------------------------------------------------------------------------------


def agent_check(agent: ConsulAgent, check_id: str) -> dict[str, Any]:
    checks = agent.request("GET", "/v1/agent/checks").json()
    return dict(checks[check_id])


@pytest.mark.parametrize("status", ["passing", "warning", "critical"])
async def test_check_update_sets_the_status_and_output(handler, consul_agent, status):
    name = uniq("ttl")
    sid = await register(handler, name, f"{name}-1", status="critical")
    check_id = f"service:{sid}"
    output = f"from the test: {status} ✓"

    result = await execute_ok(
        handler, "check_update", check_id=check_id, status=status, output=output
    )

    assert result == {"check_id": check_id, "status": status, "updated": True}
    check = agent_check(consul_agent, check_id)
    assert (check["Status"], check["Output"]) == (status, output)


async def test_check_update_of_an_unknown_check_is_a_typed_error_that_says_so(handler):
    check_id = f"service:{uniq('ghost')}"
    with pytest.raises(InfraConsulError) as caught:
        await handler.execute(envelope("check_update", check_id=check_id, status="passing"))
    error = caught.value
    assert f"unknown check {check_id!r}" in error.message
    context = error.context
    assert (context.status_code, context.attempts, context.retryable) == (404, 1, False)
    assert (context.request_sent, context.outcome_unknown) == (True, False)
    # A caller's unknown check is no outage.
    assert breaker_snapshot(handler)["total_failures"] == 0


# -- datacenter ------------------------------------------------------------------------------------


async def test_datacenter_is_sent_as_dc_on_every_operation_that_takes_it(
    make_handler: MakeHandler, counting_proxy: CountingProxy
):
    handler = await make_handler(counting_proxy)
    key = f"{uniq('dc')}/k"
    await execute_ok(handler, "kv_put", key=key, value="v", datacenter="dc1")
    got = await execute_ok(handler, "kv_get", key=key, datacenter="dc1")
    await execute_ok(handler, "services", datacenter="dc1")
    await execute_ok(handler, "discover", service="consul", datacenter="dc1", cache=False)

    assert got["value"] == "v"
    sent = [line.split(" ")[1] for line in counting_proxy.request_lines[-4:]]
    assert [dict(parse_qsl(urlsplit(t).query)).get("dc") for t in sent] == ["dc1"] * 4
    # Each went through the breaker of the datacenter it named.
    assert breaker_snapshot(handler, "dc1")["total_successes"] == 4


async def test_an_unreachable_datacenter_opens_only_its_own_breaker(
    make_tuned_handler: Any, counting_proxy: CountingProxy
):
    handler = await make_tuned_handler(
        counting_proxy, breaker={"failure_threshold": 1}, retry={"max_attempts": 1}
    )
    # Consul answers 500 "No path to datacenter": an outage of that datacenter.
    with pytest.raises(InfraConnectionError) as caught:
        await handler.execute(
            envelope("discover", service="web", datacenter="nowhere", cache=False)
        )
    assert caught.value.context.status_code == 500
    assert (caught.value.context.target, caught.value.context.datacenter) == (
        "consul.nowhere",
        "nowhere",
    )

    before = counting_proxy.requests
    with pytest.raises(InfraUnavailableError) as fast:
        await handler.execute(envelope("services", datacenter="nowhere"))
    assert fast.value.context.request_sent is False
    assert counting_proxy.requests == before
    # The agent's own datacenter is untouched.
    await execute_ok(handler, "services")
    await execute_ok(handler, "kv_get", key=f"{uniq('dc')}/k")
    breakers = handler.describe()["circuit_breakers"]
    assert breakers["consul.nowhere"]["state"] == "open"
    assert breakers["consul.default"]["state"] == "closed"
    assert breakers["consul.default"]["total_failures"] == 0
