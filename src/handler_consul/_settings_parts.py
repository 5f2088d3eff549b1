"""The nested settings: retries, breaker, health-check policy, long polls, caches.

Each is one component's configuration, given as a nested mapping to ``initialize()`` or as
``CONSUL_<PART>__<FIELD>`` variables; :mod:`handler_consul._settings` assembles them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BreakerSettings",
    "CacheSettings",
    "CheckSettings",
    "LongPollSettings",
    "MaintainSettings",
    "RetrySettings",
]


class RetrySettings(BaseModel):
    """Backoff for transient failures; every attempt stays inside the envelope deadline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(3, ge=1, le=10, description="Total attempts, the first included.")
    initial_delay_seconds: float = Field(0.1, ge=0, le=60)
    max_delay_seconds: float = Field(5.0, ge=0, le=300)
    exponential_base: float = Field(2.0, ge=1, le=10)
    budget_ratio: float = Field(
        0.2, ge=0, le=1, description="Retries allowed per first attempt, over a sliding window."
    )
    budget_min_per_second: float = Field(
        1.0, ge=0, description="Retries always allowed per second, so a quiet handler can retry."
    )


class BreakerSettings(BaseModel):
    """The circuit breaker per datacenter (see docs/patterns/circuit_breaker.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, le=1000)
    reset_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    half_open_max_calls: int = Field(1, ge=1, le=100)
    slow_call_duration_seconds: float | None = Field(
        None, gt=0, description="Calls slower than this count as failures; off when unset."
    )
    reset_timeout_multiplier: float = Field(
        1.0, ge=1, le=10, description="Each consecutive re-open multiplies the wait by this."
    )
    max_reset_timeout_seconds: float = Field(300.0, gt=0, le=86400)


class CheckSettings(BaseModel):
    """What a registered health check may make the agent do (docs/patterns/security_patterns.md).

    The agent runs HTTP checks itself: a check aimed at the Consul API with PUT could
    deregister services or write keys. The defaults allow neither.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_methods: frozenset[Literal["GET", "HEAD", "POST", "PUT"]] = Field(
        frozenset({"GET", "HEAD"}), min_length=1, description="HTTP methods a check may use."
    )
    allow_consul_api: bool = Field(
        False, description="Let checks target /v1/... paths or the Consul agent's own address."
    )


class LongPollSettings(BaseModel):
    """Blocking queries (watches, cache upkeep, lock waits): their own threads and transport.

    A blocking query holds its thread for up to ``wait`` seconds; in the pool of short
    operations ten of them would starve every envelope. They get ``max_watches`` threads of
    their own and never take a short operation's slot.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_watches: int = Field(
        32, ge=1, le=256, description="Blocking queries in flight at once (their own threads)."
    )
    wait_seconds: float = Field(
        60.0, ge=1, le=600, description="How long background watches ask Consul to block."
    )
    min_interval_seconds: float = Field(
        0.02,
        ge=0,
        le=60,
        description="Least time between the start of one round of a watch and the next when "
        "the first returned at once (Consul's advice: rate-limit back-to-back returns).",
    )


class CacheSettings(BaseModel):
    """In-memory answers kept fresh by blocking queries (cached discovery and kv reads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_staleness_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="While Consul is unreachable, serve the last good answer for this long.",
    )
    idle_seconds: float = Field(
        300.0, gt=0, le=86400, description="Drop a query nobody asked for in this long."
    )
    max_entries: int = Field(
        16,
        ge=0,
        le=1024,
        description="Queries watched at once; each holds a long-poll thread (see long_poll)."
        " Past this, cached reads go to Consul each time.",
    )


class MaintainSettings(BaseModel):
    """Registrations made with ``maintain: true``, which the handler keeps alive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deregister_on_shutdown: bool = Field(
        True, description="Deregister every maintained service when the handler shuts down."
    )
    compare_interval_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often the agent's copy of a maintained registration is compared "
        "with what was registered (and restored when lost or changed).",
    )
