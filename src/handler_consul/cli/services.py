"""``handler-consul services register | deregister | list`` on the local agent, in the style
of ``consul services``.

``register`` and ``deregister`` run the ``consul.register`` / ``consul.deregister``
operations through ``HandlerConsul.execute``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from handler_consul._errors import InfraError
from handler_consul.cli.common import (
    Failure,
    call_client,
    client_exit_code,
    execute_once,
    report_error,
)
from handler_consul.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    emit,
    say,
    wants_json,
    warn,
)


def _meta(pairs: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE, not {pair!r}")
        meta[key] = value
    return meta


def _register_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": args.name}
    if args.service_id is not None:
        payload["service_id"] = args.service_id
    if args.address is not None:
        payload["address"] = args.address
    if args.service_port is not None:
        payload["port"] = args.service_port
    if args.tags:
        payload["tags"] = list(args.tags)
    if args.meta:
        payload["meta"] = _meta(args.meta)
    return payload


async def cmd_services_register(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    as_json = wants_json(args.format)
    envelope = {"operation": "consul.register", "payload": _register_payload(args)}
    outcome = await execute_once(config, envelope)
    if isinstance(outcome, Failure):
        return outcome.report(envelope, as_json=as_json)
    if as_json:
        emit(outcome.result)
    else:
        name, service_id = outcome.result["name"], outcome.result["service_id"]
        say(f"Registered service: {name}" + (f" (ID {service_id})" if service_id != name else ""))
    return EXIT_OK


async def cmd_services_deregister(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    as_json = wants_json(args.format)
    envelope = {"operation": "consul.deregister", "payload": {"service_id": args.service_id}}
    outcome = await execute_once(config, envelope)
    if isinstance(outcome, Failure):
        return outcome.report(envelope, as_json=as_json)
    result = outcome.result
    if as_json:
        emit(result)
    elif result["deregistered"]:
        say(f"Deregistered service: {args.service_id}")
    if not result["deregistered"]:
        warn(f"Error! Unknown service ID: {args.service_id}")
        return EXIT_FAILED
    return EXIT_OK


def _entry(service: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": service.get("ID"),
        "name": service.get("Service"),
        "address": service.get("Address") or None,
        "port": service.get("Port") or None,
        "tags": list(service.get("Tags") or []),
        "meta": dict(service.get("Meta") or {}),
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [["ID", "NAME", "ADDRESS", "PORT", "TAGS"]] + [
        [
            str(row["id"]),
            str(row["name"]),
            row["address"] or "-",
            str(row["port"]) if row["port"] else "-",
            ",".join(row["tags"]) or "-",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]


async def cmd_services_list(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    """``GET /v1/agent/services`` with the handler's internal client.

    There is no operation that lists services yet (discovery is planned); until there is,
    this is one request with ``common.call_client`` (no breaker, no retries), as the demo's
    cleanup does. It moves to ``HandlerConsul.execute`` with that operation.
    """
    as_json = wants_json(args.format)
    try:
        services = await call_client(config, "services list", lambda c: c.agent.services())
    except InfraError as error:
        report_error(error, as_json=as_json)
        return client_exit_code(error)
    rows = sorted(
        (_entry(s) for s in (services or {}).values() if isinstance(s, Mapping)),
        key=lambda row: str(row["id"]),
    )
    if as_json:
        emit(rows)
    else:
        for line in _table(rows):
            say(line)
    return EXIT_OK
