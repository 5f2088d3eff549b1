"""Two datacenters, two single-server agents WAN-joined on loopback: envelopes name a
datacenter, are forwarded there by the local agent, and each datacenter has its own breaker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness import ConsulAgent, TwoDatacenters
from support import CountFor, MakeHandler, envelope, execute_ok, uniq

from handler_consul import HandlerConsul, InfraError, InfraUnavailableError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def register_on(agent: ConsulAgent, name: str, sid: str, port: int) -> None:
    body = {"ID": sid, "Name": name, "Port": port, "Tags": ["remote"]}
    resp = agent.request("PUT", "/v1/agent/service/register", body)
    assert resp.status == 200, resp.text


async def discovered(handler: HandlerConsul, name: str, datacenter: str, count: int) -> Any:
    """Poll (uncached) until ``count`` instances show in ``datacenter``'s catalog."""
    deadline = time.monotonic() + 10
    while True:
        result = await execute_ok(
            handler, "discover", service=name, datacenter=datacenter, cache=False
        )
        if len(result["instances"]) == count or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_discover_in_dc2_through_a_dc1_agent(
    make_handler: MakeHandler, two_datacenters: TwoDatacenters
) -> None:
    dc1, dc2 = two_datacenters.dc1, two_datacenters.dc2
    name = uniq("wan")
    register_on(dc2, name, f"{name}-1", 7001)
    handler = await make_handler(dc1)

    result = await discovered(handler, name, "dc2", 1)

    assert result["instances"] == [
        {
            "id": f"{name}-1",
            "service": name,
            "address": "127.0.0.1",
            "port": 7001,
            "tags": ["remote"],
            "meta": {},
            "weights": {"passing": 1, "warning": 1},
            "node": dc2.name,
            "datacenter": "dc2",
            "status": "passing",
        }
    ]
    # dc1's own catalog has no such service; the cache watches dc2 through dc1 as well.
    assert (await execute_ok(handler, "discover", service=name, cache=False))["instances"] == []
    cached = await execute_ok(handler, "discover", service=name, datacenter="dc2")
    assert [i["datacenter"] for i in cached["instances"]] == ["dc2"]
    assert name in (await execute_ok(handler, "services", datacenter="dc2"))["services"]
    assert name not in (await execute_ok(handler, "services"))["services"]
    picked = await execute_ok(handler, "endpoint", service=name, datacenter="dc2")
    assert (picked["instance_id"], picked["port"]) == (f"{name}-1", 7001)

    key = f"{uniq('wan')}/k"
    await execute_ok(handler, "kv_put", key=key, value="in dc2", datacenter="dc2")
    assert (await execute_ok(handler, "kv_get", key=key, datacenter="dc2"))["value"] == "in dc2"
    assert (await execute_ok(handler, "kv_get", key=key))["found"] is False

    breakers = handler.describe()["circuit_breakers"]
    assert {"consul.default", "consul.dc2"} <= set(breakers)
    assert breakers["consul.dc2"]["total_successes"] >= 5
    assert breakers["consul.dc2"]["total_failures"] == 0


async def test_dc2_down_fails_fast_once_its_breaker_opens_while_dc1_keeps_working(
    make_tuned_handler: Any, two_datacenters: TwoDatacenters, counting_proxy_for: CountFor
) -> None:
    dc1, dc2 = two_datacenters.dc1, two_datacenters.dc2
    proxy = counting_proxy_for(dc1)
    handler = await make_tuned_handler(
        proxy,
        breaker={"failure_threshold": 3, "reset_timeout_seconds": 60.0},
        retry={"max_attempts": 1},
    )
    key = f"{uniq('dc1')}/k"
    await execute_ok(handler, "services", datacenter="dc2")

    dc2.kill()

    # dc2's envelopes fail (forwarded to a dead server) until its breaker opens.
    failures: list[str] = []
    for _ in range(10):
        try:
            await handler.execute(envelope("services", datacenter="dc2"))
        except InfraUnavailableError:
            break
        except InfraError as error:
            failures.append(type(error).__name__)
        # dc1 is served throughout, by its own breaker.
        await execute_ok(handler, "kv_put", key=key, value=str(len(failures)))
    assert len(failures) == 3, failures
    assert handler.describe()["circuit_breakers"]["consul.dc2"]["state"] == "open"

    # From now on dc2 fails fast: nothing is sent, and each refusal takes microseconds.
    sent = proxy.requests
    started = time.perf_counter()
    for op, payload in [
        ("services", {}),
        ("discover", {"service": "web", "cache": False}),
        ("discover", {"service": "web"}),
        ("endpoint", {"service": "web"}),
        ("kv_get", {"key": key}),
        ("kv_put", {"key": key, "value": "x"}),
    ] * 5:
        with pytest.raises(InfraUnavailableError) as caught:
            await handler.execute(envelope(op, datacenter="dc2", **payload))
        assert caught.value.context.request_sent is False
        assert caught.value.context.target == "consul.dc2"
    assert time.perf_counter() - started < 0.5  # 30 refusals
    assert proxy.requests == sent

    # ... while dc1's envelopes all succeed and its breaker counts nothing.
    for _ in range(20):
        await execute_ok(handler, "kv_put", key=key, value="dc1")
        assert (await execute_ok(handler, "kv_get", key=key))["value"] == "dc1"
        await execute_ok(handler, "services")
        await execute_ok(handler, "discover", service="consul", cache=False)
    home = handler.describe()["circuit_breakers"]["consul.default"]
    assert (home["state"], home["total_failures"]) == ("closed", 0)
