"""No token text or bytes are reachable from an error the way an error tracker reaches them.

Locals-capturing trackers (Sentry, rich tracebacks, ``pytest --showlocals``) walk the
exception, its ``__cause__`` and ``__context__`` chain (suppressed or not), every frame of
every traceback, and each frame's locals: strings and bytes as they are, containers item by
item, everything else by ``repr``. This walks the same graph, further than any tracker does,
for each way a request can fail, with a sentinel token.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import pytest
from harness import ConsulAgent, EarlyHints, TrickleBody
from support import envelope, scripted_server, uniq

from handler_consul import ConsulSettings, HandlerConsul, InfraError

pytestmark = pytest.mark.consul

SENTINEL = "sentinel-7c1f0e4d-reachable-token"
NEEDLES = (SENTINEL, SENTINEL.encode(), SENTINEL.split("-")[-2])


def _texts(value: Any, depth: int, seen: set[int]) -> list[str | bytes]:
    if id(value) in seen or depth < 0:
        return []
    seen.add(id(value))
    if isinstance(value, str | bytes | bytearray | memoryview):
        return [bytes(value) if not isinstance(value, str) else str.__str__(value)]
    out: list[str | bytes] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _texts(key, depth - 1, seen) + _texts(item, depth - 1, seen)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        for item in value:
            out += _texts(item, depth - 1, seen)
        return out
    try:
        out.append(repr(value))
    except Exception as exc:  # a broken repr is the tracker's problem, not a leak
        out.append(type(exc).__name__)
    return out


def reachable(error: BaseException) -> list[str | bytes]:
    """Every text an error tracker could capture from ``error``."""
    texts: list[str | bytes] = []
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    done: set[int] = set()
    while todo:
        exc = todo.pop()
        if id(exc) in done:
            continue
        done.add(id(exc))
        texts += [str(exc), repr(exc), *_texts(exc.args, 4, seen)]
        texts += _texts(vars(exc), 4, seen) if hasattr(exc, "__dict__") else []
        if isinstance(exc, InfraError):
            texts.append(repr(exc.to_dict()))
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            for name, value in tb.tb_frame.f_locals.items():
                texts += [name, *_texts(value, 4, seen)]
            tb = tb.tb_next
        todo += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return texts


def assert_unreachable(error: BaseException) -> None:
    for text in reachable(error):
        for needle in NEEDLES:
            if isinstance(needle, bytes) == isinstance(text, bytes):
                assert needle not in text, f"token reachable from {type(error).__name__}"


def _handler(target: Any, **more: Any) -> HandlerConsul:
    return HandlerConsul(ConsulSettings(host=target.host, port=target.port, token=SENTINEL, **more))


def test_the_walk_finds_a_token_where_it_is_reachable() -> None:
    """The check can fail: a token in a frame local (plain or in bytes) is found."""

    def leaky() -> None:
        request = b"GET / HTTP/1.1\r\nX-Consul-Token: " + SENTINEL.encode() + b"\r\n"
        raise ValueError(len(request))

    with pytest.raises(ValueError, match=r"^\d+$") as caught:
        leaky()
    with pytest.raises(AssertionError, match="token reachable"):
        assert_unreachable(caught.value)


async def test_a_refused_connection_carries_no_token(
    dead_port: int, clean_consul_env: None
) -> None:
    handler = HandlerConsul(ConsulSettings(host="127.0.0.1", port=dead_port, token=SENTINEL))
    with pytest.raises(InfraError) as caught:
        await handler.initialize()
    assert_unreachable(caught.value)


async def test_a_timed_out_request_carries_no_token(
    trickle_body_server: TrickleBody, clean_consul_env: None
) -> None:
    handler = _handler(trickle_body_server, timeout_seconds=0.5, max_response_bytes=200_000_000)
    with pytest.raises(InfraError) as caught:
        await handler.initialize()
    assert_unreachable(caught.value)


async def test_an_answer_that_never_comes_carries_no_token(clean_consul_env: None) -> None:
    with EarlyHints(mode="100-only") as server:
        handler = _handler(server, timeout_seconds=0.5)
        with pytest.raises(InfraError) as caught:
            await handler.initialize()
    assert_unreachable(caught.value)


async def test_envelope_failures_carry_no_token(
    consul_agent: ConsulAgent, dead_port: int, clean_consul_env: None
) -> None:
    """Failures after initialize: a refused connection mid-run, a validation refusal, a
    shutdown that fails a running envelope."""
    handler = _handler(consul_agent, retry={"max_attempts": 1})
    await handler.initialize()
    errors: list[BaseException] = []
    try:
        await handler.execute(envelope("kv_put", key="../agent/self", value="x"))
    except InfraError as error:
        errors.append(error)
    await handler.initialize({"port": consul_agent.port, "shutdown_grace_seconds": 0.0})
    runtime = handler._lifecycle.runtime  # private: point the live runtime at a dead port
    assert runtime is not None
    runtime.transport.config.port = dead_port
    runtime.transport.close()
    runtime.transport._closed = False
    try:
        await handler.execute(envelope("kv_get", key=f"{uniq('dead')}/k"))
    except InfraError as error:
        errors.append(error)
    await handler.shutdown()
    assert [type(e).__name__ for e in errors] == ["InfraValidationError", "InfraConnectionError"]
    for error in errors:
        assert_unreachable(error)
    await asyncio.sleep(0)


@pytest.mark.parametrize("status", [400, 403, 500])
# The message shows at most 197 characters of the body; with 26 characters before the token,
# an echo at 165 puts the token across that cut.
@pytest.mark.parametrize("echo_at", [0, 150, 165, 200])
async def test_a_server_echoing_the_token_in_an_error_body_does_not_leak_it(
    status: int, echo_at: int, clean_consul_env: None
) -> None:
    """Wherever the echo falls, even across the point where long bodies are shortened."""
    with scripted_server([status] * 3, echo_at=echo_at) as server:
        host, port = server.server_address[:2]
        handler = HandlerConsul(
            ConsulSettings(
                host=str(host), port=int(port), token=SENTINEL, retry={"max_attempts": 1}
            )
        )
        await handler.initialize()
        with pytest.raises(InfraError) as caught:
            await handler.execute(envelope("kv_put", key="k", value="v"))
        await handler.shutdown()
    assert_unreachable(caught.value)
    # Not even a recognisable piece of it survives in what a caller prints.
    assert SENTINEL[:8] not in caught.value.message
    # Where the echo falls inside the shortened body, its place shows as redacted.
    assert ("[REDACTED]" in caught.value.message) is (echo_at + 26 + len("[REDACTED]") <= 197)
