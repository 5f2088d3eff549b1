"""The endpoint strategies as pure logic: instance lists in, one instance out, a scripted RNG.

The same strategies run against a real agent in tests/test_endpoint.py; here each rule is
pinned exactly, with the randomness replaced by the values a test chooses.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from handler_consul._balance import MAX_ROTATIONS, Balancer, healthy
from handler_consul._results import ServiceInstance


def inst(
    id: str,
    status: str = "passing",
    *,
    passing: int = 1,
    warning: int = 1,
    node: str = "n1",
    dc: str = "dc1",
) -> ServiceInstance:
    return {
        "id": id,
        "service": "web",
        "address": "127.0.0.1",
        "port": 8000,
        "tags": [],
        "meta": {},
        "weights": {"passing": passing, "warning": warning},
        "node": node,
        "datacenter": dc,
        "status": status,  # type: ignore[typeddict-item]
    }


def scripted(values: Iterable[float]) -> Any:
    it = iter(values)
    return lambda: next(it)


THREE = [inst("a"), inst("b"), inst("c")]


def ids(picks: Iterable[ServiceInstance | None]) -> list[str | None]:
    return [p["id"] if p is not None else None for p in picks]


def test_round_robin_visits_each_in_turn():
    balancer = Balancer()
    assert ids(balancer.pick("q", THREE, "round_robin") for _ in range(7)) == list("abcabca")


def test_round_robin_keeps_one_rotation_per_query():
    balancer = Balancer()
    assert ids([balancer.pick("q1", THREE, "round_robin")]) == ["a"]
    assert ids([balancer.pick("q2", THREE, "round_robin")]) == ["a"]
    assert ids([balancer.pick("q1", THREE, "round_robin")]) == ["b"]


def test_round_robin_keeps_turning_when_the_set_shrinks():
    balancer = Balancer()
    balancer.pick("q", THREE, "round_robin")
    balancer.pick("q", THREE, "round_robin")
    # Third pick over two instances: turn 2 lands on index 0.
    assert ids([balancer.pick("q", THREE[:2], "round_robin")]) == ["a"]


def test_rotations_are_bounded_and_the_oldest_goes():
    balancer = Balancer()
    for n in range(MAX_ROTATIONS + 10):
        balancer.pick(("q", n), THREE, "round_robin")
    assert len(balancer._rotations) == MAX_ROTATIONS
    assert ("q", 0) not in balancer._rotations
    assert ("q", MAX_ROTATIONS + 9) in balancer._rotations


def test_critical_instances_are_never_picked():
    mixed = [inst("a", "critical"), inst("b", "warning"), inst("c", "passing")]
    assert ids(healthy(mixed)) == ["b", "c"]
    balancer = Balancer(rng=scripted([0.0, 0.99]))
    assert ids(balancer.pick("q", mixed, "round_robin") for _ in range(4)) == list("bcbc")
    assert ids(balancer.pick("q", mixed, "random") for _ in range(2)) == ["b", "c"]


@pytest.mark.parametrize("strategy", ["round_robin", "random", "weighted", "least_connections"])
def test_no_healthy_instance_picks_none(strategy):
    balancer = Balancer(rng=scripted([0.5]))
    assert balancer.pick("q", [inst("a", "critical")], strategy) is None
    assert balancer.pick("q", [], strategy) is None


def test_random_maps_the_unit_interval_onto_the_candidates():
    balancer = Balancer(rng=scripted([0.0, 0.34, 0.67, 0.999999]))
    assert ids(balancer.pick("q", THREE, "random") for _ in range(4)) == list("abcc")


def test_weighted_uses_the_passing_weight_of_passing_instances():
    pool = [inst("a", passing=1), inst("b", passing=3)]
    # Cumulative weights: a covers [0, 1), b covers [1, 4) of 4.
    balancer = Balancer(rng=scripted([0.0, 0.2499, 0.25, 0.999]))
    assert ids(balancer.pick("q", pool, "weighted") for _ in range(4)) == list("aabb")


def test_weighted_uses_the_warning_weight_of_warning_instances():
    pool = [inst("a", "warning", passing=10, warning=1), inst("b", passing=3)]
    balancer = Balancer(rng=scripted([0.2, 0.26]))  # a covers [0, 1) of 4
    assert ids(balancer.pick("q", pool, "weighted") for _ in range(2)) == ["a", "b"]


def test_weighted_never_picks_a_warning_weight_of_zero():
    pool = [inst("a", "warning", warning=0), inst("b")]
    balancer = Balancer(rng=scripted([0.0, 0.5, 0.999]))
    assert ids(balancer.pick("q", pool, "weighted") for _ in range(3)) == ["b", "b", "b"]
    assert Balancer(rng=scripted([0.3])).pick("q", pool[:1], "weighted") is None


def test_weighted_follows_the_weights_over_many_picks():
    pool = [inst("a", passing=1), inst("b", passing=2), inst("c", passing=7)]
    balancer = Balancer(rng=random.Random(7).random)
    counts = Counter(ids(balancer.pick("q", pool, "weighted") for _ in range(10_000)))
    # Binomial standard deviation of each share is at most 0.005: 4 sigma is 0.02.
    for name, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert abs(counts[name] / 10_000 - share) < 0.02, counts


def test_least_connections_picks_the_fewest_held_leases():
    balancer = Balancer()
    a, b, c = THREE
    keys = [balancer.acquire(a), balancer.acquire(a), balancer.acquire(b)]
    assert ids([balancer.pick("q", THREE, "least_connections")]) == ["c"]
    balancer.acquire(c)
    balancer.acquire(c)
    assert ids([balancer.pick("q", THREE, "least_connections")]) == ["b"]
    for key in keys:
        balancer.release(key)
    assert (balancer.held(a), balancer.held(b), balancer.held(c)) == (0, 0, 2)


def test_least_connections_rotates_among_ties():
    balancer = Balancer()
    assert ids(balancer.pick("q", THREE, "least_connections") for _ in range(4)) == list("abca")


def test_least_connections_spreads_leases_evenly_when_each_is_held():
    balancer = Balancer()
    for _ in range(9):
        picked = balancer.pick("q", THREE, "least_connections")
        assert picked is not None
        balancer.acquire(picked)
    assert [balancer.held(i) for i in THREE] == [3, 3, 3]


def test_leases_count_per_node_and_datacenter():
    balancer = Balancer()
    here, there = inst("a", node="n1"), inst("a", node="n2")
    key = balancer.acquire(here)
    assert (balancer.held(here), balancer.held(there)) == (1, 0)
    balancer.release(key)
    balancer.release(key)  # one release too many leaves nothing negative behind
    assert balancer.held(here) == 0
    assert balancer._held == {}


def test_every_strategy_picks_only_from_what_it_was_given():
    pool = [inst(f"i{n}", status) for n, status in enumerate(["passing", "warning"] * 3)]
    balancer = Balancer(rng=random.Random(3).random)
    for strategy in ("round_robin", "random", "weighted", "least_connections"):
        picks = [balancer.pick("q", pool, strategy) for _ in range(50)]
        assert all(picked in pool for picked in picks), strategy
