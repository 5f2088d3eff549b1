"""Registrations the handler maintains (``consul.register`` with ``maintain: true``) against
real agents: the TTL check kept passing, the registration restored after the agent loses it
(restart, anti-entropy loss, a change behind the handler's back), and the upkeep ended by
deregister and by shutdown."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent
from support import envelope, execute_ok, uniq

from handler_consul import HandlerConsul, InfraValidationError

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def check_status(agent: ConsulAgent, check_id: str) -> str | None:
    """The agent's view of a check's status (None: it has no such check)."""
    try:
        resp = agent.request("GET", "/v1/agent/checks", timeout=0.5)
    except OSError:
        return None
    check = resp.json().get(check_id) if resp.status == 200 else None
    return None if check is None else str(check["Status"])


def agent_service(agent: ConsulAgent, service_id: str) -> dict[str, Any] | None:
    resp = agent.request("GET", f"/v1/agent/service/{service_id}")
    return resp.json() if resp.status == 200 else None


async def maintain(handler: HandlerConsul, sid: str, **definition: Any) -> None:
    definition.setdefault("check", {"ttl": "3s"})
    await execute_ok(handler, "register", service_id=sid, name=sid, maintain=True, **definition)


async def until(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` (in a thread: it asks the agent) until true; the monotonic time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


# -- kept passing --------------------------------------------------------------------------


async def test_a_3s_ttl_check_stays_passing_for_15s_with_no_caller_help(handler, consul_agent):
    sid = uniq("keep")
    await maintain(handler, sid)
    check_id = f"service:{sid}"
    assert check_status(consul_agent, check_id) == "passing"  # passing when register returns

    samples = []
    started = time.monotonic()
    while time.monotonic() - started < 15.0:
        samples.append(await asyncio.to_thread(check_status, consul_agent, check_id))
        await asyncio.sleep(0.25)
    assert len(samples) >= 40
    assert set(samples) == {"passing"}, samples
    output = consul_agent.request("GET", "/v1/agent/checks").json()[check_id]["Output"]
    assert output == "kept passing by handler-consul"

    (shown,) = [m for m in handler.describe()["maintained"] if m["service_id"] == sid]
    assert shown["check_id"] == check_id
    assert shown["heartbeat_seconds"] == 1.0
    assert shown["last_confirmed_seconds_ago"] < 1.5
    assert shown["restored"] == 0
    assert shown["last_error"] is None


# -- restored --------------------------------------------------------------------------------


@pytest.fixture
def server_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    """A single server whose state lives on disk (it survives a restart)."""
    agent = ConsulAgent(consul_bin, name="keeper", dev=False, base_dir=tmp_path)
    try:
        agent.start()
        yield agent
    finally:
        agent.close()


async def test_agent_killed_and_restarted_has_the_registration_passing_within_2s(
    make_tuned_handler: Any, server_agent: ConsulAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = await make_tuned_handler(server_agent)
    sid = uniq("restart")
    check_id = f"service:{sid}"
    await maintain(handler, sid)

    server_agent.kill()
    # Down for longer than the TTL: whatever the agent kept of the check has expired.
    await asyncio.sleep(4.0)
    server_agent.start(wait=False)
    http_up = await until(lambda: _leader(server_agent) is not None, 30, "HTTP answering")
    leader = await until(lambda: bool(_leader(server_agent)), 30, "a leader elected")
    # "Answering": the agent answers a read of its own state. A restarting single server
    # holds those (and check updates) until it has synced with the leader it elected.
    answering = await until(lambda: _state_readable(server_agent), 30, "the agent answering")
    back = await until(
        lambda: (
            check_status(server_agent, check_id) == "passing"
            and agent_service(server_agent, sid) is not None
        ),
        5,
        "the registration back and passing",
    )
    took = back - answering
    with capsys.disabled():
        print(
            f"\nmaintained registration back {took * 1000:.0f} ms after the agent answered "
            f"(HTTP port up {(back - http_up) * 1000:.0f} ms before, "
            f"leader {(back - leader) * 1000:.0f} ms before)"
        )
    assert took < 2.0
    # ... and it stays so: the upkeep goes on on its own.
    for _ in range(12):
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(check_status, server_agent, check_id) == "passing"
    (shown,) = handler.describe()["maintained"]
    assert shown["last_error"] is None
    assert shown["last_confirmed_seconds_ago"] < 1.5


def _state_readable(agent: ConsulAgent) -> bool:
    try:
        return agent.request("GET", "/v1/agent/services", timeout=0.5).status == 200
    except OSError:
        return False


def _leader(agent: ConsulAgent) -> str | None:
    """The leader the agent names ("" for none yet), None while it does not answer."""
    try:
        return agent.leader_addr(timeout=0.5)
    except OSError:
        return None


async def test_an_agent_restarted_without_its_state_gets_it_back_from_the_heartbeat(
    make_tuned_handler: Any, fresh_consul_agent: ConsulAgent
) -> None:
    """The agent comes back without the services and checks it kept on disk: the heartbeat
    is answered 404 ("unknown check") and the upkeep registers the service again."""
    handler = await make_tuned_handler(fresh_consul_agent)
    sid = uniq("lost")
    await maintain(handler, sid, port=7100, tags=["t"])

    fresh_consul_agent.stop()
    for kept in ("services", "checks"):
        shutil.rmtree(fresh_consul_agent.data_dir / kept, ignore_errors=True)
    fresh_consul_agent.start()
    answering = time.monotonic()
    await until(
        lambda: check_status(fresh_consul_agent, f"service:{sid}") == "passing",
        2.0,
        "the registration restored and passing",
    )
    assert time.monotonic() - answering < 2.0
    service = agent_service(fresh_consul_agent, sid)
    assert service is not None
    assert (service["Port"], service["Tags"]) == (7100, ["t"])
    (shown,) = handler.describe()["maintained"]
    assert shown["restored"] == 1


async def test_a_registration_removed_behind_the_handlers_back_comes_back(handler, consul_agent):
    sid = uniq("gone")
    await maintain(handler, sid)
    resp = consul_agent.request("PUT", f"/v1/agent/service/deregister/{sid}")
    assert resp.status == 200
    await until(
        lambda: check_status(consul_agent, f"service:{sid}") == "passing",
        2.5,
        "restored after an out-of-band deregistration",
    )
    (shown,) = [m for m in handler.describe()["maintained"] if m["service_id"] == sid]
    assert shown["restored"] == 1


async def test_the_periodic_comparison_restores_a_service_without_a_ttl_check(
    make_tuned_handler: Any, consul_agent: ConsulAgent
) -> None:
    handler = await make_tuned_handler(consul_agent, maintain={"compare_interval_seconds": 0.3})
    lost, changed = uniq("nocheck"), uniq("changed")
    await maintain(handler, lost, check=None)
    await maintain(handler, changed, check=None, port=7200)

    consul_agent.request("PUT", f"/v1/agent/service/deregister/{lost}")
    body = {"ID": changed, "Name": changed, "Port": 9999}
    consul_agent.request("PUT", "/v1/agent/service/register", body)

    def restored() -> dict[str, int]:
        return {m["service_id"]: m["restored"] for m in handler.describe()["maintained"]}

    await until(lambda: restored() == {lost: 1, changed: 1}, 2, "both restored")
    assert agent_service(consul_agent, lost) is not None
    assert (agent_service(consul_agent, changed) or {}).get("Port") == 7200


# -- ended ---------------------------------------------------------------------------------------


async def test_deregister_ends_the_upkeep_for_good(handler, consul_agent):
    sid = uniq("dereg")
    await maintain(handler, sid)
    result = await execute_ok(handler, "deregister", service_id=sid)
    assert result == {"service_id": sid, "deregistered": True}
    assert handler.describe()["maintained"] == []
    await asyncio.sleep(2.5)  # more than two heartbeats: none brings it back
    assert agent_service(consul_agent, sid) is None


async def test_registering_again_without_maintain_ends_the_upkeep(handler, consul_agent):
    sid = uniq("taken")
    await maintain(handler, sid)
    await execute_ok(handler, "register", service_id=sid, name=sid, check={"ttl": "3s"})
    assert handler.describe()["maintained"] == []
    await until(
        lambda: check_status(consul_agent, f"service:{sid}") == "critical",
        5,
        "the TTL to lapse once nobody passes it",
    )


async def test_shutdown_deregisters_every_maintained_service(
    make_handler: Any, consul_agent: ConsulAgent
) -> None:
    handler = await make_handler(consul_agent)
    ids = [uniq("bye") for _ in range(3)]
    for sid in ids:
        await maintain(handler, sid)
    await handler.shutdown()
    assert [agent_service(consul_agent, sid) for sid in ids] == [None, None, None]
    assert handler.describe()["maintained"] == []


async def test_shutdown_can_leave_them_registered(make_handler: Any, consul_agent: ConsulAgent):
    handler = await make_handler(consul_agent, maintain={"deregister_on_shutdown": False})
    sid = uniq("stay")
    await maintain(handler, sid)
    await handler.shutdown()
    assert agent_service(consul_agent, sid) is not None
    consul_agent.request("PUT", f"/v1/agent/service/deregister/{sid}")


async def test_a_reinitialize_keeps_maintaining(handler, consul_agent):
    sid = uniq("reinit")
    await maintain(handler, sid)
    await handler.initialize()
    for _ in range(10):
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(check_status, consul_agent, f"service:{sid}") == "passing"
    assert [m["service_id"] for m in handler.describe()["maintained"]] == [sid]


async def test_a_maintained_ttl_under_a_second_is_refused(handler):
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(
            envelope("register", name="fast", check={"ttl": "900ms"}, maintain=True)
        )
    assert caught.value.context.field == "payload.maintain"


@pytest.mark.parametrize("sid", ["register", "deregister"])
async def test_an_id_that_names_another_agent_endpoint_is_compared_correctly(
    make_tuned_handler: Any, fresh_consul_agent: ConsulAgent, sid: str
) -> None:
    """``/v1/agent/service/<id>`` with these IDs is another endpoint (405): the upkeep reads
    the agent's list instead, so it still sees the service go and restores it."""
    handler = await make_tuned_handler(
        fresh_consul_agent, maintain={"compare_interval_seconds": 0.3}
    )
    await maintain(handler, sid, check=None, port=7300)
    await asyncio.sleep(0.7)  # two comparisons that found it in place
    (shown,) = handler.describe()["maintained"]
    assert (shown["restored"], shown["last_error"]) == (0, None)

    fresh_consul_agent.request("PUT", f"/v1/agent/service/deregister/{sid}")
    await until(
        lambda: [m["restored"] for m in handler.describe()["maintained"]] == [1],
        2,
        "restored",
    )
    assert (agent_service_listed(fresh_consul_agent, sid) or {}).get("Port") == 7300


def agent_service_listed(agent: ConsulAgent, service_id: str) -> dict[str, Any] | None:
    found = agent.request("GET", "/v1/agent/services").json().get(service_id)
    return None if found is None else dict(found)
