"""``handler-consul describe``, ``health`` and ``schema``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from handler_consul._errors import InfraError
from handler_consul._handler import HandlerConsul
from handler_consul._schema import schema
from handler_consul.cli.common import report_error, settings_for, start_handler, stop_handler
from handler_consul.cli.output import (
    EXIT_FAILED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    emit,
    say,
    wants_json,
)


async def cmd_describe(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    """Indented JSON whatever the format: a document a person reads and jq parses."""
    as_json = wants_json(args.format)
    try:
        if args.no_connect:
            emit(HandlerConsul(settings=settings_for(config)).describe(), pretty=True)
            return EXIT_OK
        handler = await start_handler(config)
    except InfraError as error:
        report_error(error, as_json=as_json)
        return EXIT_NOT_STARTED
    try:
        emit(handler.describe(), pretty=True)
    finally:
        await stop_handler(handler)
    return EXIT_OK


def _health_text(report: Mapping[str, Any]) -> str:
    if report.get("healthy"):
        breaker = report.get("breaker") or {}
        state = breaker.get("state") if isinstance(breaker, Mapping) else breaker
        return f"healthy: leader {report.get('leader')}, {report.get('latency_ms')} ms" + (
            f", breaker {state}" if state else ""
        )
    reason = report.get("error") or "no leader"
    return f"unhealthy: {report.get('error_type') or ''} {reason}".replace("  ", " ")


async def cmd_health(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    as_json = wants_json(args.format)
    handler = HandlerConsul()
    started = time.monotonic()
    try:
        await handler.initialize(config)
    except InfraError as error:
        report: dict[str, Any] = {
            "healthy": False,
            "initialized": False,
            "latency_ms": round((time.monotonic() - started) * 1000.0, 3),
            "leader": None,
            "breaker": None,
            "error": error.message,
            "error_type": type(error).__name__,
        }
    else:
        try:
            report = await handler.health_check()
        finally:
            await stop_handler(handler)
    if as_json:
        emit(report, pretty=True)
    else:
        say(_health_text(report))
    return EXIT_OK if report.get("healthy") else EXIT_FAILED


def cmd_schema(args: argparse.Namespace) -> int:
    emit(schema(args.kind), pretty=True)
    return EXIT_OK
