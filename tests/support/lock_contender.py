"""A process that contends for a lock with handler.lock(), for the lock tests to run as a
subprocess (``python tests/support/lock_contender.py MODE ...``). Test code, not product code.

It talks JSON Lines: one object per line on stdout, one command per line on stdin. Times are
``time.monotonic()``, which on Linux is CLOCK_MONOTONIC, one clock for every process on the
machine, so the test can compare the intervals of two contenders.

Under the lock it protects a resource key the way the docs say a fenced resource must be
written: read it, check that the stored token is lower than the lease's, write the lease's
token with a CAS on the index read.

Modes:

- ``rounds``: print ``{"ready"}``, wait for a ``go`` line, then hold the lock ``--rounds``
  times; one ``{"round"}`` line per round (token, session, start, end, what was read and
  whether the CAS write applied), or ``{"error"}`` when a round failed (it goes on, up to
  ``--max-errors`` failures);
- ``hold``: take the lock once, print ``{"acquired"}``, then write the token every 0.1 s
  until ``lease.lost`` is set; print ``{"lost"}`` (when, and whether it was seen before a
  write), try one more CAS write with the index it last wrote at (a frozen holder waking
  up), print ``{"late_write"}`` and exit;
- ``once``: take the lock (waiting up to ``--wait``), write the token, print ``{"acquired"}``
  and ``{"wrote"}``, release, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from handler_consul import ConsulSettings, HandlerConsul, InfraError


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def read_resource(handler: HandlerConsul, key: str) -> tuple[int, int]:
    """(stored token, modify index); (0, 0) when the resource does not exist yet."""
    got = (
        await handler.execute(
            {"operation": "consul.kv_get", "payload": {"key": key, "consistency": "consistent"}}
        )
    ).result
    if not got["found"]:
        return 0, 0
    return int(got["value"] or 0), int(got["modify_index"])


async def write_resource(handler: HandlerConsul, key: str, token: int, cas: int) -> bool:
    put = {"key": key, "value": str(token), "cas": cas}
    done = await handler.execute({"operation": "consul.kv_put", "payload": put})
    return bool(done.result["applied"])


async def rounds(handler: HandlerConsul, args: argparse.Namespace) -> None:
    emit(event="ready")
    await asyncio.to_thread(sys.stdin.readline)
    n = errors = 0
    while n < args.rounds and errors <= args.max_errors:
        held: dict[str, Any] = {}
        try:
            async with handler.lock(
                args.lock, ttl=args.ttl, wait=args.wait, lock_delay=args.lock_delay
            ) as lease:
                start = time.monotonic()
                held.update(token=lease.fencing_token, session=lease.session_id, start=start)
                stored, index = await read_resource(handler, args.resource)
                lost_before = lease.lost.is_set()
                applied = await write_resource(handler, args.resource, lease.fencing_token, index)
                end = time.monotonic()
                emit(
                    event="round",
                    n=n,
                    token=lease.fencing_token,
                    session=lease.session_id,
                    start=start,
                    end=end,
                    stored=stored,
                    applied=applied,
                    lost=lost_before or lease.lost.is_set(),
                )
                n += 1
        except InfraError as error:
            errors += 1
            # A round that held the lock and then failed says so: it believed it held the
            # lock from ``start`` until now.
            emit(
                event="error",
                n=n,
                error=type(error).__name__,
                message=error.message[:200],
                end=time.monotonic(),
                **held,
            )
            await asyncio.sleep(0.2)


async def hold(handler: HandlerConsul, args: argparse.Namespace) -> None:
    async with handler.lock(
        args.lock, ttl=args.ttl, wait=args.wait, lock_delay=args.lock_delay
    ) as lease:
        _, index = await read_resource(handler, args.resource)
        emit(event="acquired", token=lease.fencing_token, session=lease.session_id)
        writes = 0
        while True:
            await asyncio.sleep(0.1)
            if lease.lost.is_set():
                emit(event="lost", at=time.monotonic(), reason=lease.lost_reason, writes=writes)
                break
            applied = await write_resource(handler, args.resource, lease.fencing_token, index)
            if not applied:
                emit(event="write_refused", at=time.monotonic(), lost=lease.lost.is_set())
                break
            writes += 1
            _, index = await read_resource(handler, args.resource)
        # What a holder that did not check lost would do next: its CAS on what it last saw.
        late = await write_resource(handler, args.resource, lease.fencing_token, index)
        emit(event="late_write", applied=late)


async def once(handler: HandlerConsul, args: argparse.Namespace) -> None:
    async with handler.lock(
        args.lock, ttl=args.ttl, wait=args.wait, lock_delay=args.lock_delay
    ) as lease:
        emit(event="acquired", token=lease.fencing_token, at=time.monotonic())
        stored, index = await read_resource(handler, args.resource)
        applied = await write_resource(handler, args.resource, lease.fencing_token, index)
        emit(event="wrote", token=lease.fencing_token, stored=stored, applied=applied)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["rounds", "hold", "once"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lock", required=True)
    parser.add_argument("--resource", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ttl", default="10s")
    parser.add_argument("--lock-delay", default="1s")
    parser.add_argument("--wait", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--max-errors", type=int, default=0)
    parser.add_argument("--breaker-reset", type=float, default=30.0)
    args = parser.parse_args()
    settings = ConsulSettings(
        host=args.host,
        port=args.port,
        timeout_seconds=args.timeout,
        breaker={"reset_timeout_seconds": args.breaker_reset},
    )
    async with HandlerConsul(settings=settings) as handler:
        await {"rounds": rounds, "hold": hold, "once": once}[args.mode](handler, args)
    emit(event="done")


if __name__ == "__main__":
    asyncio.run(main())
