"""The time the breaker and the retry loop read, and the sleep they wait with.

Both are injected so that tests drive them with a fake clock and never sleep for real.
Only a monotonic clock is right here: the wall clock jumps (NTP, an operator, a VM resume)
and a jump must never open, close or stretch a breaker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

__all__ = ["Clock", "Sleep", "monotonic"]

Clock = Callable[[], float]
"""Seconds from an arbitrary origin that never goes backwards."""

Sleep = Callable[[float], Awaitable[None]]
"""Waits the given number of seconds (``asyncio.sleep`` in production)."""

monotonic: Clock = time.monotonic
