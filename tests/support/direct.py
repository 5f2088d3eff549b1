"""python-consul2's client over the handler's transport, without the handler, in either I/O
mode, driven from async tests: ``await direct(lambda c: c.kv.get("k"))``.

In threads mode the call runs in a thread (it blocks); in asyncio mode it is awaited on the
test's loop. Transport-level tests use it to prove the same promise of both transports.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from handler_consul import ConsulSettings
from handler_consul._client import ConsulClient
from handler_consul._runtime import build_client


class Direct:
    """One client in one I/O mode; ``await direct(call)`` runs ``call(client)``."""

    def __init__(self, settings: ConsulSettings, io: str) -> None:
        self.io = io
        self.client: ConsulClient = build_client(settings, io=io)  # type: ignore[arg-type]

    @property
    def http(self) -> Any:
        return self.client.http

    async def __call__(self, call: Callable[[ConsulClient], Any]) -> Any:
        if self.io == "asyncio":
            result = call(self.client)
            return await result if inspect.isawaitable(result) else result
        return await asyncio.to_thread(call, self.client)

    async def timed(
        self, call: Callable[[ConsulClient], Any]
    ) -> tuple[BaseException | None, float, Any]:
        """(error or None, seconds, result): the call's outcome and how long it took."""
        started = time.monotonic()
        try:
            result = await self(call)
        except Exception as exc:
            return exc, time.monotonic() - started, None
        return None, time.monotonic() - started, result

    def close(self) -> None:
        self.client.http.close()


# The factory the ``direct`` fixture hands out: ``direct(target, **settings) -> Direct``.
DirectFor = Callable[..., Direct]
