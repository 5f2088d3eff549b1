"""Picking one instance of a service: the strategies, as pure logic over instance lists.

- ``round_robin`` visits the candidates in Consul's order, one step per pick, with one
  counter per query (so two services do not share a rotation);
- ``random`` picks uniformly;
- ``weighted`` follows Consul's own ``Weights``: a passing instance counts with its passing
  weight, a warning one with its warning weight (Consul allows 0 there: never picked);
- ``least_connections`` picks the instance with the fewest leases held in this process,
  rotating among ties so equal counts spread the load.

Candidates are the healthy instances: passing or warning, never critical. The RNG is
injected so the tests can drive the strategies without real randomness.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import Literal

from handler_consul._results import ServiceInstance

__all__ = ["STRATEGIES", "Balancer", "InstanceKey", "Strategy", "healthy", "instance_key"]

Strategy = Literal["round_robin", "random", "weighted", "least_connections"]
STRATEGIES: tuple[Strategy, ...] = ("round_robin", "random", "weighted", "least_connections")
# The same instance ID can exist on two nodes, or in two datacenters.
InstanceKey = tuple[str, str, str]
# Rotations kept at most: a caller asking for ever new queries cannot grow it without bound.
MAX_ROTATIONS = 4096


def instance_key(instance: ServiceInstance) -> InstanceKey:
    return instance["datacenter"], instance["node"], instance["id"]


def healthy(instances: Sequence[ServiceInstance]) -> list[ServiceInstance]:
    """The instances a strategy may pick: passing or warning."""
    return [i for i in instances if i["status"] != "critical"]


def _weight(instance: ServiceInstance) -> int:
    weights = instance["weights"]
    if instance["status"] == "passing":
        return weights["passing"]
    if instance["status"] == "warning":
        return weights["warning"]
    return 0


class Balancer:
    """The strategies' state: a rotation per query and the leases held per instance."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self._rotations: dict[Hashable, int] = {}
        self._held: dict[InstanceKey, int] = {}

    def pick(
        self, query: Hashable, instances: Sequence[ServiceInstance], strategy: Strategy
    ) -> ServiceInstance | None:
        """One healthy instance of ``instances`` by ``strategy``; None when none is healthy."""
        candidates = healthy(instances)
        if not candidates:
            return None
        if strategy == "random":
            return candidates[min(int(self._rng() * len(candidates)), len(candidates) - 1)]
        if strategy == "weighted":
            return self._weighted(candidates)
        start = self._step(query)
        if strategy == "least_connections":
            return self._least_held(candidates, start)
        return candidates[start % len(candidates)]

    def _step(self, query: Hashable) -> int:
        turn = self._rotations.pop(query, 0)
        if len(self._rotations) >= MAX_ROTATIONS:
            # The oldest rotation goes: insertion order, refreshed by the pop above.
            del self._rotations[next(iter(self._rotations))]
        self._rotations[query] = turn + 1
        return turn

    def _weighted(self, candidates: list[ServiceInstance]) -> ServiceInstance | None:
        weights = [_weight(c) for c in candidates]
        total = sum(weights)
        if total <= 0:
            return None
        point = self._rng() * total
        for candidate, weight in zip(candidates, weights, strict=True):
            if point < weight:
                return candidate
            point -= weight
        # Floating point can leave a sliver past the last weight: it belongs to the last one.
        return next(c for c, w in zip(reversed(candidates), reversed(weights), strict=True) if w)

    def _least_held(self, candidates: list[ServiceInstance], start: int) -> ServiceInstance:
        n = len(candidates)
        order = [candidates[(start + i) % n] for i in range(n)]
        return min(order, key=lambda c: self._held.get(instance_key(c), 0))

    # -- leases --------------------------------------------------------------------------

    def acquire(self, instance: ServiceInstance) -> InstanceKey:
        """Count one more lease on ``instance``; give the key back to :meth:`release`."""
        key = instance_key(instance)
        self._held[key] = self._held.get(key, 0) + 1
        return key

    def release(self, key: InstanceKey) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, instance: ServiceInstance) -> int:
        """Leases held on ``instance`` in this process now."""
        return self._held.get(instance_key(instance), 0)
