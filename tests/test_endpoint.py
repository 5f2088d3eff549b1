"""consul.endpoint and HandlerConsul.lease() over three instances registered on a real agent:
each strategy, the health and tag filters, and the fallback."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import pytest
from support import envelope, execute_ok, uniq

from handler_consul import HandlerConsul, InfraUnavailableError, InfraValidationError

pytestmark = pytest.mark.usefixtures("clean_consul_env")

WEIGHTS = {"a": 1, "b": 2, "c": 7}


async def three(handler: HandlerConsul, **extra: Any) -> tuple[str, dict[str, str]]:
    """A service with instances ``<name>-a/-b/-c`` (passing weights 1, 2, 7; ports 7001-3)."""
    name = uniq("ep")
    ids = {}
    for n, (suffix, weight) in enumerate(WEIGHTS.items(), start=1):
        ids[suffix] = sid = f"{name}-{suffix}"
        await execute_ok(
            handler,
            "register",
            service_id=sid,
            name=name,
            port=7000 + n,
            tags=[suffix],
            weights={"passing": weight, "warning": 1},
            check={"ttl": "10m", "status": "passing"},
            **extra,
        )
    return name, ids


async def picks(handler: HandlerConsul, name: str, n: int, **payload: Any) -> list[str]:
    found = []
    for _ in range(n):
        result = await execute_ok(handler, "endpoint", service=name, **payload)
        found.append(result["instance_id"])
    return found


async def test_the_endpoint_is_one_instance_in_the_result_shape(handler):
    name, ids = await three(handler)
    result = await execute_ok(handler, "endpoint", service=name, tags=["b"])
    assert result == {
        "service": name,
        "address": "127.0.0.1",
        "port": 7002,
        "instance_id": ids["b"],
        "source": "consul",
        "age_seconds": 0.0,
    }


@pytest.mark.parametrize("cache", [True, False])
async def test_round_robin_visits_each_instance_in_turn(handler, cache):
    name, ids = await three(handler)
    seen = await picks(handler, name, 9, cache=cache)
    assert sorted(seen[:3]) == sorted(ids.values())
    assert seen == seen[:3] * 3


async def test_random_covers_all_three(handler):
    name, ids = await three(handler)
    counts = Counter(await picks(handler, name, 300, strategy="random"))
    assert set(counts) == set(ids.values())
    # Each expects 100 (binomial sd ~8): under 50 would be over six standard deviations.
    assert min(counts.values()) > 50, counts


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[k] - e) ** 2 / e for k, e in expected.items())


# The chi-square statistic with 2 degrees of freedom exceeds 27.6 with probability 1e-6.
CHI2_2DF_1E6 = 27.6


async def test_weighted_follows_consuls_weights_over_3000_picks(handler):
    name, ids = await three(handler)
    counts = Counter(await picks(handler, name, 3000, strategy="weighted"))
    total = sum(WEIGHTS.values())
    expected = {ids[k]: 3000 * w / total for k, w in WEIGHTS.items()}
    assert chi_square(counts, expected) < CHI2_2DF_1E6, (counts, expected)
    for sid, e in expected.items():
        assert abs(counts[sid] - e) / 3000 < 0.04, (counts, expected)


async def test_weighted_counts_a_warning_instance_by_its_warning_weight(handler):
    name = uniq("warnw")
    for sid, status, weights in [
        (f"{name}-ok", "passing", {"passing": 1, "warning": 50}),
        (f"{name}-warn", "warning", {"passing": 50, "warning": 3}),
        (f"{name}-down", "critical", {"passing": 50, "warning": 50}),
    ]:
        check = {"ttl": "10m", "status": status}
        await execute_ok(
            handler, "register", service_id=sid, name=name, weights=weights, check=check
        )
    counts = Counter(await picks(handler, name, 3000, strategy="weighted", passing_only=False))
    assert set(counts) == {f"{name}-ok", f"{name}-warn"}  # never the critical one
    expected = {f"{name}-ok": 750.0, f"{name}-warn": 2250.0}
    # One degree of freedom here: 23.9 has probability 1e-6.
    assert chi_square(counts, expected) < 23.9, counts


async def test_least_connections_picks_the_instance_with_the_fewest_held_leases(handler):
    name, ids = await three(handler)
    held: Counter[str] = Counter({sid: 0 for sid in ids.values()})
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(10):
            lease = await stack.enter_async_context(
                handler.lease(name, strategy="least_connections")
            )
            sid = lease["instance_id"]
            assert held[sid] == min(held.values()), (sid, held)
            held[sid] += 1
        assert sorted(held.values()) == [3, 3, 4]
        busiest = max(held, key=held.__getitem__)
        # One more lease on each of the others makes the busiest the only one not least...
        async with (
            handler.lease(name, strategy="least_connections") as one,
            handler.lease(name, strategy="least_connections") as two,
        ):
            assert {one["instance_id"], two["instance_id"]} == set(held) - {busiest}
            # ... and every count is 4: the next goes to any, in rotation.
            async with handler.lease(name, strategy="least_connections") as three_:
                assert three_["instance_id"] in held
    # Every lease was released: with none held, least_connections rotates over all three.
    assert sorted(await lease_ids(handler, name, 3)) == sorted(ids.values())


async def lease_ids(handler: HandlerConsul, name: str, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        async with handler.lease(name, strategy="least_connections") as lease:
            seen.append(lease["instance_id"])
    return seen


async def test_leases_count_for_every_strategy_and_end_with_the_block(handler):
    name, _ = await three(handler)
    async with handler.lease(name, strategy="random") as first:
        tag = first["instance_id"][-1]
        async with (
            handler.lease(name, tags=[tag]) as same,
            handler.lease(name, strategy="least_connections") as other,
        ):
            assert same["instance_id"] == first["instance_id"]
            assert other["instance_id"] != first["instance_id"]
    balancer = handler._services.balancer
    assert balancer._held == {}


async def test_endpoint_passing_only_excludes_a_critical_instance(handler):
    name, ids = await three(handler)
    await execute_ok(handler, "check_update", check_id=f"service:{ids['c']}", status="critical")
    for strategy in ("round_robin", "random", "weighted"):
        assert set(await picks(handler, name, 30, strategy=strategy)) == {ids["a"], ids["b"]}
    # Without passing_only Consul returns it too; a critical instance is still never picked.
    assert ids["c"] not in await picks(handler, name, 30, passing_only=False)


async def test_a_tag_filter_narrows_the_candidates(handler):
    name, ids = await three(handler)
    assert set(await picks(handler, name, 9, tags=["c"])) == {ids["c"]}
    async with handler.lease(name, tags=["a"]) as lease:
        assert lease["instance_id"] == ids["a"]


async def test_with_no_healthy_instance_the_fallback_is_the_answer(handler):
    name = uniq("none")
    result = await execute_ok(handler, "endpoint", service=name, fallback="10.9.8.7:8080")
    assert result == {
        "service": name,
        "address": "10.9.8.7",
        "port": 8080,
        "instance_id": None,
        "source": "fallback",
        "age_seconds": None,
    }
    v6 = await execute_ok(handler, "endpoint", service=name, fallback="[::1]:9")
    assert (v6["address"], v6["port"]) == ("::1", 9)
    async with handler.lease(name, fallback="backup.internal:443") as lease:
        assert (lease["address"], lease["port"], lease["source"]) == (
            "backup.internal",
            443,
            "fallback",
        )


async def test_with_no_healthy_instance_and_no_fallback_a_typed_error_says_so(handler):
    name = uniq("none")
    with pytest.raises(InfraUnavailableError) as caught:
        await handler.execute(envelope("endpoint", service=name))
    assert caught.value.message == (
        f"consul.endpoint: no healthy instance of {name!r} and no fallback"
    )
    assert caught.value.context.operation == "consul.endpoint"
    assert caught.value.context.request_sent is False
    with pytest.raises(InfraUnavailableError, match="no healthy instance"):
        async with handler.lease(name):
            pass


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"strategy": "fastest"}, "strategy"),
        ({"strategy": 1}, "strategy"),
        ({"fallback": "nohost"}, "fallback"),
        ({"fallback": "h:0"}, "fallback"),
        ({"fallback": "::1:80"}, "fallback"),
        ({"fallback": "a b:80"}, "fallback"),
        ({"tags": "a"}, "payload.tags"),
        ({"datacenter": "dc/2"}, "payload.datacenter"),
        ({"weights": {}}, "payload.weights"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": "5"}, "timeout_seconds"),
    ],
)
async def test_lease_refuses_bad_options_naming_them(handler, options, field):
    with pytest.raises(InfraValidationError) as caught:
        async with handler.lease("web", **options):
            pass
    assert caught.value.context.field == field
    assert caught.value.context.request_sent is False


async def test_a_handler_that_is_not_running_gets_no_fallback_from_lease(
    make_handler: Any, consul_agent: Any
) -> None:
    """The fallback stands in for Consul, not for a handler someone shut down."""
    handler = await make_handler(consul_agent)
    await handler.shutdown()
    with pytest.raises(InfraUnavailableError, match="shut down"):
        async with handler.lease("web", fallback="10.0.0.1:80"):
            pass
