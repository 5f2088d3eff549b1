"""consul.watch (one blocking-query step) and kv_get's ``"consistency": "cached"``.

Both run on the loop (``Operation.serve``) and reach Consul through the envelope's Effects:

- a watch step is one blocking query in the long-poll pool, never in the short operations'
  pool, through the breaker and retries. ``index`` 0 reads the current state at once; any
  other index blocks until Consul's index passes it or ``wait`` ends. The index it returns
  follows Consul's rules (backwards resets to 0, below 1 becomes 1), and steps on the same
  target that come straight back are rate-limited, so a caller looping on a misbehaving
  index cannot spin;
- a cached read is served from the runtime's query cache (a blocking query keeps each key
  or prefix fresh; see :mod:`handler_consul._cache`), with ``source`` and ``age_seconds``
  as discovery's cache gives them.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from handler_consul._operations.effects import Effects, next_index, wait_text
from handler_consul._operations.health import health_read
from handler_consul._operations.values import KvRead, KvReadResult, kv_read
from handler_consul._results import DiscoverResult, WatchResult
from handler_consul._validation import UINT64_MAX, KvKey, KvPrefix, ServiceName

__all__ = [
    "MAX_WATCH_WAIT_SECONDS",
    "WatchPayload",
    "serve_kv_get",
    "serve_watch",
    "watch_round",
    "watch_step",
]

# Consul caps a blocking query's wait at ten minutes.
MAX_WATCH_WAIT_SECONDS = 600.0
# Where the runtime's scratch space keeps each watch target's last step (the rate limit).
_STEPS = "watch_steps"
_TARGET_FIELD = {"key": "key", "prefix": "prefix", "service": "service"}
# Targets whose last step came straight back are remembered; past this many, the ones whose
# interval is over are forgotten (a process locking many distinct keys must not grow it).
_MAX_REMEMBERED = 256


class WatchPayload(BaseModel):
    """One step of a watch on a key, a prefix or a service's healthy instances."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    kind: Literal["key", "prefix", "service"]
    key: KvKey | None = Field(None, validate_default=True)
    prefix: KvPrefix | None = Field(None, validate_default=True)
    service: ServiceName | None = Field(None, validate_default=True)
    index: int = Field(0, ge=0, le=UINT64_MAX)
    # Seconds Consul may hold the step when nothing changes (its cap is ten minutes).
    wait: float = Field(60.0, gt=0, le=MAX_WATCH_WAIT_SECONDS)
    # "stale": any server answers from its own state, so a key or prefix watch keeps going
    # while the cluster elects a leader (at the price of a few milliseconds of lag).
    consistency: Literal["default", "stale", "consistent"] = "default"

    @field_validator("consistency")
    @classmethod
    def _consistency_of_kind(cls, consistency: str, info: ValidationInfo) -> str:
        if consistency != "default" and info.data.get("kind") == "service":
            raise ValueError("applies to key and prefix watches")
        return consistency

    @field_validator("key", "prefix", "service")
    @classmethod
    def _target_of_kind(cls, given: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind is None:
            return given
        mine = _TARGET_FIELD[kind] == info.field_name
        if mine and given is None:
            raise ValueError(f"is required for kind {kind!r}")
        if not mine and given is not None:
            raise ValueError(f"is not used by kind {kind!r}")
        return given

    def target(self) -> str:
        return self.key or self.prefix or self.service or ""

    def read(self) -> KvRead:
        """The KV read a key or prefix watch makes."""
        return KvRead(self.target(), recurse=self.kind == "prefix", consistency=self.consistency)


async def watch_round(client: Any, step: tuple[WatchPayload, int, str | None]) -> tuple[int, Any]:
    """One blocking query (in a long-poll worker): ``(X-Consul-Index, result)``."""
    payload, index, wait = step
    if payload.kind == "service":
        return await _service_read(client, payload.target(), index, wait)
    return await kv_read(client, payload.read(), index, wait)


# -- service watches ---------------------------------------------------------------------------
# A service step answers in consul.discover's shape: the service's passing instances, read and
# flattened as discovery reads and flattens them (:mod:`.health`).


async def _service_read(
    client: Any, service: str, index: int, wait: str | None
) -> tuple[int, DiscoverResult]:
    at, instances = await health_read(client, service, passing=True, index=index, wait=wait)
    found: DiscoverResult = {
        "service": service,
        "instances": instances,
        "index": at,
        "source": "consul",
        "age_seconds": 0.0,
    }
    return at, found


def _step(payload: WatchPayload) -> tuple[WatchPayload, int, str | None]:
    # index 0 reads the current state (no wait sent); otherwise Consul blocks up to ``wait``.
    return payload, payload.index, wait_text(payload.wait) if payload.index else None


def _stepped(sent: int, returned: int, result: Any) -> WatchResult:
    index = next_index(sent, returned)
    return {"index": index, "changed": sent == 0 or index != sent, "result": result}


async def watch_step(client: Any, payload: WatchPayload) -> WatchResult:
    """A step run directly on a client, its blocking query holding the calling thread. The
    handler serves consul.watch with :func:`serve_watch` instead (long-poll pool, rate
    limit); this is the same step without them."""
    returned, result = await watch_round(client, _step(payload))
    return _stepped(payload.index, returned, result)


async def serve_watch(effects: Effects, payload: WatchPayload) -> WatchResult:
    sent = payload.index
    steps: dict[tuple[Any, ...], tuple[float, bool]] = effects.state.setdefault(_STEPS, {})
    target = (payload.kind, payload.target(), effects.datacenter)
    previous = steps.get(target)
    interval = effects.min_interval_seconds
    if previous is not None and previous[1]:
        # The last step on this target came straight back: hold this one a little.
        delay = previous[0] + interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    started = time.monotonic()
    returned, result = await effects.long_poll(
        watch_round, _step(payload), wait_seconds=payload.wait if sent else 1.0
    )
    if time.monotonic() - started < interval:
        steps[target] = (started, True)
        if len(steps) > _MAX_REMEMBERED:
            # Only steps that came back within the interval matter, and only for that long.
            for old in [t for t, (at, _) in steps.items() if at + interval < started]:
                del steps[old]
    else:
        steps.pop(target, None)
    return _stepped(sent, returned, result)


# -- cached kv_get -----------------------------------------------------------------------------


def is_cached(payload: Any) -> bool:
    """Whether a kv_get is served from the cache (else it is one plain request)."""
    return bool(payload.consistency == "cached")


async def _cache_round(query: Any, client: Any, step: tuple[int, str]) -> tuple[int, KvReadResult]:
    index, wait = step
    return await kv_read(client, query, index, wait)


async def serve_kv_get(effects: Effects, payload: Any) -> KvReadResult:
    """kv_get: from the cache for ``"consistency": "cached"``, else one short request."""
    if payload.consistency != "cached":
        # kv_read itself is the attempt (no wrapper coroutine: one frame less per envelope).
        _, result = await effects.call(kv_read, payload)
        return result
    query = (
        "kv",
        effects.datacenter,
        payload.key,
        payload.recurse,
        payload.keys_only,
        payload.separator,
    )
    cached = await effects.cached(
        query, partial(_cache_round, payload), partial(effects.call, kv_read, payload)
    )
    served: dict[str, Any] = dict(cached.value)
    if "items" in served:
        # Shared by every reader of the entry: each gets its own entries.
        served["items"] = await _copied(served["items"])
    elif "keys" in served:
        served["keys"] = list(served["keys"])
    served["index"] = cached.index
    served["source"] = cached.source
    served["age_seconds"] = cached.age_seconds
    return cast(KvReadResult, served)


# Entries copied per step of a large cached read: ten readers of a 3,000-key prefix at once
# made one loop iteration of 30,000 copies (a test saw the loop stall 113 ms on a loaded
# machine); in steps, other tasks and timers run in between.
_COPY_STEP = 500


async def _copied(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(items) <= _COPY_STEP:
        return [dict(item) for item in items]
    copied: list[dict[str, Any]] = []
    for start in range(0, len(items), _COPY_STEP):
        if start:
            await asyncio.sleep(0)  # let the loop run what is due before the next step
        copied.extend(dict(item) for item in items[start : start + _COPY_STEP])
    return copied
