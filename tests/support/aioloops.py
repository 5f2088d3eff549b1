"""What the asyncio-transport tests share: a client of the asyncio transport, a scenario that
closes it, and timing of one awaitable (the ``run`` fixture, a scenario on either event
loop, is in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from handler_consul import ConsulSettings
from handler_consul._client import ConsulClient
from handler_consul._runtime import build_client

__all__ = ["DEADLINE", "MARGIN", "Run", "client_for", "closing", "timed"]

Run = Callable[[Coroutine[Any, Any, Any]], Any]
# The request deadline the misbehaving-server tests give, and what they allow past it.
DEADLINE = 1.0
MARGIN = 0.5


def client_for(target: Any, **settings: Any) -> ConsulClient:
    return build_client(
        ConsulSettings(host=target.host, port=target.port, **settings), io="asyncio"
    )


async def closing(client: ConsulClient, scenario: Coroutine[Any, Any, Any]) -> Any:
    """Run ``scenario``, then close the client's connections on this loop."""
    try:
        return await scenario
    finally:
        client.http.close()
        await asyncio.sleep(0)


async def timed(awaitable: Any) -> tuple[BaseException | None, float, Any]:
    """``(error or None, seconds taken, result)`` of one awaitable."""
    started = time.monotonic()
    try:
        result = await awaitable
    except Exception as exc:
        return exc, time.monotonic() - started, None
    return None, time.monotonic() - started, result
