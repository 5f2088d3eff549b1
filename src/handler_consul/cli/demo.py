"""``handler-consul demo``: register -> kv_put -> kv_get -> a refused key -> deregister."""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import anyio

from handler_consul._errors import InfraError, InfraValidationError
from handler_consul._handler import HandlerConsul
from handler_consul.cli.common import call_client, report_error, start_handler, stop_handler
from handler_consul.cli.devagent import DevAgent, DevAgentError
from handler_consul.cli.output import EXIT_FAILED, EXIT_NOT_STARTED, EXIT_OK, say, warn

_CONFIGURED_ENV = ("CONSUL_HOST", "CONSUL_PORT", "CONSUL_HTTP_ADDR")

# -- demo ------------------------------------------------------------------------------------


def consul_configured(args: argparse.Namespace) -> bool:
    """True when the user named a Consul: --host/--port or CONSUL_HOST/PORT/HTTP_ADDR."""
    if getattr(args, "host", None) is not None or getattr(args, "port", None) is not None:
        return True
    return any(os.environ.get(name, "").strip() for name in _CONFIGURED_ENV)


async def _demo_step(
    handler: HandlerConsul, number: int, envelope: dict[str, Any]
) -> tuple[dict[str, Any] | None, InfraError | None, str]:
    started = time.perf_counter()
    result: dict[str, Any] | None = None
    error: InfraError | None = None
    try:
        result = (await handler.execute(envelope)).result
    except InfraError as exc:
        error = exc
    ms = (time.perf_counter() - started) * 1000.0
    status = "ok" if error is None else "refused" if error.context.attempts == 0 else "failed"
    head = f"  {number}. {envelope['operation']:<18} {status:<8} {ms:8.1f} ms  "
    return result, error, head


async def run_demo(config: Mapping[str, Any], where: str) -> int:
    """register -> kv_put -> kv_get -> a refused traversal key -> deregister, then clean up."""
    try:
        handler = await start_handler(config)
    except InfraError as problem:
        report_error(problem, as_json=True)
        return EXIT_NOT_STARTED
    suffix = uuid.uuid4().hex[:8]
    service_id = f"handler-consul-demo-{suffix}"
    key = f"handler-consul-demo/{suffix}/greeting"
    traversal = f"../agent/service/deregister/{service_id}"
    value = "hello from handler-consul"
    good = True
    registered = False
    say(f"handler-consul demo against {where}")
    try:
        result, error, head = await _demo_step(
            handler,
            1,
            {
                "operation": "consul.register",
                "payload": {
                    "service_id": service_id,
                    "name": "handler-consul-demo",
                    "address": "127.0.0.1",
                    "port": 8080,
                    "tags": ["demo"],
                    "check": {"ttl": "30s", "deregister_critical_service_after": "1m"},
                },
            },
        )
        registered = error is None
        good &= error is None
        say(head + (f"service {service_id} registered" if error is None else _brief(error)))

        result, error, head = await _demo_step(
            handler, 2, {"operation": "consul.kv_put", "payload": {"key": key, "value": value}}
        )
        good &= error is None and result is not None and result["applied"] is True
        say(head + (f"{key} applied={result['applied']}" if result else _brief(error)))

        result, error, head = await _demo_step(
            handler, 3, {"operation": "consul.kv_get", "payload": {"key": key}}
        )
        good &= result is not None and result.get("value") == value
        say(
            head
            + (
                f"{key} = {result['value']!r} (modify_index {result['modify_index']})"
                if result
                else _brief(error)
            )
        )

        result, error, head = await _demo_step(
            handler, 4, {"operation": "consul.kv_put", "payload": {"key": traversal, "value": "x"}}
        )
        refused = isinstance(error, InfraValidationError)
        good &= refused
        say(
            head
            + (
                f"key {traversal!r}: {_brief(error)}; nothing sent"
                if refused and error is not None
                else "the traversal key was NOT refused"
            )
        )

        result, error, head = await _demo_step(
            handler, 5, {"operation": "consul.deregister", "payload": {"service_id": service_id}}
        )
        good &= result is not None and result["deregistered"] is True
        registered = registered and result is None
        say(
            head
            + (
                f"service {service_id} deregistered={result['deregistered']}"
                if result
                else _brief(error)
            )
        )
    finally:
        with anyio.CancelScope(shield=True):
            await _demo_cleanup(handler, config, key, service_id if registered else None)
            await stop_handler(handler)
    say(f"handler-consul demo: {'all steps as expected' if good else 'SOME STEPS FAILED'}")
    return EXIT_OK if good else EXIT_FAILED


def _brief(error: InfraError | None) -> str:
    if error is None:
        return "no result"
    if isinstance(error, InfraValidationError) and error.errors:
        first = error.errors[0]
        return f"{type(error).__name__} ({first['field']}): {first['message']}"
    return f"{type(error).__name__}: {error.message}"


async def _demo_cleanup(
    handler: HandlerConsul, config: Mapping[str, Any], key: str, service_id: str | None
) -> None:
    """Remove the demo key (there is no kv_delete operation yet) and a leftover service."""
    if service_id is not None:
        try:
            await handler.execute(
                {"operation": "consul.deregister", "payload": {"service_id": service_id}}
            )
        except InfraError as error:
            say(f"  cleanup: could not deregister {service_id}: {_brief(error)}")
    try:
        await call_client(config, "kv delete", lambda client: client.kv.delete(key))
    except InfraError as error:
        say(f"  cleanup: could not delete {key}: {_brief(error)}")


def cmd_demo(args: argparse.Namespace, config: dict[str, Any]) -> int:
    """Outside the event loop: the throwaway agent is started and always stopped here."""
    if consul_configured(args):
        settings_host = config.get("host") or os.environ.get("CONSUL_HOST") or "configured Consul"
        return anyio.run(run_demo, config, f"{settings_host} (configured)")
    try:
        agent = DevAgent()
    except DevAgentError as exc:
        warn(f"handler-consul demo: {exc}")
        return EXIT_NOT_STARTED
    say(f"handler-consul demo: no Consul configured; starting {agent.version()} locally")
    try:
        agent.start()
        # Not the user's token, datacenter or TLS: this agent is ours and plain HTTP.
        local = {
            **config,
            "host": agent.host,
            "port": agent.port,
            "scheme": "http",
            "token": None,
            "datacenter": None,
        }
        return anyio.run(run_demo, local, f"{agent.url} (throwaway agent, pid {agent.pid})")
    except DevAgentError as exc:
        warn(f"handler-consul demo: {exc}")
        return EXIT_NOT_STARTED
    finally:
        agent.stop()
        say("handler-consul demo: stopped the throwaway agent")
